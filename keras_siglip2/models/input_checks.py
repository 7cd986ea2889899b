"""Validation of model inputs, so that bad input gets one clear error naming the
argument, the value and what was expected instead of a deep backend error or a silently
wrong embedding."""

import numpy as np
import keras


def concrete_value(x):
    """The numpy value of `x` when it is concrete (eager), else None (symbolic/traced)."""
    if isinstance(x, keras.KerasTensor):
        return None
    if isinstance(x, np.ndarray):
        return x
    try:
        return keras.ops.convert_to_numpy(x)
    except Exception:  # jax tracers, tf graph tensors: values are unknown here.
        return None


def dtype_name(x):
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return np.asarray(x).dtype.name
    return keras.backend.standardize_dtype(dtype)


def check_float_images(name, images, expected_shape):
    """Float (B, H, W, C) images in [-1, 1] of the given (H, W, C)."""
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise ValueError(
            f"`{name}` must be a rank-4 batch (B, H, W, C); got shape {shape}. "
            "Add a batch axis for a single image."
        )
    if shape[-1] != expected_shape[-1]:
        raise ValueError(
            f"`{name}` must have {expected_shape[-1]} channels (RGB, channels last); "
            f"got shape {shape}. Convert grayscale / RGBA images to RGB first."
        )
    if None not in shape[1:3] and tuple(shape[1:3]) != tuple(expected_shape[:2]):
        raise ValueError(
            f"`{name}` must be {expected_shape[0]}x{expected_shape[1]} for this model; "
            f"got shape {shape}. Resize with `SigLIP2ImageConverter`."
        )
    dtype = dtype_name(images)
    if "float" not in dtype:
        raise ValueError(
            f"`{name}` must be floating point in [-1, 1]; got dtype {dtype}. "
            "Map uint8 pixels with `SigLIP2ImageConverter` (x / 127.5 - 1)."
        )
    check_value_range(name, images, -1.0, 1.0)


def check_value_range(name, x, low, high, slack=1e-3):
    value = concrete_value(x)
    if value is None or value.size == 0:
        return
    value = np.asarray(value, dtype=np.float32)
    if not np.all(np.isfinite(value)):
        raise ValueError(f"`{name}` contains NaN or inf values.")
    lo, hi = float(value.min()), float(value.max())
    if lo < low - slack or hi > high + slack:
        raise ValueError(
            f"`{name}` must lie in [{low}, {high}]; got values in [{lo:g}, {hi:g}]. "
            "Preprocess pixels with `SigLIP2ImageConverter` (x / 127.5 - 1)."
        )


def check_token_ids(token_ids, vocabulary_size, max_length):
    shape = tuple(token_ids.shape)
    if len(shape) != 2:
        raise ValueError(
            f"`token_ids` must be a rank-2 batch (B, L); got shape {shape}."
        )
    if shape[1] is not None and shape[1] > max_length:
        raise ValueError(
            f"`token_ids` has length {shape[1]}, more than the text tower's "
            f"`max_sequence_length`={max_length}. Tokenize with `SigLIP2Tokenizer`."
        )
    dtype = dtype_name(token_ids)
    if "int" not in dtype:
        raise ValueError(f"`token_ids` must be integers; got dtype {dtype}.")
    value = concrete_value(token_ids)
    if value is None or value.size == 0:
        return
    lo, hi = int(value.min()), int(value.max())
    if lo < 0 or hi >= vocabulary_size:
        bad = hi if hi >= vocabulary_size else lo
        raise ValueError(
            f"`token_ids` contains id {bad}, outside the vocabulary "
            f"[0, {vocabulary_size}). Was it tokenized for another model?"
        )
