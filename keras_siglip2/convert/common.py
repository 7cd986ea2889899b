"""What every checkpoint converter shares: assigning a {variable path: array} map with
shape checks and a completeness check, the array names of common layers, and writing a
preset directory atomically (a failed conversion never leaves a half-written preset).
The model factory (`build_backbone`) and the preset-file checks live in `models` and
are re-exported here."""

import os
import shutil
import tempfile

import numpy as np

from keras_siglip2.models.factory import build_backbone
from keras_siglip2.preprocessing import SigLIP2Preprocessor
from keras_siglip2.models.preset_files import (  # noqa: F401 (part of this module's API)
    PRESET_WEIGHT_FILES,
    CheckpointError,
    readable_preset_weights,
    require_preset_weights,
)


def backbone_from_checkpoint(read, source, dtype=None):
    """A `SigLIP2Backbone` built and filled from one checkpoint: `read()` returns
    (arch, arrays) (`arch`: {"vision": ..., "text": ...} sizes for `build_backbone`,
    `arrays`: {variable.path: array}); a name it looks up and does not find (KeyError)
    becomes a `CheckpointError` saying the `source` is incomplete."""
    try:
        arch, arrays = read()
    except KeyError as e:
        raise CheckpointError(f"The {source} is incomplete: {e} is missing.") from e
    backbone = build_backbone(arch["vision"], arch["text"], dtype=dtype)
    assign_weights(backbone, arrays, source=source)
    return backbone


def assign_weights(model, arrays, source="checkpoint"):
    """Assigns `arrays` ({variable.path: array}) to `model`'s variables.

    Every variable must get exactly one array of its exact shape and every array
    must be used: anything else raises `CheckpointError` naming the paths.
    """
    variables = {v.path: v for v in model.weights}
    missing = sorted(set(variables) - set(arrays))
    unused = sorted(set(arrays) - set(variables))
    if missing or unused:
        raise CheckpointError(
            f"The {source} does not fit the model: "
            f"{len(missing)} model variables get no value (first: {missing[:3]}), "
            f"{len(unused)} converted arrays have no variable (first: {unused[:3]})."
        )
    for path, variable in variables.items():
        value = np.asarray(arrays[path])
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointError(
                f"Shape mismatch for {path}: the {source} gives {value.shape}, "
                f"the model expects {tuple(variable.shape)}."
            )
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"The {source} has NaN or inf values in {path}.")
        variable.assign(value.astype(variable.dtype))


def attention_arrays(prefix, query, key, value, out, fused=True):
    """Our attention variables from per-projection (kernel (d, d_out), bias) pairs.

    `fused=True`: self-attention (one qkv projection); False: cross-attention
    (query, and key_value from the context).
    """

    def cat(*pairs):
        return (
            np.concatenate([p[0] for p in pairs], axis=-1),
            np.concatenate([p[1] for p in pairs], axis=-1),
        )

    if fused:
        projections = {"qkv": cat(query, key, value)}
    else:
        projections = {"query": cat(query), "key_value": cat(key, value)}
    projections["out"] = out
    arrays = {}
    for name, (kernel, bias) in projections.items():
        arrays[f"{prefix}/attention/{name}/kernel"] = kernel
        arrays[f"{prefix}/attention/{name}/bias"] = bias
    return arrays


def layer_norm_arrays(prefix, scale, bias):
    return {f"{prefix}/gamma": scale, f"{prefix}/beta": bias}


def dense_arrays(prefix, kernel, bias):
    return {f"{prefix}/kernel": kernel, f"{prefix}/bias": bias}


def save_preset(backbone, out_dir, tokenizer=None, image_converter=None, overwrite=False):
    """Writes a keras-hub preset directory for `backbone` (+ tokenizer / image
    converter / preprocessor when given) atomically: everything is written to a
    temporary sibling directory that is renamed into place only when complete."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not overwrite and os.listdir(out_dir):
            raise FileExistsError(
                f"Output directory {out_dir} exists and is not empty; choose another "
                "path or pass overwrite=True."
            )
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".partial-", dir=parent)
    try:
        backbone.save_to_preset(tmp)
        if tokenizer is not None:
            tokenizer.save_to_preset(tmp)
        if image_converter is not None:
            image_converter.save_to_preset(tmp)
        if tokenizer is not None and image_converter is not None:
            SigLIP2Preprocessor(
                tokenizer=tokenizer, image_converter=image_converter
            ).save_to_preset(tmp)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
