"""`TrainConfig`: the whole configuration of a `train(...)` run (the SigLIP 2 recipe,
paper sec. 2.1-2.5) as one documented object that a user can print, save with the run
(`out_dir/train_config.json`) and reload (`TrainConfig.load`), plus the cheap checks of
its values that run before anything is loaded.

`train(preset, data, steps=..., ...)` keeps its keyword arguments; they fill a
`TrainConfig` (`train(config=TrainConfig(...))` is the same run).
"""

import dataclasses
import json
import math
import os

from keras_siglip2.checks import check_int, check_number, check_positive_int
from keras_siglip2.distribution import make_mesh
from keras_siglip2.presets import resolve_preset

DEFAULT_STEPS = 1000
DEFAULT_BATCH_SIZE = 32
DEFAULT_CHECKPOINT_EVERY = 500
CONFIG_FILE = "train_config.json"
# ACID keeps half of each super-batch by default (the paper's B/16 filtering ratio 0.5).
DEFAULT_CURATION_RATIO = 0.5


@dataclasses.dataclass
class TrainConfig:
    """One `train` run.

    Attributes:
        preset: a preset name (`siglip2_base_patch16_224`) or a local preset directory
            with a tokenizer (`save_to_preset` / `siglip2 convert --tokenizer`).
        data: CSV / JSONL file of `image_path,caption`, TFRecord or WebDataset shards: a
            path, folder, glob pattern or list of them.
        steps: optimizer steps (the learning-rate schedule's length).
        batch_size: the global batch size.
        out_dir: output folder: `preset/` (the trained model), `train_summary.json`,
            `train_config.json` (this object), `backup/` while training (resumption).
        mesh: None (default device placement) or a mesh spec "batch=4,model=2" (JAX).
        decoder: bool, the LocCa decoder and its loss (sec. 2.2).
        self_distillation, masked_prediction: the SILC / TIPS losses from 80 % of the
            steps (sec. 2.3); None = as in the paper: on for fixed-resolution presets,
            off for NaFlex presets (True with a NaFlex preset is an error).
        learning_rate: the peak learning rate (None: the paper's 1e-3; use a much
            smaller one to fine-tune a released model).
        seed: seeds the data order, crops, masks and initializations.
        checkpoint_every: steps between backups (`out_dir/backup`).
        data_format: "csv", "jsonl", "tfrecord", "webdataset" or None (from file names).
        default_language: language of records without one.
        naflex_sequence_lengths: NaFlex presets only: the sequence lengths (patches
            per image) a batch draws from; None = the paper's (128, 256, 576, 784,
            1024).
        curate_with: None, or the reference model of ACID curation (paper sec. 2.5): a
            preset name or directory. Each step then draws a super-batch and trains on
            the most learnable examples (`training.curation.ActiveCurator`).
        curation_ratio: the fraction of each super-batch kept (`ActiveCurator`'s
            `keep_ratio`, one minus the ACID filtering ratio), in (0, 1]; None = 0.5.
            Only with `curate_with`.
        naflex_from: None, or the fraction of training in (0, 1) at which a
            fixed-resolution preset continues as a NaFlex model (the paper's NaFlex
            variants: from 90 %, sec. 2.4.2), by `training.naflex_switch.NaFlexSwitch`,
            with aspect-preserving NaFlex views of the data from then on
            (`recipes/naflex_stage.py`); after SILC / TIPS (80 %) when they are on.
        naflex_lengths: the sequence lengths the NaFlex stage draws per batch; None =
            the paper's (128, 256, 576, 784, 1024). Only with `naflex_from`.
        balance_attributes, balance_proxies: None, or the names of the sensitive
            attributes and of the proxy concepts of M4 data balancing (paper sec. 2.5,
            Alabdulmohsin et al. 2024), read from the records' "attributes" / "proxies"
            annotations by `training.data.balancing.MomentMatchingBalancer` (fitted on
            the data); both or neither.
    """

    preset: str = None
    data: object = None
    steps: int = DEFAULT_STEPS
    batch_size: int = DEFAULT_BATCH_SIZE
    out_dir: str = "siglip2_train"
    mesh: str = None
    decoder: bool = True
    self_distillation: bool = None
    masked_prediction: bool = None
    learning_rate: float = None
    seed: int = 0
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    data_format: str = None
    default_language: str = ""
    naflex_sequence_lengths: tuple = None
    curate_with: str = None
    curation_ratio: float = None
    naflex_from: float = None
    naflex_lengths: tuple = None
    balance_attributes: tuple = None
    balance_proxies: tuple = None

    # ------------------------------------------------------------------ serialization
    def get_config(self):
        """A JSON-serializable dict of every field (`from_config` reads it back)."""
        config = dataclasses.asdict(self)
        for name in ("data", "naflex_sequence_lengths", "naflex_lengths", "curate_with",
                     "balance_attributes", "balance_proxies"):
            value = config[name]
            if isinstance(value, (list, tuple)):
                config[name] = [os.fspath(v) if isinstance(v, os.PathLike) else v
                                for v in value]
            elif isinstance(value, os.PathLike):
                config[name] = os.fspath(value)
        return config

    to_dict = get_config

    @classmethod
    def from_config(cls, config):
        """The `TrainConfig` of a `get_config()` dict; an unknown key is an error."""
        if not isinstance(config, dict):
            raise TypeError(f"`config` must be a dict; got {type(config).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; expected some of "
                             f"{sorted(names)}.")
        return cls(**config)

    def save(self, path):
        """Writes the config as JSON to `path` (a file, or a folder: `train_config.json`
        in it); returns the file path."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_FILE)
        with open(path, "w") as f:
            json.dump(self.get_config(), f, indent=2)
        return path

    @classmethod
    def load(cls, path):
        """The `TrainConfig` saved at `path` (a JSON file or a run's output folder)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TrainConfig.load: {path!r} does not exist.")
        with open(path) as f:
            return cls.from_config(json.load(f))

    # ------------------------------------------------------------------ checks
    def check(self):
        """Cheap checks of every field, before anything is loaded. Returns the resolved
        preset path and the list of data paths."""
        preset_path, data_paths = check_arguments(
            self.preset, self.data, self.steps, self.batch_size, self.mesh,
            self.learning_rate, self.checkpoint_every)
        check_int("seed", self.seed, 0)
        check_sequence_lengths("naflex_sequence_lengths", self.naflex_sequence_lengths)
        self.check_curation()
        self.check_naflex_stage()
        self.check_balancing()
        if self.out_dir is None or not str(self.out_dir).strip():
            raise ValueError(f"`out_dir` must be a folder path; got out_dir={self.out_dir!r}.")
        if os.path.isdir(preset_path) and not os.path.isfile(
                os.path.join(preset_path, "tokenizer.json")):
            raise FileNotFoundError(
                f"`preset`={self.preset!r} has no tokenizer (no tokenizer.json): training "
                "needs one. Convert again with `siglip2 convert ... --tokenizer "
                "gemma_tokenizer.model`."
            )
        return preset_path, data_paths


    def check_curation(self):
        """`curate_with` names a preset; `curation_ratio` lies in (0, 1] and needs it."""
        if self.curate_with is None:
            if self.curation_ratio is not None:
                raise ValueError(
                    f"`curation_ratio`={self.curation_ratio!r} needs `curate_with` (the "
                    "reference preset of ACID curation); got curate_with=None."
                )
            return
        if not isinstance(self.curate_with, (str, os.PathLike)) or not str(
                self.curate_with).strip():
            raise ValueError("`curate_with` must be a preset name or directory; got "
                             f"curate_with={self.curate_with!r}.")
        if self.curation_ratio is not None:
            check_number("curation_ratio", self.curation_ratio, 0.0, 1.0, low_open=True)
        resolve_preset(os.fspath(self.curate_with))

    def check_naflex_stage(self):
        """`naflex_from` lies in (0, 1); `naflex_lengths` are positive ints and need it."""
        if self.naflex_from is None:
            if self.naflex_lengths is not None:
                raise ValueError(
                    f"`naflex_lengths`={self.naflex_lengths!r} needs `naflex_from` (the "
                    "fraction of training at which the NaFlex stage starts, e.g. 0.9)."
                )
            return
        check_number("naflex_from", self.naflex_from, 0.0, 1.0, low_open=True,
                     high_open=True)
        check_sequence_lengths("naflex_lengths", self.naflex_lengths)

    def check_balancing(self):
        """`balance_attributes` and `balance_proxies`: both None, or both non-empty
        lists of names."""
        given = {n: getattr(self, n) for n in ("balance_attributes", "balance_proxies")}
        if all(v is None for v in given.values()):
            return
        for name, value in given.items():
            names = list(value) if isinstance(value, (list, tuple)) else []
            if not names or not all(isinstance(n, str) and n.strip() for n in names):
                raise ValueError(
                    f"`{name}` must be a non-empty list of names (M4 balancing needs "
                    f"both balance_attributes and balance_proxies); got {name}={value!r}."
                )

    @property
    def keep_ratio(self):
        """The kept fraction of ACID curation (None without `curate_with`)."""
        if self.curate_with is None:
            return None
        return DEFAULT_CURATION_RATIO if self.curation_ratio is None else self.curation_ratio


def config_from_arguments(config, arguments):
    """`config` (a TrainConfig or its dict) when given, else a TrainConfig of the
    keyword `arguments` of `train`; giving both is an error naming the arguments."""
    if config is None:
        return TrainConfig(**arguments)
    if isinstance(config, dict):
        config = TrainConfig.from_config(config)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig, its dict or None; got "
                        f"{type(config).__name__}.")
    defaults = TrainConfig()
    given = sorted(k for k, v in arguments.items() if v != getattr(defaults, k))
    if given:
        raise ValueError(f"Give either `config` or the keyword arguments of train, not "
                         f"both; got config= and {given}.")
    return config


def check_sequence_lengths(name, lengths):
    """None, or a non-empty list / tuple of positive ints."""
    if lengths is None:
        return None
    items = list(lengths) if isinstance(lengths, (list, tuple)) else []
    try:
        if not items:
            raise ValueError
        return [check_positive_int(name, n) for n in items]
    except ValueError:
        raise ValueError(
            f"`{name}` must be a non-empty list of positive ints (e.g. [128, 256, 576, "
            f"784, 1024]); got {lengths!r}."
        ) from None


def check_data_path(data):
    """Raises FileNotFoundError unless `data` (a path, folder, glob pattern or a list of
    them; local or a `gs://`-style URL) names at least one existing file."""
    import tensorflow as tf  # lazy: optional heavy dependency (TensorFlow's gfile)

    items = [data] if isinstance(data, (str, os.PathLike)) else list(data or [])
    if not items:
        raise FileNotFoundError(f"`data`: no data path given; got data={data!r}.")
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"`data` must be a path or a list of paths; got {item!r}.")
        path = os.path.expanduser(os.fspath(item))
        if any(c in path for c in "*?["):
            if not tf.io.gfile.glob(path):
                raise FileNotFoundError(f"`data`: the pattern {path!r} matches no file.")
        elif not tf.io.gfile.exists(path):
            raise FileNotFoundError(
                f"`data`: {path!r} does not exist (expected a CSV / JSONL file of "
                "image_path,caption, TFRecord or WebDataset shards, or a folder of them)."
            )
    return [os.path.expanduser(os.fspath(i)) for i in items]


def _mesh_data_axis(mesh):
    """The `batch` axis size a mesh spec names explicitly (None when inferred)."""
    for item in mesh.split(","):
        name, _, value = item.partition("=")
        if name.strip() == "batch" and value.strip().lstrip("-").isdigit():
            size = int(value)
            return size if size > 0 else None
    return None


def _explicit_mesh_size(mesh):
    """Product of the axis sizes a mesh spec gives as positive integers."""
    size = 1
    for item in mesh.split(","):
        value = item.partition("=")[2].strip()
        if value.isdigit() and int(value) > 0:
            size *= int(value)
    return size


def check_mesh(mesh, batch_size):
    """Syntax errors of a mesh spec (unknown axis, bad size), on stand-in devices, and a
    batch the explicit `batch` axis does not divide; whether the mesh fits the real
    devices is checked by `setup_distribution`."""
    if not isinstance(mesh, str) or not mesh.strip():
        raise ValueError(
            f"`mesh` must be a string like \"batch=4,model=2\"; got mesh={mesh!r}."
        )
    data_axis = _mesh_data_axis(mesh)
    make_mesh(mesh, devices=list(range(_explicit_mesh_size(mesh))))
    if data_axis is not None and batch_size % data_axis:
        raise ValueError(
            f"`batch_size`={batch_size} must be divisible by the 'batch' axis of "
            f"mesh={mesh!r} ({data_axis} devices); use a multiple of {data_axis}."
        )


def check_arguments(preset, data, steps, batch_size, mesh=None, learning_rate=None,
                    checkpoint_every=DEFAULT_CHECKPOINT_EVERY):
    """Cheap checks of `train`'s arguments, before anything is loaded. Returns the
    resolved preset path and the list of data paths."""
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive_int("checkpoint_every", checkpoint_every)
    if learning_rate is not None:
        check_number("learning_rate", learning_rate, 0.0, math.inf, low_open=True,
                     high_open=True)
    if mesh is not None:
        check_mesh(mesh, batch_size)
    data_paths = check_data_path(data)
    return resolve_preset(preset), data_paths
