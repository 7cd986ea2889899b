"""Converter from big_vision SigLIP 2 checkpoints (the released `.npz` files, or a
params tree) to `SigLIP2Backbone` (paper sec. 2: the official model code is big_vision's
`two_towers` with `vit` / `naflex_vit` and `text_transformer`).

Both layouts are read: "scan" (one `encoderblock` whose arrays carry a leading depth
axis) and "loop" (`encoderblock_0`, `encoderblock_1`, ...). The architecture is inferred
from the parameter shapes.
"""

import math
import os
import zipfile

import numpy as np

from keras_siglip2.convert.common import (
    CheckpointError,
    attention_arrays,
    backbone_from_checkpoint,
    dense_arrays,
    layer_norm_arrays,
)

# Parameters every SigLIP-style two-tower big_vision checkpoint has.
_REQUIRED = ("img/embedding/kernel", "img/MAPHead_0/probe", "txt/Embed_0/embedding", "t", "b")
_IMAGE_ENCODER = "img/Transformer"
_TEXT_ENCODER = "txt/Encoder_0"


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, path))
        else:
            flat[path] = np.asarray(value)
    return flat


def load_big_vision_params(path_or_params):
    """Returns big_vision parameters as {"img/...": array} from a `.npz` path, an
    open file, or a (nested or "/"-flattened) dict. A leading "params/" is dropped."""
    if isinstance(path_or_params, dict):
        flat = _flatten(path_or_params)
        name = "params dict"
    else:
        name = os.fspath(path_or_params) if isinstance(path_or_params, (str, os.PathLike)) else "file"
        if isinstance(path_or_params, (str, os.PathLike)) and not os.path.exists(path_or_params):
            raise FileNotFoundError(f"big_vision checkpoint not found: {name}")
        try:
            with np.load(path_or_params, allow_pickle=False) as npz:
                flat = {key: npz[key] for key in npz.files}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"Cannot read {name} as a big_vision .npz checkpoint (truncated or "
                f"corrupt?): {type(e).__name__}: {e}"
            ) from e
    flat = {
        (k[len("params/"):] if k.startswith("params/") else k): v
        for k, v in flat.items()
        if not k.startswith(("opt/", "config", "in/", "out/"))
    }
    missing = [k for k in _REQUIRED if k not in flat]
    if missing:
        raise CheckpointError(
            f"{name} is not a SigLIP 2 big_vision checkpoint: missing {missing}. "
            "Expected a two-tower model with a MAP-pooled ViT image tower (`img/...`) "
            f"and a text transformer (`txt/...`); found keys like {sorted(flat)[:5]}."
        )
    return flat


class _Blocks:
    """Per-layer access to an encoder's blocks in scan or loop layout."""

    def __init__(self, flat, encoder):
        self.flat = flat
        self.encoder = encoder
        scan_prefix = f"{encoder}/encoderblock/"
        self.scan = {k[len(scan_prefix):]: v for k, v in flat.items() if k.startswith(scan_prefix)}
        if self.scan:
            self.depth = self.scan["LayerNorm_0/scale"].shape[0]
        else:
            self.depth = 0
            while f"{encoder}/encoderblock_{self.depth}/LayerNorm_0/scale" in flat:
                self.depth += 1
        if self.depth == 0:
            raise CheckpointError(f"No transformer blocks found under {encoder}/.")

    def __call__(self, i, name):
        if self.scan:
            return self.scan[name][i]
        return self.flat[f"{self.encoder}/encoderblock_{i}/{name}"]


def _mha(get, prefix):
    """(kernel (d, d_out), bias) pairs of a big_vision MultiHeadDotProductAttention."""
    pairs = []
    for name in ("query", "key", "value"):
        kernel = get(f"{prefix}/{name}/kernel")
        pairs.append((kernel.reshape(kernel.shape[0], -1), get(f"{prefix}/{name}/bias").reshape(-1)))
    out = get(f"{prefix}/out/kernel")
    pairs.append((out.reshape(-1, out.shape[-1]), get(f"{prefix}/out/bias")))
    return pairs


def _mlp_arrays(get, src, dst):
    return {
        **dense_arrays(f"{dst}/fc1", get(f"{src}/Dense_0/kernel"), get(f"{src}/Dense_0/bias")),
        **dense_arrays(f"{dst}/fc2", get(f"{src}/Dense_1/kernel"), get(f"{src}/Dense_1/bias")),
    }


def _ln(get, src, dst):
    return layer_norm_arrays(dst, get(f"{src}/scale"), get(f"{src}/bias"))


def _encoder_arrays(flat, encoder, dst):
    blocks = _Blocks(flat, encoder)
    arrays = {}
    for i in range(blocks.depth):
        get = lambda name, i=i: blocks(i, name)  # noqa: E731
        prefix = f"{dst}/encoder_block_{i}"
        arrays.update(_ln(get, "LayerNorm_0", f"{prefix}/norm1"))
        arrays.update(_ln(get, "LayerNorm_1", f"{prefix}/norm2"))
        arrays.update(attention_arrays(prefix, *_mha(get, "MultiHeadDotProductAttention_0")))
        arrays.update(_mlp_arrays(get, "MlpBlock_0", f"{prefix}/mlp"))
    arrays.update(_ln(flat.get, f"{encoder}/encoder_norm", f"{dst}/encoder_norm"))
    return arrays, blocks.depth


def infer_architecture(flat, image_size=None):
    """Tower sizes {"vision": ..., "text": ...} from big_vision parameter shapes.

    `image_size` overrides the inferred fixed resolution (grid side * patch), needed
    where the released resolution is not a multiple of the patch (So400m/14 at 384
    uses 27 x 27 patches of 14 pixels).
    """
    stem = flat["img/embedding/kernel"]
    width = stem.shape[-1]
    query = flat.get("img/MAPHead_0/MultiHeadDotProductAttention_0/query/kernel")
    image_blocks = _Blocks(flat, _IMAGE_ENCODER)
    vision = {
        "hidden_dim": int(width),
        "num_layers": image_blocks.depth,
        "num_heads": int(query.shape[1]),
        "intermediate_dim": int(flat["img/MAPHead_0/MlpBlock_0/Dense_0/kernel"].shape[-1]),
    }
    posemb = flat.get("img/pos_embedding")
    if posemb is None:
        raise CheckpointError("The image tower has no learned `img/pos_embedding`.")
    if stem.ndim == 4:  # (p, p, 3, d) conv stem: fixed resolution
        patch = int(stem.shape[0])
        if stem.shape[2] != 3:
            raise CheckpointError(f"Expected an RGB patch stem (p, p, 3, d); got {stem.shape}.")
        side = math.isqrt(posemb.shape[1])
        if image_size is None:
            if side * side != posemb.shape[1]:
                raise CheckpointError(
                    f"{posemb.shape[1]} position embeddings do not form a square grid; "
                    "pass image_size=(height, width)."
                )
            image_size = side * patch
        vision.update(type="fixed", patch_size=patch, image_size=image_size)
    elif stem.ndim == 2:  # (p*p*3, d) dense stem: NaFlex
        patch = math.isqrt(stem.shape[0] // 3)
        if 3 * patch * patch != stem.shape[0]:
            raise CheckpointError(
                f"Unrecognised NaFlex stem {stem.shape}: expected (p * p * 3, width)."
            )
        if posemb.ndim != 3 or posemb.shape[0] != posemb.shape[1] or posemb.shape[2] != width:
            raise CheckpointError(
                f"Unrecognised NaFlex position grid {posemb.shape}: expected a square "
                f"(G, G, {width}) `img/pos_embedding` (naflex_vit's learn_2d)."
            )
        vision.update(type="naflex", patch_size=patch, position_grid_size=int(posemb.shape[0]))
    else:
        raise CheckpointError(f"Unrecognised patch stem shape {stem.shape}.")

    embedding = flat["txt/Embed_0/embedding"]
    if "txt/head/kernel" not in flat:
        raise CheckpointError("The text tower has no `txt/head` projection.")
    text_query = flat[f"{_TEXT_ENCODER}/encoderblock/MultiHeadDotProductAttention_0/query/kernel"][0] \
        if f"{_TEXT_ENCODER}/encoderblock/MultiHeadDotProductAttention_0/query/kernel" in flat \
        else flat[f"{_TEXT_ENCODER}/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"]
    text_blocks = _Blocks(flat, _TEXT_ENCODER)
    text = {
        "vocabulary_size": int(embedding.shape[0]),
        "hidden_dim": int(embedding.shape[1]),
        "num_layers": text_blocks.depth,
        "num_heads": int(text_query.shape[1]),
        "intermediate_dim": int(text_blocks(0, "MlpBlock_0/Dense_0/kernel").shape[-1]),
        "projection_dim": int(flat["txt/head/kernel"].shape[-1]),
        "max_sequence_length": int(flat["txt/pos_embedding"].shape[1]),
    }
    return {"vision": vision, "text": text}


def big_vision_arrays(flat, naflex=False):
    """{our variable path: array} for a whole backbone from big_vision parameters."""
    get = flat.__getitem__
    stem = flat["img/embedding/kernel"]
    arrays = {
        **dense_arrays(
            "vision_encoder/patch_embedding/dense",
            stem.reshape(-1, stem.shape[-1]),
            flat["img/embedding/bias"],
        ),
    }
    if naflex:
        arrays["vision_encoder/position_grid/grid"] = flat["img/pos_embedding"]
    else:
        arrays["vision_encoder/position_embedding/embeddings"] = flat["img/pos_embedding"]
    encoder, _ = _encoder_arrays(flat, _IMAGE_ENCODER, "vision_encoder")
    arrays.update(encoder)
    head = "img/MAPHead_0"
    arrays["vision_encoder/map_head/probe"] = flat[f"{head}/probe"]
    arrays.update(
        attention_arrays(
            "vision_encoder/map_head",
            *_mha(get, f"{head}/MultiHeadDotProductAttention_0"),
            fused=False,
        )
    )
    arrays.update(_ln(get, f"{head}/LayerNorm_0", "vision_encoder/map_head/norm"))
    arrays.update(_mlp_arrays(get, f"{head}/MlpBlock_0", "vision_encoder/map_head/mlp"))

    arrays["text_encoder/token_embedding/embeddings"] = flat["txt/Embed_0/embedding"]
    arrays["text_encoder/position_embedding/embeddings"] = flat["txt/pos_embedding"]
    encoder, _ = _encoder_arrays(flat, _TEXT_ENCODER, "text_encoder")
    arrays.update(encoder)
    arrays.update(dense_arrays("text_encoder/head", get("txt/head/kernel"), get("txt/head/bias")))
    arrays["logit_head/log_temperature"] = np.reshape(flat["t"], (1,))
    arrays["logit_head/bias"] = np.reshape(flat["b"], (1,))
    return arrays


def from_big_vision(path_or_params, image_size=None, dtype=None):
    """A `SigLIP2Backbone` holding the weights of a big_vision SigLIP 2 checkpoint.

    Args:
        path_or_params: path to a released `.npz` (e.g. `siglip2_b16_224.npz`), or a
            params dict (nested, or flattened with "/").
        image_size: fixed-resolution override (see `infer_architecture`).
        dtype: optional dtype policy of the returned backbone.
    """
    flat = load_big_vision_params(path_or_params)

    def read():
        arch = infer_architecture(flat, image_size=image_size)
        return arch, big_vision_arrays(flat, naflex=arch["vision"]["type"] == "naflex")

    return backbone_from_checkpoint(read, "big_vision checkpoint", dtype)
