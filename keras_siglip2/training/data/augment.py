"""Image decoding and the training views of the SigLIP 2 recipe, as `tf.data` ops:

- the original image, resized to the model resolution (sigmoid loss sec. 2.1, LocCa
  sec. 2.2, and the EMA teacher's global view for SILC, sec. 2.3);
- local crops for the SILC student (sec. 2.3; SILC / DINO random resized crops covering
  5-40 % of the image area) and the teacher's augmented global view (`teacher_view`:
  a 40-100 % random resized crop, flip and DINO colour jitter);
- the random patch mask of TIPS masked prediction (sec. 2.3: 50 % of the patches);
- NaFlex patches (sec. 2.4.2), through `SigLIP2NaFlexImageConverter`.

Every random choice is stateless: it is a function of a per-example seed (the pipeline
derives it from its `seed` and the example's position in the stream), so a run is
reproducible and a resumed run draws the same crops and masks.

Images are checked before decoding (`image_integrity_status`): an image whose bytes are
not a complete JPEG / PNG / GIF / BMP / WebP file (a truncated download, an HTML error
page) is caught here without raising, so the pipeline can count and skip it.
"""

import tensorflow as tf

from keras_siglip2.training.data.report import CODES
from keras_siglip2.training.masking import num_masked

# (magic bytes at offset 0, format) for the formats tf.io.decode_image reads.
_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"
_TAIL = 32  # bytes searched for an end marker (encoders may pad after it)


def _tail_contains(data, marker):
    """True where the last _TAIL bytes of `data` (scalar string) contain `marker`."""
    n = tf.strings.length(data)
    start = tf.maximum(n - _TAIL, 0)
    # Padded to _TAIL bytes (with bytes no marker contains) so the windows stay in range.
    tail = tf.strings.join([b"\1" * _TAIL, tf.strings.substr(data, start, _TAIL)])
    tail = tf.strings.substr(tail, tf.strings.length(tail) - _TAIL, _TAIL)
    k = len(marker)
    positions = tf.range(_TAIL - k + 1)
    windows = tf.strings.substr(
        tf.fill([_TAIL - k + 1], tail), positions, tf.fill([_TAIL - k + 1], k)
    )
    return tf.reduce_any(tf.equal(windows, marker))


def image_integrity_status(data):
    """0 if the encoded image `data` (scalar string) looks complete, else the
    `corrupt_image` (or, for empty bytes, `missing_image`) reason code.

    Checks, without decoding: a known signature (JPEG, PNG, GIF, BMP, WebP) and, for
    JPEG / PNG / GIF, the end marker (EOI, IEND, trailer) near the end, which catches
    truncated files. Damage in the middle of a file is found only by decoding."""
    n = tf.strings.length(data)
    # Padded so that every substr below stays in range, whatever the length.
    head = tf.strings.join([tf.strings.substr(data, 0, 12), b"\0" * 12])
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), _JPEG)
    is_png = tf.equal(tf.strings.substr(head, 0, 8), _PNG)
    is_gif = tf.logical_or(tf.equal(tf.strings.substr(head, 0, 6), b"GIF87a"),
                           tf.equal(tf.strings.substr(head, 0, 6), b"GIF89a"))
    is_bmp = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 2), b"BM"), n > 26)
    is_webp = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 4), b"RIFF"),
                             tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))
    complete = tf.case(
        [
            (is_jpeg, lambda: _tail_contains(data, b"\xff\xd9")),
            (is_png, lambda: _tail_contains(data, b"IEND")),
            (is_gif, lambda: tf.equal(tf.strings.substr(data, tf.maximum(n - 1, 0), 1), b";")),
        ],
        default=lambda: tf.logical_or(is_bmp, is_webp),
    )
    status = tf.where(complete, 0, CODES["corrupt_image"])
    return tf.cast(tf.where(n == 0, CODES["missing_image"], status), tf.int32)


def decode_image(data):
    """Encoded bytes -> uint8 (H, W, 3) (gray / RGBA converted to RGB, first frame of an
    animation). Raises on undecodable bytes (the pipeline catches it)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    return tf.ensure_shape(image, [None, None, 3])


def fold_seed(seed, salt):
    """A new stateless seed (shape [2], int64) from `seed` and an int `salt`."""
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), salt)


def crop_boxes(seed, height, width, num_crops, scale=(0.05, 0.4), ratio=(3 / 4, 4 / 3)):
    """Random resized crop windows (Inception / DINO style): each covers a fraction of
    the image area drawn uniformly from `scale`, with a log-uniform aspect ratio in
    `ratio`, clipped to the image, at a uniform position. Returns int32 (num_crops, 4)
    (top, left, crop_height, crop_width)."""
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    draws = tf.random.stateless_uniform([num_crops, 4], seed=seed)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * draws[:, 0])
    log_lo, log_hi = tf.math.log(float(ratio[0])), tf.math.log(float(ratio[1]))
    aspect = tf.exp(log_lo + (log_hi - log_lo) * draws[:, 1])  # width / height
    ch = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, h)
    cw = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, w)
    top = tf.floor(draws[:, 2] * (h - ch + 1.0))
    left = tf.floor(draws[:, 3] * (w - cw + 1.0))
    top = tf.minimum(top, h - ch)
    left = tf.minimum(left, w - cw)
    return tf.cast(tf.stack([top, left, ch, cw], axis=-1), tf.int32)


def local_crops(image, seed, num_crops, size, scale=(0.05, 0.4), ratio=(3 / 4, 4 / 3),
                flip=True):
    """SILC local views of one uint8 (H, W, 3) image: `num_crops` random resized crops
    (`crop_boxes`) of `size` (height, width), each flipped left-right with probability
    1/2 when `flip`. Returns float32 (num_crops, height, width, 3) in [0, 255].

    To resample well and fast, the image is first downscaled (antialiased) until a crop
    of the largest area fraction is about `size`, so every crop is then taken with one
    bilinear `crop_and_resize` that at most slightly downsamples (no aliasing)."""
    height, width = size
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    largest_side = tf.sqrt(float(scale[1]) * shape[0] * shape[1])
    factor = tf.minimum(1.0, float(max(height, width)) / largest_side)
    small = tf.cast(tf.maximum(tf.round(shape * factor), 1.0), tf.int32)
    image = tf.cond(
        factor < 1.0,
        lambda: tf.image.resize(tf.cast(image, tf.float32), small, antialias=True),
        lambda: tf.cast(image, tf.float32),
    )
    boxes = tf.cast(
        crop_boxes(fold_seed(seed, 0), small[0], small[1], num_crops, scale, ratio), tf.float32
    )
    top, left, ch, cw = tf.unstack(boxes, axis=-1)
    h, w = tf.cast(small[0], tf.float32), tf.cast(small[1], tf.float32)
    # crop_and_resize samples output row i at y1 * (h - 1) + i * (y2 - y1) * (h - 1) /
    # (height - 1) in pixel-index coordinates: put the first and last samples at the
    # centres of the first and last output pixels of the crop window. A box with
    # x1 > x2 is sampled mirrored, which gives the flip.
    def corners(start, extent, out, side):
        first = start + 0.5 * extent / out - 0.5
        last = start + extent - 0.5 * extent / out - 0.5
        denominator = tf.maximum(side - 1.0, 1.0)
        # Kept inside the image: crop_and_resize would fill samples outside it with 0.
        return (tf.clip_by_value(first / denominator, 0.0, 1.0),
                tf.clip_by_value(last / denominator, 0.0, 1.0))

    y1, y2 = corners(top, ch, float(height), h)
    x1, x2 = corners(left, cw, float(width), w)
    if flip:
        flips = tf.random.stateless_uniform([num_crops], seed=fold_seed(seed, 1)) < 0.5
        x1, x2 = tf.where(flips, x2, x1), tf.where(flips, x1, x2)
    crops = tf.image.crop_and_resize(
        image[None], tf.stack([y1, x1, y2, x2], axis=-1), tf.zeros([num_crops], tf.int32),
        (height, width), method="bilinear",
    )
    return tf.clip_by_value(crops, 0.0, 255.0)


def tips_mask(seed, num_patches, ratio=0.5):
    """TIPS patch mask: int32 (num_patches,), 1 at exactly round(ratio * num_patches)
    uniformly random positions (`training.masking.num_masked`)."""
    k = num_masked(num_patches, ratio)
    noise = tf.random.stateless_uniform([num_patches], seed=seed)
    ranks = tf.argsort(tf.argsort(noise))
    return tf.cast(ranks < k, tf.int32)


# SILC / DINO teacher view (Caron et al. 2021, DINO, `DataAugmentationDINO` in
# facebookresearch/dino main_dino.py; SILC, Naeem et al. 2023, follows it: global views
# cover 40-100 % of the image area, local views 5-40 %, at 224 px and 96 px).
TEACHER_CROP_SCALE = (0.4, 1.0)
COLOR_JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue (DINO)
JITTER_PROBABILITY = 0.8
GRAYSCALE_PROBABILITY = 0.2


def _gray(image):
    """Luma (ITU-R 601, as torchvision's grayscale) of float (..., 3) -> (..., 1)."""
    return tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def color_jitter(image, seed, strengths=COLOR_JITTER, probability=JITTER_PROBABILITY,
                 grayscale_probability=GRAYSCALE_PROBABILITY):
    """DINO's colour augmentation of a float (H, W, 3) image in [0, 1]: with
    `probability`, brightness, contrast and saturation factors drawn uniformly from
    [1 - s, 1 + s] and a hue shift from [-h, h] (`strengths` = (b, c, s, h)), applied in
    this fixed order (torchvision draws a random order per image); then grayscale with
    `grayscale_probability`. Stateless: a function of `seed`. Returns [0, 1] floats."""
    b, c, s, h = (float(x) for x in strengths)
    u = tf.random.stateless_uniform([6], seed=seed)
    brightness = 1.0 + b * (2.0 * u[0] - 1.0)
    contrast = 1.0 + c * (2.0 * u[1] - 1.0)
    saturation = 1.0 + s * (2.0 * u[2] - 1.0)
    hue = h * (2.0 * u[3] - 1.0)

    def jittered():
        x = tf.clip_by_value(image * brightness, 0.0, 1.0)
        mean = tf.reduce_mean(_gray(x))
        x = tf.clip_by_value((x - mean) * contrast + mean, 0.0, 1.0)
        gray = _gray(x)
        x = tf.clip_by_value((x - gray) * saturation + gray, 0.0, 1.0)
        return tf.clip_by_value(tf.image.adjust_hue(x, hue), 0.0, 1.0)

    image = tf.cond(u[4] < probability, jittered, lambda: image)
    return tf.cond(u[5] < grayscale_probability,
                   lambda: tf.repeat(_gray(image), 3, axis=-1), lambda: image)


def teacher_view(image, seed, size, scale=TEACHER_CROP_SCALE, flip=True,
                 jitter=COLOR_JITTER, jitter_probability=JITTER_PROBABILITY,
                 grayscale_probability=GRAYSCALE_PROBABILITY):
    """The SILC teacher's augmented global view of one uint8 (H, W, 3) image: a random
    resized crop of `size` covering a `scale` fraction of the area (`crop_boxes`),
    flipped left-right with probability 1/2 when `flip`, then `color_jitter` (None: no
    colour change). Returns float32 (height, width, 3) in [0, 255]."""
    crop = local_crops(image, fold_seed(seed, 0), 1, size, scale, flip=flip)[0]
    if jitter is None:
        return crop
    out = color_jitter(crop / 255.0, fold_seed(seed, 1), jitter, jitter_probability,
                       grayscale_probability)
    return out * 255.0


def silc_local_size(image_size, patch_size=16):
    """The SILC / DINO local-crop side for a global side: 96/224 of it (96 px at 224 px
    globals), rounded to a multiple of `patch_size` (at least one patch, at most the
    global side)."""
    return tuple(min(int(s), max(patch_size, int(round(s * 96 / 224 / patch_size)) * patch_size))
                 for s in image_size)
