"""The two reference resizes the image converters reproduce (`match=`), in TensorFlow ops
so that they run eagerly, inside `tf.data` and in an exported SavedModel alike.

- `"big_vision"`: big_vision's `resize` op (`pp/ops_image.py` `get_resize`, used by the
  SigLIP 2 fixed-resolution pipeline `resize(R)|value_range(-1, 1)`): `tf.image.resize`
  (bilinear, `antialias=False` by default), then the result is clipped to the input
  dtype's range and cast back to it (uint8: truncated to whole levels).
- `"transformers"`: the Hugging Face processors' PIL backends
  (`SiglipImageProcessorPil`: bicubic; `Siglip2ImageProcessorPil`: bilinear), i.e.
  Pillow's `Image.resize` of the uint8 image: a separable, antialiased convolution
  (the filter support grows with the downscale factor) in two passes, each in 22-bit
  fixed point and rounded / clipped to uint8; Pillow 13 runs the vertical pass first
  when the height shrinks by more than twice as many pixels as the width (earlier
  Pillow always starts with the horizontal pass: a rare one-level difference). `pil_resize` redoes it in exact
  integer arithmetic (float32 matrix products of integers below 2**24, see
  `_fixed_point_pass`), so it equals Pillow bit for bit for downscale factors up to 64.
"""

import tensorflow as tf

MATCH_MODES = ("big_vision", "transformers")

# Pillow's fixed point: coefficients carry 22 fractional bits (`PRECISION_BITS`).
_PRECISION_BITS = 22
# A coefficient k = hi * 2**8 + lo with 0 <= lo < 2**8: both partial products stay
# exact in float32.
_LOW_BITS = 8


def check_match(match):
    """`match` if it is one of MATCH_MODES, else a ValueError naming the modes."""
    if not isinstance(match, str) or match not in MATCH_MODES:
        raise ValueError(
            f"`match` must be one of {list(MATCH_MODES)} (the reference preprocessing to "
            f"reproduce: big_vision's pp ops or Hugging Face transformers' PIL image "
            f"processors); got match={match!r}."
        )
    return match


# ----------------------------------------------------------------------- big_vision


def big_vision_resize(images, size, method="bilinear", antialias=False):
    """big_vision `resize(size, method, antialias)`: `tf.image.resize`, then clip to the
    input dtype's range and cast back to it (a no-op for float32). Returns float32."""
    resized = tf.image.resize(tf.cast(images, tf.float32), size, method=method,
                              antialias=antialias)
    return cast_back(resized, images.dtype)


def cast_back(resized, dtype):
    """big_vision's `tf.cast(tf.clip_by_value(image, dtype.min, dtype.max), dtype)` of a
    float32 resize result, returned as float32 (uint8: whole levels, truncated)."""
    if dtype != tf.float32:
        low, high = (tf.cast(v, tf.float32) for v in (dtype.min, dtype.max))
        resized = tf.cast(tf.clip_by_value(resized, low, high), dtype)
    return tf.cast(resized, tf.float32)


# ----------------------------------------------------------------------- Pillow


def _bicubic(x):
    """Pillow's bicubic kernel (Keys, a = -0.5), support 2."""
    a = -0.5
    x = tf.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def _bilinear(x):
    """Pillow's bilinear (triangle) kernel, support 1."""
    return tf.maximum(1.0 - tf.abs(x), 0.0)


_PIL_FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


def pil_coefficients(in_size, out_size, method):
    """Pillow's fixed-point resampling matrix (out_size, in_size), int64 as float64.

    For output pixel i the filter is centred at (i + 0.5) * in / out, stretched by
    max(in / out, 1) (antialiasing), cut to the pixels [xmin, xmax) around the centre,
    normalised to sum 1 and rounded to 22 fractional bits, all in float64 as Pillow's
    `precompute_coeffs` / `normalize_coeffs_8bpc` do."""
    kernel, support = _PIL_FILTERS[method]
    in_f = tf.cast(in_size, tf.float64)
    scale = in_f / tf.cast(out_size, tf.float64)
    filterscale = tf.maximum(scale, 1.0)
    support = support * filterscale
    center = (tf.range(tf.cast(out_size, tf.float64)) + 0.5) * scale
    xmin = tf.maximum(tf.floor(center - support + 0.5), 0.0)[:, None]
    xmax = tf.minimum(tf.floor(center + support + 0.5), in_f)[:, None]
    source = tf.range(in_f)[None, :]
    weights = kernel((source - center[:, None] + 0.5) * (1.0 / filterscale))
    weights = tf.where((source >= xmin) & (source < xmax), weights, tf.zeros_like(weights))
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    weights = weights / tf.where(total == 0.0, tf.ones_like(total), total)
    return tf.sign(weights) * tf.floor(tf.abs(weights) * 2.0**_PRECISION_BITS + 0.5)


def _fixed_point_pass(images, coefficients, equation):
    """One Pillow pass: uint8 levels (float32) x fixed-point matrix, rounded, clipped.

    The matrix is split into hi * 2**8 + lo so that every partial sum of either product
    is an integer below 2**24 (|hi| sums to about 2**14, lo < 2**8 over at most 257 taps),
    hence exact in float32; the sum and the shift are done in int32 as Pillow does."""
    low = tf.math.floormod(coefficients, 2.0**_LOW_BITS)
    high = (coefficients - low) / 2.0**_LOW_BITS
    parts = [tf.einsum(equation, images, tf.cast(m, tf.float32)) for m in (high, low)]
    high_sum, low_sum = (tf.cast(p, tf.int32) for p in parts)
    total = high_sum * (1 << _LOW_BITS) + low_sum + (1 << (_PRECISION_BITS - 1))
    levels = tf.bitwise.right_shift(total, _PRECISION_BITS)
    return tf.cast(tf.clip_by_value(levels, 0, 255), tf.float32)


def pil_resize(images, size, method):
    """Pillow's `Image.resize((width, height), resample)` of uint8 RGB images.

    `images`: (..., H, W, C) whole levels in [0, 255] (any dtype); `size`: (height,
    width), ints or int32 tensors; `method`: "bicubic" or "bilinear". Returns the
    resized levels as float32 (whole numbers in [0, 255])."""
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    in_height, in_width = shape[-3], shape[-2]
    height, width = size
    horizontal = pil_coefficients(in_width, width, method)
    vertical = pil_coefficients(in_height, height, method)

    def along_width(x):
        return _fixed_point_pass(x, horizontal, "...hwc,ow->...hoc")

    def along_height(x):
        return _fixed_point_pass(x, vertical, "...hwc,oh->...owc")

    shrink = in_height - height
    vertical_first = (shrink > 0) & (shrink > 2 * (in_width - width))
    return tf.cond(
        vertical_first,
        lambda: along_width(along_height(images)),
        lambda: along_height(along_width(images)),
    )


def to_uint8_levels(images):
    """What Hugging Face's PIL conversion keeps of an image: uint8 levels. Integer
    images are taken as they are, float images in [0, 255] are truncated (numpy
    `astype(uint8)` in `to_pil_image`). Returns float32 whole numbers."""
    if images.dtype.is_floating:
        images = tf.floor(tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0))
    return tf.cast(images, tf.float32)
