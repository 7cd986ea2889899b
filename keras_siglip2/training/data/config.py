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
    strict: False: bad examples are skipped and counted; True: the first one raises.
    extra_fields: fields to include for inspection (`dataset.EXTRA_FIELDS`).
    drop_remainder: drop a last partial batch.
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

    views: any of "image" (the image at the model resolution), "local" (SILC local
        crops), "masked" (TIPS patch mask), "naflex" (NaFlex patches).
    image_size: int or (height, width), the model resolution (when no preprocessor
        gives it).
    num_local_crops, local_crop_size, local_crop_scale: SILC local crops: count, side
        and area-fraction range.
    mask_ratio, patch_size: TIPS mask: fraction of masked patches over the patch grid.
    naflex_sequence_lengths: the sequence lengths a NaFlex batch draws from.
    """

    views: tuple = ("image",)
    image_size: object = None
    num_local_crops: int = 8
    local_crop_size: object = None
    local_crop_scale: tuple = (0.05, 0.4)
    mask_ratio: float = 0.5
    patch_size: object = None
    naflex_sequence_lengths: tuple = NAFLEX_SEQUENCE_LENGTHS


@dataclasses.dataclass
class LocCaConfig(_Section):
    """The LocCa decoder targets (paper sec. 2.2; `locca_fields.locca_batch_fields`).

    enabled: add the decoder fields to every batch (needs a tokenizer).
    num_bins: location bins per coordinate (None: `locca_targets.DEFAULT_NUM_BINS`).
    sequence_length: decoder length (None: `make_locca_targets`' default).
    task_weights: 3 non-negative weights for captioning / ARef / GCap.
    """

    enabled: bool = False
    num_bins: object = None
    sequence_length: object = None
    task_weights: tuple = (1.0, 1.0, 1.0)

    def options(self):
        """The keyword arguments of `locca_batch_fields` this config sets."""
        out = self.to_dict()
        out.pop("enabled")
        return {k: _tupled(v) for k, v in out.items()}


@dataclasses.dataclass
class MixtureConfig(_Section):
    """The language mixture.

    language_weights: None (every example, in the data's proportions) or a dict
        {language: weight}, e.g. `PAPER_LANGUAGE_WEIGHTS`.
    default_language: language of records without one.
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
