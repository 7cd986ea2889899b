"""NaFlex image preprocessing (paper sec. 2.4; big_vision `ops_naflex.py`:
`value_range(-1, 1)`, `resize_to_sequence`, `patchify`, pad to the sequence length; or,
with `match="transformers"`, Hugging Face's `Siglip2ImageProcessorPil`).

Each image keeps (about) its aspect ratio: it is resized to the largest size whose sides
are multiples of the patch size and whose patch count is at most `max_num_patches`, then
cut into patches that are padded to exactly `max_num_patches`. The result is the three
inputs of `SigLIP2NaFlexVisionEncoder`.
"""

import keras
import numpy as np
import tensorflow as tf
from keras_hub.layers import ImageConverter
from keras_hub.src.utils.tensor_utils import convert_preprocessing_outputs, in_tf_function

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.preprocessing.image_converter import converter_from_preset
from keras_siglip2.preprocessing.resampling import check_match, pil_resize, to_uint8_levels

# The reference bisection (big_vision `resize_to_sequence`): the scale is searched in
# [_SEARCH_EPS / 10, _SEARCH_MAX_SCALE] until the bracket is narrower than _SEARCH_EPS,
# in float32. Kept identical so that every image gets exactly the reference size
# (including its upscaling limit of 100x for tiny images).
_SEARCH_EPS = 1e-5
_SEARCH_MAX_SCALE = 100.0


def _target_sides(image_hw, scale, patch_size):
    """Sides for one scale: ceil(hw * scale / p) * p, at least one patch each. int32 (2,)."""
    sides = tf.math.ceil(image_hw * scale / patch_size) * patch_size
    return tf.cast(tf.maximum(sides, tf.cast(patch_size, sides.dtype)), tf.int32)


def target_size_for_sequence(height, width, patch_size, max_num_patches, dtype=tf.float32):
    """(height, width) after `resize_to_sequence`: the largest scale s (by bisection, as
    the reference does) such that ceil(h*s/p) * ceil(w*s/p) <= max_num_patches, with
    each side rounded up to a multiple of p and at least p. Returns an int32 (2,) tensor.
    Works eagerly and inside tf.data / tf.function. `dtype`: of the bisection, float32
    as big_vision, float64 as Hugging Face's `get_image_size_for_max_num_patches`
    (Python floats), which differs for some sizes."""
    image_hw = tf.cast(tf.stack([height, width]), dtype)
    patch_size = int(patch_size)
    limit = tf.constant(int(max_num_patches), tf.int64)

    def fits(scale):
        grid = tf.cast(_target_sides(image_hw, scale, patch_size) // patch_size, tf.int64)
        return grid[0] * grid[1] <= limit

    def keep_going(low, high):
        return high - low >= _SEARCH_EPS

    def bisect(low, high):
        mid = (low + high) / 2.0
        return tf.cond(fits(mid), lambda: (mid, high), lambda: (low, mid))

    low, _ = tf.while_loop(
        keep_going,
        bisect,
        (tf.constant(_SEARCH_EPS / 10.0, dtype), tf.constant(_SEARCH_MAX_SCALE, dtype)),
        parallel_iterations=1,
    )
    return _target_sides(image_hw, low, patch_size)


def _check_max_num_patches(value):
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(
            f"`max_num_patches` must be an integer >= 1 (the padded sequence length); "
            f"got {value!r}."
        )
    return int(value)


def naflex_inputs_from_transformers(pixel_values, spatial_shapes, pixel_attention_mask):
    """The three NaFlex inputs from Hugging Face `Siglip2ImageProcessor` outputs.

    HF passes no positions: the first h * w entries of image b (its `spatial_shapes[b]`
    = (h, w)) are its patches in row-major order, the rest padding. Its patches are
    flattened in the same (py, px, c) order, with values in [-1, 1], so they are used
    as they are. Numpy / torch / any array in; numpy out (eager only).

    Args:
        pixel_values: (B, N, p * p * 3) float.
        spatial_shapes: (B, 2) int, each image's (h, w) patch grid.
        pixel_attention_mask: (B, N), 1 = real patch.

    Returns:
        {"pixel_patches", "patch_positions", "patch_mask"} as numpy arrays.
    """
    values = np.asarray(pixel_values, dtype=np.float32)
    shapes = np.asarray(spatial_shapes).astype(np.int64)
    mask = np.asarray(pixel_attention_mask).astype(np.int32)
    if values.ndim != 3 or mask.shape != values.shape[:2] or shapes.shape != (mask.shape[0], 2):
        raise ValueError(
            "Expected `pixel_values` (B, N, D), `spatial_shapes` (B, 2) and "
            f"`pixel_attention_mask` (B, N); got shapes {values.shape}, {shapes.shape}, "
            f"{mask.shape}."
        )
    length = mask.shape[1]
    if (shapes < 1).any() or (shapes.prod(-1) > length).any():
        raise ValueError(
            f"`spatial_shapes` must hold (h, w) >= 1 with h * w <= N = {length}; got "
            f"{shapes.tolist()}."
        )
    index = np.arange(length)
    real = index[None, :] < shapes.prod(-1)[:, None]
    if not np.array_equal(mask.astype(bool), real):
        raise ValueError(
            "`pixel_attention_mask` must mark exactly the first h * w entries of each "
            f"image (h, w = its `spatial_shapes` {shapes.tolist()}) as real patches; got "
            f"{mask.sum(-1).tolist()} real patches per image."
        )
    width = shapes[:, 1:2]
    positions = np.stack([index // width, index % width], -1) * real[..., None]
    return {
        "pixel_patches": values,
        "patch_positions": positions.astype(np.int32),
        "patch_mask": real.astype(np.int32),
    }


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2NaFlexImageConverter(ImageConverter):
    """Aspect-preserving resize to a patch budget, patchify and pad (SigLIP 2 NaFlex).

    Steps per image with `match="big_vision"` (default; big_vision's NaFlex
    preprocessing `value_range(-1, 1)|resize_to_sequence(p, N)|patchify(p)`): map
    [0, 255] to [-1, 1] (in float, so nothing is rounded to uint8 levels); find by
    bisection (float32) the largest scale s with ceil(h*s/p) * ceil(w*s/p) <=
    max_num_patches (each side a multiple of p, at least one patch); resize to it with
    antialiased bilinear interpolation (`tf.image.resize(..., antialias=True)`, as
    `resize_to_sequence` does); cut into p x p patches flattened in (py, px, c) order,
    row-major; pad to `max_num_patches`. Measured on real photos: equal to big_vision's
    patches to float32 rounding (maximum difference below 1e-6).

    With `match="transformers"` (Hugging Face's `Siglip2ImageProcessorPil`, the PIL
    backend of `Siglip2ImageProcessor`): the same bisection in float64 (HF's Python
    floats), the image taken as uint8 levels (float input truncated) and resized by
    Pillow's antialiased bilinear filter (re-implemented bit-exactly in TensorFlow ops,
    `resampling.pil_resize`), then mapped to [-1, 1]. Measured: exactly HF's patches on
    the fixture and scikit-image photos and on 1 x 600 / 600 x 1 / 7 x 11 images. HF's
    torchvision backend resizes with torchvision's antialiased bilinear instead and
    differs from its PIL backend by up to several uint8 levels (see README).

    Args:
        patch_size: int, 16 for the released NaFlex checkpoints.
        max_num_patches: int >= 1, the output sequence length (released NaFlex models
            were trained with 128 to 1024; 256 is the default).
        match: `"big_vision"` (default) or `"transformers"`: the reference
            preprocessing to reproduce (above).

    Call with one image (H, W, C), a batch (B, H, W, C), a list of images of different
    sizes, or (in tf.data) a tf.RaggedTensor batch; pixel values in [0, 255] (uint8 or
    float). 1-channel (grayscale) and 2-channel (grayscale + alpha) images are expanded
    to RGB, 4-channel (RGBA) images lose their alpha channel. `max_num_patches=` may be
    given per call (e.g. a different sequence length per training batch).

    Returns a dict: `pixel_patches` (.., N, p*p*3) float32 in [-1, 1], `patch_positions`
    (.., N, 2) int32 (row, col), `patch_mask` (.., N) int32 (1 = real patch); with a
    leading batch axis unless a single (H, W, C) image was given. Padding entries are
    zeros at the end.

    Example:
    ```python
    converter = SigLIP2NaFlexImageConverter(patch_size=16, max_num_patches=256)
    inputs = converter([np.zeros((480, 640, 3), "uint8"), np.zeros((100, 50, 3), "uint8")])
    inputs["pixel_patches"].shape  # (2, 256, 768)
    ```
    """

    backbone_cls = SigLIP2Backbone

    def __init__(self, patch_size=16, max_num_patches=256, match="big_vision", **kwargs):
        match = check_match(match)
        for key in ("image_size", "scale", "offset", "interpolation", "antialias",
                    "crop_to_aspect_ratio", "pad_to_aspect_ratio", "bounding_box_format"):
            kwargs.pop(key, None)  # fixed by the NaFlex recipe
        super().__init__(image_size=None, **kwargs)
        if isinstance(patch_size, bool) or int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f"`patch_size` must be an integer >= 1; got {patch_size!r}.")
        self.patch_size = int(patch_size)
        self.max_num_patches = _check_max_num_patches(max_num_patches)
        self.match = match

    @property
    def patch_dim(self):
        return self.patch_size * self.patch_size * 3

    # ---------------------------------------------------------------- one image (TF ops)
    def _to_rgb(self, image):
        channels = tf.shape(image)[-1]
        checks = [
            tf.debugging.assert_less_equal(
                channels, 4,
                message="SigLIP2NaFlexImageConverter: images must have 1 (gray), 2 (gray + "
                "alpha), 3 (RGB) or 4 (RGBA) channels.",
            ),
            tf.debugging.assert_greater(
                tf.shape(image)[0] * tf.shape(image)[1], 1,
                message="SigLIP2NaFlexImageConverter: the image is empty or a single "
                "pixel; it needs at least 2 pixels.",
            ),
        ]
        with tf.control_dependencies(checks):
            index = tf.where(channels < 3, tf.constant([0, 0, 0]), tf.constant([0, 1, 2]))
            return tf.gather(image, index, axis=-1)

    def _convert_one(self, image, max_num_patches):
        if isinstance(image, tf.RaggedTensor):
            image = image.to_tensor()
        image = self._to_rgb(image)
        shape = tf.shape(image)
        if self.match == "transformers":
            sides = target_size_for_sequence(
                shape[0], shape[1], self.patch_size, max_num_patches, tf.float64
            )
            image = pil_resize(to_uint8_levels(image), (sides[0], sides[1]), "bilinear")
            # HF's rescale + normalize: (x / 255 - 0.5) / 0.5.
            image = (image / 255.0 - 0.5) / 0.5
        else:
            sides = target_size_for_sequence(
                shape[0], shape[1], self.patch_size, max_num_patches
            )
            # value_range(-1, 1) as big_vision: x / 255 * 2 - 1, in float32.
            image = tf.cast(image, tf.float32) / 255.0 * 2.0 - 1.0
            image = tf.image.resize(image, sides, method="bilinear", antialias=True)
        p = self.patch_size
        rows, cols = sides[0] // p, sides[1] // p
        patches = tf.reshape(image, (rows, p, cols, p, 3))
        patches = tf.reshape(tf.transpose(patches, (0, 2, 1, 3, 4)), (rows * cols, self.patch_dim))
        grid_r, grid_c = tf.meshgrid(tf.range(rows), tf.range(cols), indexing="ij")
        positions = tf.stack([tf.reshape(grid_r, [-1]), tf.reshape(grid_c, [-1])], axis=-1)
        pad = max_num_patches - rows * cols
        patches = tf.pad(patches, [[0, pad], [0, 0]])
        positions = tf.pad(positions, [[0, pad], [0, 0]])
        mask = tf.pad(tf.ones([rows * cols], tf.int32), [[0, pad]])
        return {
            "pixel_patches": tf.ensure_shape(patches, (max_num_patches, self.patch_dim)),
            "patch_positions": tf.ensure_shape(tf.cast(positions, tf.int32), (max_num_patches, 2)),
            "patch_mask": tf.ensure_shape(mask, (max_num_patches,)),
        }

    def _output_signature(self, max_num_patches):
        return {
            "pixel_patches": tf.TensorSpec((max_num_patches, self.patch_dim), tf.float32),
            "patch_positions": tf.TensorSpec((max_num_patches, 2), tf.int32),
            "patch_mask": tf.TensorSpec((max_num_patches,), tf.int32),
        }

    # ---------------------------------------------------------------- eager checks
    @staticmethod
    def _check_image(image, where):
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(
                f"SigLIP2NaFlexImageConverter: {where} must be an image (H, W, C); got shape "
                f"{image.shape}."
            )
        if image.dtype.kind not in "uif":
            raise ValueError(
                f"SigLIP2NaFlexImageConverter: {where} must hold numbers (uint8 or float "
                f"pixel values in [0, 255]); got dtype {image.dtype}."
            )
        h, w, c = image.shape
        if h * w == 0:
            raise ValueError(
                f"SigLIP2NaFlexImageConverter: {where} is empty (shape {image.shape})."
            )
        if h * w == 1:
            raise ValueError(
                f"SigLIP2NaFlexImageConverter: {where} is a single pixel (shape "
                f"{image.shape}); it needs at least 2 pixels."
            )
        if c not in (1, 2, 3, 4):
            raise ValueError(
                f"SigLIP2NaFlexImageConverter: {where} has {c} channels (shape "
                f"{image.shape}); expected 3 (RGB), or 1 / 2 / 4 (gray, gray + alpha, "
                "RGBA), which are converted to RGB."
            )
        if image.dtype.kind == "f":
            if not np.all(np.isfinite(image)):
                raise ValueError(f"SigLIP2NaFlexImageConverter: {where} has NaN or inf pixels.")
            lo, hi = float(image.min()), float(image.max())
            if lo < 0.0 or hi > 255.0:
                raise ValueError(
                    f"SigLIP2NaFlexImageConverter: {where} has pixel values in [{lo:g}, "
                    f"{hi:g}]; expected raw pixels in [0, 255] (the converter maps them "
                    "to [-1, 1] itself)."
                )
        return image

    # ---------------------------------------------------------------- entry points
    def call(self, inputs, max_num_patches=None):
        n = self.max_num_patches if max_num_patches is None else _check_max_num_patches(
            max_num_patches
        )
        if in_tf_function():
            return self._call_graph(inputs, n)
        return self._call_eager(inputs, n)

    def _call_graph(self, inputs, n):
        if isinstance(inputs, (list, tuple)):
            outs = [self._convert_one(tf.convert_to_tensor(x), n) for x in inputs]
            return {k: tf.stack([o[k] for o in outs]) for k in outs[0]}
        if not isinstance(inputs, tf.RaggedTensor):
            inputs = tf.convert_to_tensor(inputs)
        rank = inputs.shape.rank
        if rank == 3:
            return self._convert_one(inputs, n)
        if rank == 4:
            return tf.map_fn(
                lambda image: self._convert_one(image, n),
                inputs,
                fn_output_signature=self._output_signature(n),
            )
        raise ValueError(
            "SigLIP2NaFlexImageConverter expects an image (H, W, C) or a batch (B, H, W, C); "
            f"got a tensor of rank {rank} (shape {inputs.shape})."
        )

    def _call_eager(self, inputs, n):
        if isinstance(inputs, tf.RaggedTensor):
            images = [x.numpy() if hasattr(x, "numpy") else x for x in
                      (inputs[i].to_tensor() for i in range(int(inputs.nrows())))]
            batched = True
        elif isinstance(inputs, (list, tuple)):
            if not inputs:
                raise ValueError("SigLIP2NaFlexImageConverter got an empty list of images.")
            images, batched = list(inputs), True
        else:
            array = keras.ops.convert_to_numpy(inputs) if keras.ops.is_tensor(inputs) else (
                np.asarray(inputs)
            )
            if array.ndim == 3:
                images, batched = [array], False
            elif array.ndim == 4:
                images, batched = list(array), True
            else:
                raise ValueError(
                    "SigLIP2NaFlexImageConverter expects an image (H, W, C), a batch (B, H, "
                    f"W, C) or a list of images; got shape {array.shape}."
                )
        converted = []
        with tf.device("cpu"):
            for i, image in enumerate(images):
                if keras.ops.is_tensor(image) and not isinstance(image, tf.Tensor):
                    image = keras.ops.convert_to_numpy(image)
                image = self._check_image(image, f"image {i}" if batched else "the image")
                converted.append(self._convert_one(tf.convert_to_tensor(image), n))
            if batched:
                out = {k: tf.stack([c[k] for c in converted]) for k in converted[0]}
            else:
                out = converted[0]
        return convert_preprocessing_outputs(out)

    @classmethod
    def from_preset(cls, preset, match=None, **kwargs):
        """Loads the converter of a preset (see `SigLIP2ImageConverter.from_preset`);
        `match`: None (the recorded mode) or the mode to use instead."""

        return converter_from_preset(cls, preset, match, **kwargs)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(
            {"patch_size": self.patch_size, "max_num_patches": self.max_num_patches,
             "match": self.match}
        )
        return config
