"""The configuration of an `image_text_dataset` pipeline as small documented dataclasses
(paper sec. 2: which views, LocCa targets, language mixture and reading order a run's
data has), so that a run's whole data configuration is one object a user can print,
save (`to_dict`, plain JSON-able values) and reload (`from_dict`).

- `ReadConfig`: how records are read (format, seed and order, epochs, hosts, resumption,
  strictness, the extra fields and batching);
- `ViewConfig`: which views are built (image, SILC local crops, TIPS mask, NaFlex
  patches) and their sizes;
- `LocCaConfig`: the LocCa decoder targets (paper sec. 2.2);
- `MixtureConfig`: the language mixture (paper sec. 2, 90 % English / 10 % other);
- `DataConfig`: the four together.

`image_text_dataset` still takes the flat keyword arguments it always took
(`batch_size=..., views=..., num_local_crops=..., locca=True, ...`); `DataConfig.
from_keywords` maps them onto these sections (`KEYWORDS` lists which goes where).
"""

import dataclasses

import tensorflow as tf

from keras_siglip2.training.data.languages import PAPER_LANGUAGE_WEIGHTS  # noqa: F401

NAFLEX_SEQUENCE_LENGTHS = (128, 256, 576, 784, 1024)


def _tupled(value):
    """Lists (from JSON) back to tuples, recursively; other values unchanged."""
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


class _Section:
    """`to_dict` / `from_dict` of a flat dataclass of plain values."""

    def to_dict(self):
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, config):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(f"`{cls.__name__}` has no field(s) {unknown}; its fields are "
                             f"{sorted(names)}.")
        return cls(**{k: _tupled(v) if k != "language_weights" else v
                      for k, v in config.items()})


@dataclasses.dataclass
class ReadConfig(_Section):
    """How records are read and batched.

    format: "tfrecord", "webdataset", "csv", "jsonl" or None (from file names).
    seed: int >= 0; order, crops, masks and NaFlex lengths are functions of it.
    shuffle, shuffle_buffer: shuffle shard order, rows and records (buffer of encoded
        records for shard formats; CSV / JSONL rows are fully permuted).
    num_epochs: None (repeat forever) or an int.
    num_hosts, host_index: this host's share of the data; default (both None) from
        `jax.process_count()` / `jax.process_index()` on JAX, else (1, 0).
    start_batch: int, resume after this many batches.
    strict: False: bad examples are skipped and counted in `dataset.report` (the first
        of each reason named); True: the first bad example raises
        (tf.errors.InvalidArgumentError from the iterator, naming the shard, the
        record and the reason); a missing shard raises FileNotFoundError at once.
    extra_fields: any of `dataset.EXTRA_FIELDS` to include ("texts", "boxes" (B, max,
        4) + "num_boxes", "box_texts", "language", "source", "record").
    drop_remainder: drop a last partial batch (True: every batch has `batch_size`
        examples, as a jitted train step wants).
    num_parallel_calls: parallelism of the maps (`tf.data.AUTOTUNE` = -1).
    """

    format: object = None
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 10_000
    num_epochs: object = None
    num_hosts: object = None
    host_index: object = None
    start_batch: int = 0
    strict: bool = False
    extra_fields: tuple = ()
    drop_remainder: bool = True
    num_parallel_calls: int = tf.data.AUTOTUNE


@dataclasses.dataclass
class ViewConfig(_Section):
    """Which views each example gets, and their sizes.

    views: any of "image" (the image at the model resolution: "images", or NaFlex
        patches with a NaFlex converter), "local" (SILC: "local_images" (B, V, h, w,
        3) and the teacher's augmented global view "teacher_images" (B, H, W, 3)),
        "masked" (TIPS: "tips_mask" (B, N) int32, 1 = masked) and "naflex" (NaFlex
        patches "pixel_patches", "patch_positions", "patch_mask", the sequence length
        drawn per batch from `naflex_sequence_lengths`).
    image_size: int or (height, width), the model resolution (when no preprocessor
        gives it).
    num_local_crops, local_crop_size, local_crop_scale: SILC local crops: count (8),
        side (None: `augment.silc_local_size`, 96/224 of the model resolution rounded
        to a multiple of `patch_size`, or of 16 when it is None: 96 px at 224 px, as
        DINO / SILC) and area-fraction range ((0.05, 0.4), DINO / SILC).
    teacher_crop_scale: area-fraction range of the SILC teacher's augmented global
        view "teacher_images" ((0.4, 1.0), DINO / SILC global crops); None: no
        teacher view (the teacher then sees "images").
    teacher_flip, teacher_color_jitter, teacher_jitter_probability,
        teacher_grayscale_probability: the teacher view's flip (p = 1/2), colour
        jitter strengths (brightness, contrast, saturation, hue) = (0.4, 0.4, 0.2,
        0.1) applied with p = 0.8, and grayscale with p = 0.2 (DINO's
        `DataAugmentationDINO` in facebookresearch/dino main_dino.py, which SILC,
        Naeem et al. 2023, follows: 2 global crops over 40-100 % of the area at 224
        px, 8 local crops over 5-40 % at 96 px); `teacher_color_jitter=None` turns
        the colour off. DINO's Gaussian blur and solarization are not applied.
    mask_ratio, patch_size: TIPS mask: fraction of masked patches over the patch grid.
    naflex_sequence_lengths: the sequence lengths a NaFlex batch draws from.
    """

    views: tuple = ("image",)
    image_size: object = None
    num_local_crops: int = 8
    local_crop_size: object = None
    local_crop_scale: tuple = (0.05, 0.4)
    teacher_crop_scale: object = (0.4, 1.0)
    teacher_flip: bool = True
    teacher_color_jitter: object = (0.4, 0.4, 0.2, 0.1)
    teacher_jitter_probability: float = 0.8
    teacher_grayscale_probability: float = 0.2
    mask_ratio: float = 0.5
    patch_size: object = None
    naflex_sequence_lengths: tuple = NAFLEX_SEQUENCE_LENGTHS


@dataclasses.dataclass
class LocCaConfig(_Section):
    """The LocCa decoder targets (paper sec. 2.2; `locca_fields.locca_batch_fields`).

    enabled: add the decoder fields to every batch (needs a tokenizer).
    num_bins: location bins per coordinate (None: `locca_targets.DEFAULT_NUM_BINS`).
    sequence_length: decoder length (None: `make_locca_targets`' default).
    task_weights: 3 non-negative weights for captioning / ARef / GCap (a 0 turns a
        task off; the pretrainer's `locca_task_weights` weight the losses).
    tasks: "all" (the three tasks on every example, (B, 3, L) fields, as LocCa and
        the paper) or "sampled" (one task drawn per example, (B, L): the behaviour
        before issue 17).
    """

    enabled: bool = False
    num_bins: object = None
    sequence_length: object = None
    task_weights: tuple = (1.0, 1.0, 1.0)
    tasks: str = "all"

    def options(self):
        """The keyword arguments of `locca_batch_fields` this config sets."""
        out = self.to_dict()
        out.pop("enabled")
        return {k: _tupled(v) for k, v in out.items()}


@dataclasses.dataclass
class MixtureConfig(_Section):
    """The language mixture.

    language_weights: None (every example, in the data's proportions) or a dict
        {language: weight}, e.g. `PAPER_LANGUAGE_WEIGHTS` = {"en": 0.9, "other": 0.1}:
        examples are drawn from per-language streams with these probabilities;
        "other" takes every language not named; languages neither named nor covered
        by "other" are dropped (counted as language_excluded). Languages compare by
        primary subtag ("en-US" is "en").
    default_language: language of records without one (e.g. "en" for an English CSV).
    """

    language_weights: object = None
    default_language: str = ""


SECTIONS = {"read": ReadConfig, "views": ViewConfig, "locca": LocCaConfig,
            "mixture": MixtureConfig}
# The flat keyword arguments of `image_text_dataset` -> (section, field).
KEYWORDS = {
    **{f.name: ("read", f.name) for f in dataclasses.fields(ReadConfig)},
    **{f.name: ("views", f.name) for f in dataclasses.fields(ViewConfig)},
    **{f.name: ("mixture", f.name) for f in dataclasses.fields(MixtureConfig)},
    "locca": ("locca", "enabled"),
}
LOCCA_OPTIONS = tuple(f.name for f in dataclasses.fields(LocCaConfig) if f.name != "enabled")


@dataclasses.dataclass
class DataConfig:
    """The whole configuration of an `image_text_dataset` pipeline (see the module
    docstring): `read`, `views`, `locca` and `mixture` sections."""

    read: ReadConfig = dataclasses.field(default_factory=ReadConfig)
    views: ViewConfig = dataclasses.field(default_factory=ViewConfig)
    locca: LocCaConfig = dataclasses.field(default_factory=LocCaConfig)
    mixture: MixtureConfig = dataclasses.field(default_factory=MixtureConfig)

    def to_dict(self):
        """{section: {field: value}} of plain (JSON-able) values."""
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    @classmethod
    def from_dict(cls, config):
        unknown = sorted(set(config) - set(SECTIONS))
        if unknown:
            raise ValueError(f"`DataConfig` has no section(s) {unknown}; its sections are "
                             f"{list(SECTIONS)}.")
        return cls(**{name: SECTIONS[name].from_dict(config.get(name, {}))
                      for name in SECTIONS})

    @classmethod
    def coerce(cls, config):
        """A `DataConfig` from None, a `DataConfig` or its `to_dict()` form."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return dataclasses.replace(config)
        if isinstance(config, dict):
            return cls.from_dict(config)
        raise TypeError(f"`config` must be a DataConfig, a dict (DataConfig.to_dict()) or "
                        f"None; got {type(config).__name__}.")

    def with_keywords(self, keywords, caller="image_text_dataset"):
        """A copy with the flat keyword arguments (`KEYWORDS`, plus "locca_options": a
        dict of `LocCaConfig` fields) applied over this config."""
        sections = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        keywords = dict(keywords)
        options = keywords.pop("locca_options", None)
        for key, value in keywords.items():
            if key not in KEYWORDS:
                raise TypeError(f"{caller}() got an unexpected keyword argument {key!r}.")
            section, field = KEYWORDS[key]
            sections[section][field] = value
        if options:
            if not isinstance(options, dict):
                raise TypeError(f"`locca_options` must be a dict; got {options!r}.")
            if not sections["locca"]["enabled"]:
                raise ValueError("`locca_options` given without `locca=True`.")
            unknown = sorted(set(options) - set(LOCCA_OPTIONS))
            if unknown:
                raise ValueError(f"`locca_options` accepts {LOCCA_OPTIONS}; got {unknown}.")
            sections["locca"].update(options)
        return DataConfig(**{name: SECTIONS[name](**sections[name]) for name in SECTIONS})

    @classmethod
    def from_keywords(cls, config=None, **keywords):
        """`coerce(config)` with the flat keyword arguments applied."""
        return cls.coerce(config).with_keywords(keywords)
