"""The registry of released SigLIP 2 checkpoints (paper arXiv 2502.14786, Table 1), as
data: names, architectures, where the original weights live, parameter counts and the
paper's headline metrics. Plain data: nothing here imports a model, downloads or
converts (that is `keras_siglip2.presets`, a layer above).

Each released checkpoint is described by one JSON file (`presets/<name>.json` in the
source tree, `keras_siglip2/preset_data/<name>.json` in an installed wheel): its
architecture, where the original weights live (Hugging Face transformers, big_vision
`.npz`, keras-hub on Kaggle), its parameter counts and the paper's headline metrics.

Parameter counts are always recomputed here from the architecture
(`count_params`), following the layers of `keras_siglip2.models`; the JSON copy exists
for readers and is checked against the computation by the tests.
"""

import copy
import difflib
import functools
import importlib.resources
import json
import os
import pathlib

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

# Package data of an installed wheel, then the source tree's top-level folder.
PACKAGE_DATA_DIR = "preset_data"
REPO_PRESET_DIR = pathlib.Path(__file__).resolve().parent.parent / "presets"

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


def clear_registry_cache():
    """Forgets the loaded JSON files (after editing them in a running process)."""
    _registry.cache_clear()
