"""SigLIP 2 fixed-resolution image converter (paper sec. 2.1 / 2.4: the fixed
resolution variants, e.g. 224, 256, 384, 512 px): big_vision's
`resize(RES)|value_range(-1, 1)` evaluation pipeline, i.e. an antialiased bilinear
resize to the preset's square resolution and the map [0, 255] -> [-1, 1]."""

import keras
import numpy as np
from keras_hub.layers import ImageConverter

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.preprocessing.tokenizer import (
    deserialize_component,
    resolve_preset,
    standalone_component_config,
)

from keras_hub.src.utils.tensor_utils import preprocessing_function

try:
    import tensorflow as tf
except ImportError:  # The eager path below works without TensorFlow.
    tf = None

try:
    from keras.src.utils.backend_utils import in_grain_data_pipeline
except ImportError:  # Older Keras: no Grain integration.

    def in_grain_data_pipeline():
        return False

IMAGE_CONVERTER_CONFIG_FILE = "image_converter.json"


def standardize_image_size(image_size, name="image_size"):
    """`image_size` as an (height, width) tuple of positive ints, or None."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        height, width = (int(v) for v in image_size)
        valid = all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
            for v in image_size
        )
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            f"`{name}` must be a positive int or a (height, width) pair of positive "
            f"ints (e.g. 224 or (224, 224)); got {name}={image_size!r}."
        )
    return (height, width)


def _shape_error(shape, problem):
    return ValueError(
        f"`images` {problem}; got shape {tuple(shape)}. Expected one image "
        "(height, width, channels) or a batch (batch, height, width, channels), "
        "channels last, with 1 (grayscale), 2 (grayscale + alpha), 3 (RGB) or 4 "
        "(RGBA) channels and pixel values in [0, 255]."
    )


def _check_static_shape(shape):
    """Checks what is statically known about an image (batch) shape."""
    if len(shape) not in (3, 4):
        raise _shape_error(shape, f"has rank {len(shape)}")
    channels = shape[-1]
    if channels is not None and channels not in (1, 2, 3, 4):
        raise _shape_error(shape, f"has {channels} channels in the last axis")
    if any(side == 0 for side in shape[-3:-1]):
        raise _shape_error(shape, "has zero height or width")


def _to_rgb(images, channels, concatenate):
    """1 / 2 channels -> repeat the gray level; 4 -> drop alpha; 3 -> unchanged."""
    if channels in (1, 2):
        return concatenate([images[..., :1]] * 3, axis=-1)
    if channels == 4:
        return images[..., :3]
    return images


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2ImageConverter(ImageConverter):
    """Resizes raw images to the model resolution and maps [0, 255] to [-1, 1].

    The steps follow big_vision's SigLIP 2 preprocessing
    `resize(size)|value_range(-1, 1)`:

    1. Cast to float32. Grayscale images (1 channel) and grayscale + alpha (2
       channels) are converted to RGB by repeating the gray level; RGBA images (4
       channels) are converted to RGB by dropping the alpha channel (as
       `PIL.Image.convert("RGB")` does; pixels under transparency keep their stored
       color). Any other channel count is an error.
    2. Resize to `image_size` with antialiased bilinear interpolation
       (`tf.image.resize(..., antialias=True)`; `keras.ops.image.resize` eagerly,
       which agrees to about 1e-4 on the [0, 255] scale). The aspect ratio is not
       preserved, as in big_vision, unless `crop_to_aspect_ratio` or
       `pad_to_aspect_ratio` is set. The resize is done in float, so a uint8 image
       and the same pixels as float give the same result (big_vision, resizing a
       uint8 image, truncates the resized values back to uint8 first: a difference
       below 1/127.5).
    3. `x * scale + offset` with `scale = 1 / 127.5`, `offset = -1`.

    Input: one image `(H, W, C)` or a batch `(B, H, W, C)`, uint8 or float with
    values in [0, 255] (not [0, 1]), channels last; eagerly also a list of images of
    different sizes (resized one by one, then stacked) or PIL images. Output:
    float32 `(image_size[0], image_size[1], 3)` per image in [-1, 1]. Runs eagerly
    (backend ops) and inside `tf.data` (TensorFlow ops) with the same result.

    Args:
        image_size: int or (height, width). The model resolution, e.g. 224 for
            `siglip2_base_patch16_224`. None skips the resize.
        scale, offset: the affine value map; defaults give [0, 255] -> [-1, 1].
        interpolation: resize method, `"bilinear"` as in big_vision.
        antialias: bool, True: antialias when downsampling (`resize` in big_vision
            takes `antialias` as a flag).
        crop_to_aspect_ratio, pad_to_aspect_ratio: bool, False. Center-crop / pad
            to the target aspect ratio before resizing (keras `Resizing`
            semantics) instead of stretching.

    Example:
    ```python
    converter = keras_siglip2.preprocessing.SigLIP2ImageConverter(image_size=224)
    converter(np.random.randint(0, 256, (2, 480, 640, 3), dtype="uint8"))  # (2, 224, 224, 3)
    ds = ds.map(lambda x: {**x, "images": converter(x["images"])})
    ```
    """

    backbone_cls = SigLIP2Backbone

    def __init__(
        self,
        image_size=(224, 224),
        scale=1.0 / 127.5,
        offset=-1.0,
        interpolation="bilinear",
        antialias=True,
        crop_to_aspect_ratio=False,
        pad_to_aspect_ratio=False,
        data_format="channels_last",
        **kwargs,
    ):
        if data_format not in (None, "channels_last"):
            raise ValueError(
                "SigLIP2ImageConverter works on channels-last images (B, H, W, C); "
                f"got data_format={data_format!r}. Transpose the images instead."
            )
        super().__init__(
            image_size=standardize_image_size(image_size),
            scale=scale,
            offset=offset,
            crop_to_aspect_ratio=crop_to_aspect_ratio,
            pad_to_aspect_ratio=pad_to_aspect_ratio,
            interpolation=interpolation,
            antialias=antialias,
            data_format="channels_last",
            **kwargs,
        )

    @property
    def image_size(self):
        """(height, width) of the output, or None (no resize). Settable."""
        return ImageConverter.image_size.fget(self)

    @image_size.setter
    def image_size(self, value):
        ImageConverter.image_size.fset(self, standardize_image_size(value))

    # --- Call ----------------------------------------------------------------------

    def call(self, inputs):
        if self._use_tf_workflow():
            return self._call_tf(inputs)
        return self._call_python(inputs)

    def _value_map(self, images):
        """[0, 255] float32 -> scale / offset (float32), then the compute dtype."""
        if self.scale is not None:
            images = images * np.asarray(self.scale, dtype="float32")
        if self.offset is not None:
            images = images + np.asarray(self.offset, dtype="float32")
        return images

    def _resize_python(self, images):
        if self.image_size is None:
            return images
        if self.crop_to_aspect_ratio or self.pad_to_aspect_ratio:
            return self.resizing(images)
        return keras.ops.image.resize(
            images,
            self.image_size,
            interpolation=self.interpolation,
            antialias=self.antialias,
            data_format="channels_last",
        )

    def _call_python(self, inputs):
        images = self._canonicalize_python(inputs)
        if isinstance(images, list):  # Images of different sizes: one at a time.
            outputs = [self._call_python(image) for image in images]
            if self.image_size is None:
                return outputs
            return keras.ops.stack(outputs, axis=0)
        shape = tuple(images.shape)
        _check_static_shape(shape)
        if isinstance(images, np.ndarray):
            images = _to_rgb(images.astype("float32", copy=False), shape[-1], np.concatenate)
            images = keras.ops.convert_to_tensor(images)
        else:
            images = keras.ops.cast(images, "float32")
            images = _to_rgb(images, shape[-1], keras.ops.concatenate)
        images = self._value_map(self._resize_python(images))
        images = keras.ops.cast(images, self.compute_dtype)
        if in_grain_data_pipeline():  # Grain pickles outputs: return NumPy.
            return keras.ops.convert_to_numpy(images)
        return images

    def _canonicalize_python(self, inputs):
        """An array / backend tensor, or a list of them when sizes differ."""
        if isinstance(inputs, dict):
            raise ValueError(
                "`images` must be an image array; got a dict with keys "
                f"{sorted(inputs)}. SigLIP2ImageConverter does not transform "
                "bounding boxes."
            )
        if tf is not None and isinstance(inputs, tf.Tensor):
            inputs = inputs.numpy()
        if hasattr(inputs, "__array_interface__") and not isinstance(inputs, np.ndarray):
            inputs = np.asarray(inputs)  # PIL images and other array-likes.
        if isinstance(inputs, (list, tuple)):
            if len(inputs) == 0:
                raise ValueError("`images` is an empty list; expected at least one image.")
            items = [
                np.asarray(x) if not keras.ops.is_tensor(x) else keras.ops.convert_to_numpy(x)
                for x in inputs
            ]
            if all(x.shape == items[0].shape for x in items):
                inputs = np.stack(items, axis=0)
            else:
                for x in items:
                    if x.ndim != 3:
                        raise _shape_error(
                            x.shape, "is a list whose items are not all single images"
                        )
                return items
        if isinstance(inputs, np.ndarray):
            if inputs.dtype.kind not in ("u", "i", "f"):
                kind = "strings" if inputs.dtype.kind in ("U", "S") else "values"
                raise ValueError(
                    f"`images` must hold numeric pixel values in [0, 255]; got {kind} "
                    f"(dtype {inputs.dtype}). Decode encoded images first."
                )
            return inputs
        if keras.ops.is_tensor(inputs):
            return inputs
        raise ValueError(
            "`images` must be an image array (NumPy, backend or tf tensor, PIL image) "
            f"or a list of them; got {type(inputs).__name__}."
        )

    @preprocessing_function
    def _call_tf(self, inputs):
        if tf is None:
            raise ImportError("Running SigLIP2ImageConverter in tf.data needs TensorFlow.")
        if isinstance(inputs, dict):
            raise ValueError(
                "`images` must be an image tensor; got a dict with keys "
                f"{sorted(inputs)}. SigLIP2ImageConverter does not transform "
                "bounding boxes."
            )
        images = tf.convert_to_tensor(inputs)
        if images.dtype == tf.string:
            raise ValueError(
                "`images` is a string tensor: decode it first "
                "(e.g. `tf.io.decode_image(x, channels=3, expand_animations=False)`)."
            )
        if isinstance(images, tf.RaggedTensor):
            raise ValueError(
                "`images` is ragged: map the converter over single images, before "
                "batching."
            )
        if images.shape.rank is None:
            raise ValueError(
                "`images` has unknown rank; set it with `tf.ensure_shape` (e.g. "
                "[None, None, 3] for one image)."
            )
        shape = images.shape.as_list()
        _check_static_shape(shape)
        images = tf.cast(images, tf.float32)
        channels = shape[-1]
        dynamic = tf.shape(images)
        checks = [
            tf.debugging.assert_positive(
                dynamic[-3:-1],
                message="`images` has zero height or width; expected [0, 255] images "
                "of shape (height, width, channels) or (batch, height, width, "
                "channels).",
            )
        ]
        if channels is None:
            message = "`images` must have 1, 2, 3 or 4 channels (channels last)."
            checks.append(tf.debugging.assert_less_equal(dynamic[-1], 4, message=message))
            checks.append(tf.debugging.assert_positive(dynamic[-1], message=message))
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        if channels is None:
            images = tf.cond(
                dynamic[-1] < 3,
                lambda: tf.concat([images[..., :1]] * 3, axis=-1),
                lambda: images[..., :3],
            )
        else:
            images = _to_rgb(images, channels, tf.concat)
        if self.image_size is not None:
            if self.crop_to_aspect_ratio or self.pad_to_aspect_ratio:
                images = self.resizing(images)
            else:
                images = tf.image.resize(
                    images,
                    self.image_size,
                    method=self.interpolation,
                    antialias=self.antialias,
                )
        images = self._value_map(images)
        return tf.cast(images, self.compute_dtype)

    # --- Presets -------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Loads the image converter of a preset: a keras-siglip2 preset name, a
        local preset directory (also one holding only `image_converter.json`, as
        written by `converter.save_to_preset`), or a `kaggle://` / `hf://` / `gs://`
        handle."""
        config = standalone_component_config(preset, IMAGE_CONVERTER_CONFIG_FILE)
        if config is not None:
            return deserialize_component(
                ImageConverter, config, preset, IMAGE_CONVERTER_CONFIG_FILE, **kwargs
            )
        return super().from_preset(resolve_preset(preset), **kwargs)
