"""The registry of released SigLIP 2 checkpoints (paper arXiv 2502.14786, Table 1).

Each released checkpoint is described by one JSON file (`presets/<name>.json` in the
source tree, `keras_siglip2/preset_data/<name>.json` in an installed wheel): its
architecture, where the original weights live (Hugging Face transformers, big_vision
`.npz`, keras-hub on Kaggle), its parameter counts and the paper's headline metrics.

Parameter counts are always recomputed here from the architecture
(`count_params`), following the layers of `keras_siglip2.models`; the JSON copy exists
for readers and is checked against the computation by the tests.

`resolve_preset` turns what a user passes to `from_preset` into something keras-hub's
preset loader can open:

- a local preset directory is returned unchanged;
- a known name (`siglip2_base_patch16_224`) becomes a converted preset directory in the
  cache (`$KERAS_SIGLIP2_CACHE/<name>`, default `~/.cache/keras_siglip2/<name>`),
  downloading and converting the original checkpoint the first time;
- `kaggle://`, `hf://`, `gs://`, `modelscope://` handles are returned unchanged;
- anything else raises a `ValueError` suggesting the nearest preset names.
"""

import copy
import difflib
import functools
import importlib
import importlib.resources
import json
import os
import pathlib
import tempfile

# Every released SigLIP 2 checkpoint, in the order `list_presets()` reports them.
RELEASED_PRESETS = (
    "siglip2_base_patch32_256",
    "siglip2_base_patch16_224",
    "siglip2_base_patch16_256",
    "siglip2_base_patch16_384",
    "siglip2_base_patch16_512",
    "siglip2_large_patch16_256",
    "siglip2_large_patch16_384",
    "siglip2_large_patch16_512",
    "siglip2_so400m_patch14_224",
    "siglip2_so400m_patch14_384",
    "siglip2_so400m_patch16_256",
    "siglip2_so400m_patch16_384",
    "siglip2_so400m_patch16_512",
    "siglip2_giant_opt_patch16_256",
    "siglip2_giant_opt_patch16_384",
    "siglip2_base_patch16_naflex",
    "siglip2_so400m_patch16_naflex",
)

# Handles that keras-hub's own preset loader opens; passed through unchanged.
HANDLE_SCHEMES = ("kaggle://", "hf://", "gs://", "modelscope://")

CACHE_ENV = "KERAS_SIGLIP2_CACHE"
DEFAULT_CACHE = os.path.join("~", ".cache", "keras_siglip2")

# Package data of an installed wheel, then the source tree's top-level folder.
PACKAGE_DATA_DIR = "preset_data"
REPO_PRESET_DIR = pathlib.Path(__file__).resolve().parent.parent / "presets"

# Which entry of a preset's "sources" `resolve_preset` downloads and converts by
# default, and the `keras_siglip2.convert` function that converts each kind.
DEFAULT_SOURCE = "transformers"
CONVERTERS = {
    "transformers": "from_transformers",
    "big_vision": "from_big_vision",
    "keras_hub": "from_keras_hub",
}


# ---------------------------------------------------------------------------
# Parameter counts, from the architecture alone.
# ---------------------------------------------------------------------------


def _mlp_params(d, m):
    """Dense d -> m and m -> d, with biases."""
    return d * m + m + m * d + d


def _encoder_block_params(d, m):
    """Pre-LN block: 2 LayerNorms, fused qkv + out projection, MLP."""
    layer_norms = 2 * (2 * d)
    attention = (3 * d * d + 3 * d) + (d * d + d)
    return layer_norms + attention + _mlp_params(d, m)


def _map_head_params(d, m):
    """Probe, cross-attention (query, key_value, out), LayerNorm, MLP."""
    attention = (d * d + d) + (2 * d * d + 2 * d) + (d * d + d)
    return d + attention + 2 * d + _mlp_params(d, m)


def num_positions(vision):
    """Number of learned position embeddings of an image tower config: the patch grid
    (size // patch)^2 for a fixed tower, the position grid G * G for NaFlex."""
    if vision["type"] == "naflex":
        return int(vision["position_grid_size"]) ** 2
    size = vision["image_size"]
    height, width = (size, size) if isinstance(size, int) else size
    patch = vision["patch_size"]
    return (height // patch) * (width // patch)


def vision_param_count(vision):
    """Parameters of an image tower: patch stem, position embedding, encoder blocks,
    final LayerNorm and MAP head. The fixed conv stem (p, p, 3, d) and the NaFlex Dense
    stem (p*p*3 -> d) have the same count."""
    d, m = vision["hidden_dim"], vision["intermediate_dim"]
    p = vision["patch_size"]
    stem = p * p * 3 * d + d
    positions = num_positions(vision) * d
    blocks = vision["num_layers"] * _encoder_block_params(d, m)
    return stem + positions + blocks + 2 * d + _map_head_params(d, m)


def text_param_count(text):
    """Parameters of the text tower: token and position embeddings, encoder blocks,
    final LayerNorm and the `head` projection."""
    d, m = text["hidden_dim"], text["intermediate_dim"]
    projection = text.get("projection_dim") or d
    embeddings = text["vocabulary_size"] * d + text["max_sequence_length"] * d
    blocks = text["num_layers"] * _encoder_block_params(d, m)
    return embeddings + blocks + 2 * d + d * projection + projection


def count_params(architecture):
    """`{"vision", "text", "total"}` parameter counts of an architecture dict
    (`{"vision": {...}, "text": {...}}`); the total adds the logit head's t and b."""
    vision = vision_param_count(architecture["vision"])
    text = text_param_count(architecture["text"])
    return {"vision": vision, "text": text, "total": vision + text + 2}


# ---------------------------------------------------------------------------
# The registry.
# ---------------------------------------------------------------------------


def preset_data_dirs():
    """Folders searched for `<name>.json`, in order: the installed package data, then
    the source tree's `presets/`. Only existing folders are returned."""
    dirs = []
    try:
        packaged = importlib.resources.files("keras_siglip2").joinpath(PACKAGE_DATA_DIR)
        if packaged.is_dir():
            dirs.append(packaged)
    except (ModuleNotFoundError, TypeError):  # not importable as a package
        pass
    if REPO_PRESET_DIR.is_dir():
        dirs.append(REPO_PRESET_DIR)
    return dirs


def _read_json_files():
    for folder in preset_data_dirs():
        files = sorted(
            (f for f in folder.iterdir() if f.name.endswith(".json")),
            key=lambda f: f.name,
        )
        if files:
            return {f.name[: -len(".json")]: json.loads(f.read_text("utf-8")) for f in files}
    raise FileNotFoundError(
        "No SigLIP 2 preset files found: looked in the package data "
        f"keras_siglip2/{PACKAGE_DATA_DIR}/ and in {REPO_PRESET_DIR}. "
        "Reinstall keras-siglip2."
    )


@functools.lru_cache(maxsize=None)
def _registry():
    raw = _read_json_files()
    for file_name, metadata in raw.items():
        if metadata.get("name") != file_name:
            raise ValueError(
                f"Preset file {file_name}.json names itself {metadata.get('name')!r}; "
                "the file name and the 'name' field must agree."
            )
    known = [name for name in RELEASED_PRESETS if name in raw]
    extra = sorted(name for name in raw if name not in RELEASED_PRESETS)
    return {name: raw[name] for name in known + extra}


class PresetListing(dict):
    """What `list_presets()` returns: an ordered dict name -> metadata that prints
    (and shows in a REPL or notebook) as the table of `format_presets_table`."""

    def __repr__(self):
        return format_presets_table(self) + "\n(a dict: name -> metadata)"

    __str__ = __repr__


def list_presets():
    """Every known preset: an ordered dict name -> metadata (a copy: editing it
    changes nothing here) that prints as a table. Fields: name, description,
    architecture, sources, params, paper_metrics."""
    return PresetListing(copy.deepcopy(_registry()))


def preset_names():
    return list(_registry())


def _canonical_name(name):
    """`siglip2-base-patch16-224`, `google/siglip2-base-patch16-224` and
    `SigLIP2_Base_Patch16_224` all mean `siglip2_base_patch16_224`."""
    name = name.strip()
    if name.startswith("google/"):
        name = name[len("google/") :]
    return name.lower().replace("-", "_")


def nearest_preset_names(value, n=3):
    """The `n` preset names most similar to `value` (difflib ratio, ties broken by
    the longer common prefix)."""
    value = _canonical_name(value)

    def score(name):
        ratio = difflib.SequenceMatcher(None, value, name).ratio()
        return (ratio, len(os.path.commonprefix([value, name])))

    return sorted(preset_names(), key=score, reverse=True)[:n]


def _unknown_preset_error(preset):
    suggestions = nearest_preset_names(preset)
    return ValueError(
        f"Unknown preset {preset!r}. Did you mean: {', '.join(suggestions)}? "
        "See keras_siglip2.list_presets()."
    )


def _lookup(name):
    registry = _registry()
    if name in registry:
        return name
    canonical = _canonical_name(name)
    if canonical in registry:
        return canonical
    return None


def get_preset(name):
    """Metadata of one preset (a copy). Raises `ValueError` with suggestions for an
    unknown name."""
    key = _lookup(name) if isinstance(name, str) else None
    if key is None:
        raise _unknown_preset_error(str(name))
    return copy.deepcopy(_registry()[key])


def _resolution(vision):
    if vision["type"] == "naflex":
        return f"var.<={vision['max_num_patches']}p"
    size = vision["image_size"]
    return str(size) if isinstance(size, int) else "x".join(str(s) for s in size)


_SOURCE_ABBREVIATIONS = (("transformers", "hf"), ("big_vision", "bv"), ("keras_hub", "kaggle"))


def format_presets_table(presets=None):
    """A plain-text table of `presets` (name -> metadata; default: every preset), as
    `siglip2 presets` and `list_presets()` print it: name, tower type, resolution,
    parameters (millions), the paper's ImageNet-1k zero-shot top-1 and the available
    sources."""
    headers = ("name", "type", "resolution", "params (M)", "IN-1k 0-shot", "sources")
    rows = []
    for name, metadata in (_registry() if presets is None else presets).items():
        vision = metadata["architecture"]["vision"]
        total = count_params(metadata["architecture"])["total"]
        top1 = (metadata.get("paper_metrics") or {}).get("imagenet_1k_zero_shot_top1")
        sources = metadata.get("sources") or {}
        rows.append(
            (
                name,
                vision["type"],
                _resolution(vision),
                f"{total / 1e6:,.1f}",
                "-" if top1 is None else f"{top1:.1f}",
                ",".join(short for key, short in _SOURCE_ABBREVIATIONS if sources.get(key)),
            )
        )
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    right = {3, 4}  # numbers are right-aligned

    def line(cells):
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out.append("")
    out.append(
        "sources: hf = Hugging Face transformers, bv = big_vision .npz, "
        "kaggle = keras-hub preset. IN-1k: paper Table 1 (NaFlex at 256 patches)."
    )
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Models from a preset's architecture.
# ---------------------------------------------------------------------------


def build_backbone_from_config(architecture, dtype=None):
    """A randomly initialized `SigLIP2Backbone` of a preset's architecture dict."""
    from keras_siglip2.convert.common import build_backbone

    return build_backbone(architecture["vision"], architecture["text"], dtype=dtype)


def build_backbone_from_preset_config(name, load_weights=False, dtype=None):
    """A `SigLIP2Backbone` with the architecture of preset `name`.

    `load_weights=False` (default): randomly initialized, nothing is downloaded.
    `load_weights=True`: the released weights, through `SigLIP2Backbone.from_preset`
    (downloads and converts on first use).
    """
    metadata = get_preset(name)
    if load_weights:
        from keras_siglip2.models import SigLIP2Backbone

        kwargs = {} if dtype is None else {"dtype": dtype}
        return SigLIP2Backbone.from_preset(metadata["name"], **kwargs)
    return build_backbone_from_config(metadata["architecture"], dtype=dtype)


# ---------------------------------------------------------------------------
# Resolving presets: cache, download, conversion.
# ---------------------------------------------------------------------------


def cache_dir():
    """Where converted presets are kept: `$KERAS_SIGLIP2_CACHE` or
    `~/.cache/keras_siglip2`."""
    return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def _is_preset_dir(path):
    return os.path.isfile(os.path.join(path, "config.json"))


def download_source(handle):
    """Downloads a checkpoint source and returns something its converter opens:

    - `hf://owner/repo`: a local snapshot directory (huggingface_hub);
    - `gs://bucket/file.npz`: a local copy of the file under the cache's `downloads/`
      (tf.io.gfile);
    - `kaggle://...` (and any other handle): returned unchanged, keras-hub's own
      loader fetches it.
    """
    if handle.startswith("hf://"):
        from huggingface_hub import snapshot_download

        repo_id = handle[len("hf://") :].strip("/")
        return snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"],
        )
    if handle.startswith("gs://"):
        import tensorflow as tf

        target_dir = os.path.join(cache_dir(), "downloads")
        os.makedirs(target_dir, exist_ok=True)
        target = os.path.join(target_dir, handle.rstrip("/").rsplit("/", 1)[-1])
        if not os.path.exists(target):
            fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=target_dir)
            os.close(fd)
            try:
                tf.io.gfile.copy(handle, tmp, overwrite=True)
                os.replace(tmp, target)
            except BaseException:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise
        return target
    return handle


def load_source_tokenizer(local_source):
    """The `SigLIP2Tokenizer` of a downloaded source when it carries a SentencePiece
    model (Hugging Face repos ship `tokenizer.model`); None otherwise (big_vision
    `.npz` files carry none, or the tokenizer class is not available)."""
    if not isinstance(local_source, (str, os.PathLike)) or not os.path.isdir(local_source):
        return None
    proto = os.path.join(local_source, "tokenizer.model")
    if not os.path.isfile(proto):
        return None
    for module_name in ("keras_siglip2.preprocessing", "keras_siglip2.preprocessing.tokenizer"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        tokenizer_cls = getattr(module, "SigLIP2Tokenizer", None)
        if tokenizer_cls is not None:
            return tokenizer_cls(proto=proto)
    return None


def convert_source(local_source, kind, **kwargs):
    """Converts a downloaded source of the given kind ("transformers", "big_vision",
    "keras_hub") with the matching `keras_siglip2.convert` function; `kwargs` go to
    the converter."""
    if kind not in CONVERTERS:
        raise ValueError(f"Unknown source kind {kind!r}; expected one of {sorted(CONVERTERS)}.")
    convert = importlib.import_module("keras_siglip2.convert")
    converter = getattr(convert, CONVERTERS[kind], None)
    if converter is None:
        raise NotImplementedError(
            f"keras_siglip2.convert has no {CONVERTERS[kind]}: cannot convert a "
            f"{kind} checkpoint in this installation."
        )
    return converter(local_source, **kwargs)


def match_for_source(kind):
    """The image converter mode a preset converted from a `kind` source records:
    "transformers" for Hugging Face checkpoints, "big_vision" for the others."""
    return "transformers" if kind == "transformers" else "big_vision"


def image_converter_for_architecture(architecture, match="big_vision"):
    """The image converter a preset's vision tower expects: `SigLIP2ImageConverter` at
    the fixed resolution, or `SigLIP2NaFlexImageConverter` with the tower's patch size
    and default sequence length; `match`: the reference preprocessing it reproduces."""
    from keras_siglip2 import preprocessing

    vision = architecture["vision"]
    if vision["type"] == "naflex":
        return preprocessing.SigLIP2NaFlexImageConverter(
            patch_size=vision["patch_size"], max_num_patches=vision["max_num_patches"],
            match=match,
        )
    size = vision["image_size"]
    return preprocessing.SigLIP2ImageConverter(
        image_size=tuple(size) if isinstance(size, (list, tuple)) else (size, size),
        match=match,
    )


def save_converted(backbone, out_dir, tokenizer=None, image_converter=None):
    """Writes the converted preset with `keras_siglip2.convert.save_preset`."""
    convert = importlib.import_module("keras_siglip2.convert")
    kwargs = {"tokenizer": tokenizer}
    if image_converter is not None:
        kwargs["image_converter"] = image_converter
    return convert.save_preset(backbone, out_dir, **kwargs)


def fetch_preset(name, source=None):
    """The cached converted preset directory of a known preset `name`, creating it
    (download + convert + save) when missing. `source`: which of the preset's
    "sources" to convert from (default "transformers")."""
    metadata = get_preset(name)
    target = os.path.join(cache_dir(), metadata["name"])
    if _is_preset_dir(target):
        return target
    kind = source or DEFAULT_SOURCE
    handle = (metadata.get("sources") or {}).get(kind)
    if not handle:
        available = sorted(k for k, v in (metadata.get("sources") or {}).items() if v)
        raise ValueError(
            f"Preset {metadata['name']!r} has no {kind!r} source; available: {available}."
        )
    local_source = download_source(handle)
    kwargs = {}
    vision = metadata["architecture"]["vision"]
    if kind == "big_vision" and vision["type"] == "fixed":
        # The .npz knows the patch grid, not the resolution (So400m/14 at 384 has
        # 27 x 27 patches of 14 pixels).
        kwargs["image_size"] = vision["image_size"]
    backbone = convert_source(local_source, kind, **kwargs)
    tokenizer = load_source_tokenizer(local_source)
    image_converter = (
        image_converter_for_architecture(metadata["architecture"], match_for_source(kind))
        if tokenizer else None
    )
    try:
        save_converted(backbone, target, tokenizer=tokenizer, image_converter=image_converter)
    except FileExistsError:
        # Another process finished the same conversion first.
        if not _is_preset_dir(target):
            raise
    if not _is_preset_dir(target):
        raise RuntimeError(
            f"Converting {metadata['name']!r} wrote no config.json into {target}."
        )
    return target


def _preset_for_source_handle(handle):
    """(preset name, source kind) of a known preset whose source is `handle`, else None."""
    wanted = handle.rstrip("/")
    for metadata in _registry().values():
        for kind, value in (metadata.get("sources") or {}).items():
            if kind in CONVERTERS and value and value.rstrip("/") == wanted:
                return metadata["name"], kind
    return None


def resolve_preset(preset, source=None):
    """What `from_preset` should open for `preset`:

    - an existing local directory: returned unchanged (it must hold config.json);
    - a known preset name: its converted preset directory in the cache, downloaded
      and converted on first use (see `fetch_preset`);
    - a `kaggle://`, `hf://`, `gs://` or `modelscope://` handle: unchanged;
    - anything else: `ValueError` naming the value and the nearest preset names.
    """
    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str):
        raise ValueError(
            f"A preset must be a name, a directory or a handle string; got {preset!r}."
        )
    if preset.startswith(HANDLE_SCHEMES):
        # A released checkpoint's own handle (e.g. hf://google/siglip2-base-patch16-224,
        # a transformers repo keras-hub cannot read) goes through our conversion.
        known = _preset_for_source_handle(preset)
        if known is not None:
            return fetch_preset(*known)
        return preset
    local = os.path.expanduser(preset)
    if os.path.isdir(local):
        if not _is_preset_dir(local):
            raise ValueError(
                f"{preset!r} is not a preset directory (no config.json). A preset "
                "directory is written by `save_to_preset` or `siglip2 convert`."
            )
        return preset
    if os.path.exists(local):
        raise ValueError(
            f"{preset!r} is a file, not a preset directory. Convert checkpoints with "
            "`siglip2 convert`."
        )
    name = _lookup(preset)
    if name is not None:
        return fetch_preset(name, source=source)
    if os.sep in preset or preset.startswith((".", "~")):
        raise ValueError(f"Preset directory {preset!r} does not exist.")
    raise _unknown_preset_error(preset)


def clear_registry_cache():
    """Forgets the loaded JSON files (after editing them in a running process)."""
    _registry.cache_clear()


__all__ = [
    "RELEASED_PRESETS",
    "build_backbone_from_config",
    "build_backbone_from_preset_config",
    "cache_dir",
    "count_params",
    "download_source",
    "fetch_preset",
    "format_presets_table",
    "get_preset",
    "list_presets",
    "resolve_preset",
    "text_param_count",
    "vision_param_count",
]
