"""Released SigLIP 2 checkpoints by name: the registry (`keras_siglip2.preset_registry`,
re-exported here) and what turns a name into a converted local preset.

`resolve_preset` turns what a user passes to `from_preset` into something keras-hub's
preset loader can open (registered at import as the resolver of
`keras_siglip2.models.preset_files`, which `from_preset` calls):

- a local preset directory is returned unchanged;
- a known name (`siglip2_base_patch16_224`) becomes a converted preset directory in the
  cache (`$KERAS_SIGLIP2_CACHE/<name>`, default `~/.cache/keras_siglip2/<name>`),
  downloading and converting the original checkpoint the first time;
- `kaggle://`, `hf://`, `gs://`, `modelscope://` handles are returned unchanged;
- anything else raises a `ValueError` suggesting the nearest preset names.
"""

import importlib
import os
import tempfile

from keras_siglip2 import preprocessing
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.factory import build_backbone
from keras_siglip2.models.preset_files import register_preset_resolver
from keras_siglip2.preset_registry import (  # noqa: F401 (re-exported: the public names)
    PACKAGE_DATA_DIR,
    RELEASED_PRESETS,
    REPO_PRESET_DIR,
    PresetListing,
    _lookup,
    _registry,
    _unknown_preset_error,
    clear_registry_cache,
    count_params,
    format_presets_table,
    get_preset,
    list_presets,
    nearest_preset_names,
    num_positions,
    preset_data_dirs,
    preset_names,
    text_param_count,
    vision_param_count,
)

# Handles that keras-hub's own preset loader opens; passed through unchanged.
HANDLE_SCHEMES = ("kaggle://", "hf://", "gs://", "modelscope://")

CACHE_ENV = "KERAS_SIGLIP2_CACHE"
DEFAULT_CACHE = os.path.join("~", ".cache", "keras_siglip2")

# Which entry of a preset's "sources" `resolve_preset` downloads and converts by
# default, and the `keras_siglip2.convert` function that converts each kind.
DEFAULT_SOURCE = "transformers"
CONVERTERS = {
    "transformers": "from_transformers",
    "big_vision": "from_big_vision",
    "keras_hub": "from_keras_hub",
}


# ---------------------------------------------------------------------------
# Models from a preset's architecture.
# ---------------------------------------------------------------------------


def build_backbone_from_config(architecture, dtype=None):
    """A randomly initialized `SigLIP2Backbone` of a preset's architecture dict."""
    return build_backbone(architecture["vision"], architecture["text"], dtype=dtype)


def build_backbone_from_preset_config(name, load_weights=False, dtype=None):
    """A `SigLIP2Backbone` with the architecture of preset `name`.

    `load_weights=False` (default): randomly initialized, nothing is downloaded.
    `load_weights=True`: the released weights, through `SigLIP2Backbone.from_preset`
    (downloads and converts on first use).
    """
    metadata = get_preset(name)
    if load_weights:
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
        from huggingface_hub import snapshot_download  # lazy: optional, hf:// only

        repo_id = handle[len("hf://") :].strip("/")
        return snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"],
        )
    if handle.startswith("gs://"):
        import tensorflow as tf  # lazy: gs:// reads through tf.io.gfile only

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


register_preset_resolver(resolve_preset)


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
