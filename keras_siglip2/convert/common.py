"""What every checkpoint converter shares: building a backbone from inferred sizes,
assigning a {variable path: array} map with shape checks and a completeness check, and
writing a preset directory atomically (a failed conversion never leaves a half-written
preset), and loading a Keras preset directory with clear errors for missing or unreadable
weights."""

import contextlib
import os
import shutil
import tempfile

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that is not a SigLIP 2 model, or is incomplete or corrupt."""


PRESET_WEIGHT_FILES = ("model.weights.h5", "model.weights.json")


def require_preset_weights(directory, what="Preset directory", hint=""):
    """Raises FileNotFoundError if the preset `directory` holds no weights file."""
    if not any(os.path.exists(os.path.join(directory, n)) for n in PRESET_WEIGHT_FILES):
        raise FileNotFoundError(
            f"{what} {directory} has no weights: expected model.weights.h5 (or a sharded "
            f"model.weights.json).{hint}"
        )


@contextlib.contextmanager
def readable_preset_weights(preset, what="preset", hint=""):
    """Around a `from_preset` call: h5py's plain OSError for a truncated or corrupt
    weights file of a local preset directory becomes a `CheckpointError` naming it."""
    try:
        yield
    except OSError as e:
        if type(e) is not OSError or not os.path.isdir(preset):
            raise
        raise CheckpointError(
            f"Cannot read the weights of {what} {preset} (truncated or corrupt "
            f"model.weights.h5?): {e}.{hint}"
        ) from e


def build_backbone(vision, text, dtype=None):
    """A `SigLIP2Backbone` from two dicts of tower sizes. `vision["type"]` is
    "fixed" (keys of SigLIP2VisionEncoder) or "naflex" (SigLIP2NaFlexVisionEncoder)."""
    from keras_siglip2.models import SigLIP2Backbone, SigLIP2TextEncoder

    vision = dict(vision)
    kind = vision.pop("type", "fixed")
    if kind == "naflex":
        from keras_siglip2.models.naflex_vision_encoder import SigLIP2NaFlexVisionEncoder

        vision_encoder = SigLIP2NaFlexVisionEncoder(**vision, dtype=dtype)
    elif kind == "fixed":
        from keras_siglip2.models import SigLIP2VisionEncoder

        vision_encoder = SigLIP2VisionEncoder(**vision, dtype=dtype)
    else:
        raise ValueError(f"Unknown vision tower type {kind!r}; expected 'fixed' or 'naflex'.")
    text_encoder = SigLIP2TextEncoder(**text, dtype=dtype)
    return SigLIP2Backbone(vision_encoder, text_encoder, dtype=dtype)


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
            from keras_siglip2.preprocessing import SigLIP2Preprocessor

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
