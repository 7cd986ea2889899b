"""SigLIP 2 fixed-resolution image converter (paper sec. 2.1 / 2.4: the fixed
resolution variants, e.g. 224, 256, 384, 512 px). By default big_vision's evaluation
pipeline `resize(RES)|value_range(-1, 1)` (the SigLIP 2 demo colab's): a bilinear resize
without antialiasing (`tf.image.resize`, big_vision's default `antialias=False`), cast
back to the input dtype (uint8: whole levels), then [0, 255] -> [-1, 1];
`match="transformers"` reproduces Hugging Face's `SiglipImageProcessorPil` instead."""

import keras
import numpy as np
import tensorflow as tf
from keras_hub.layers import ImageConverter

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.preprocessing.resampling import (
    MATCH_MODES,
    big_vision_resize,
    cast_back,
    check_match,
    pil_resize,
    to_uint8_levels,
)
from keras_siglip2.preprocessing.tokenizer import (
    deserialize_component,
    resolve_preset,
    standalone_component_config,
)

from keras_hub.src.utils.preset_utils import check_file_exists, get_file, load_json
from keras_hub.src.utils.tensor_utils import in_tf_function, preprocessing_function

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


# What each mode resizes with when `interpolation` / `antialias` are left as None.
_MODE_RESIZE = {"big_vision": ("bilinear", False), "transformers": ("bicubic", True)}


def _resize_settings(match, interpolation, antialias, crop_or_pad):
    """(interpolation, antialias) for a mode; the transformers mode fixes both."""
    default_interpolation, default_antialias = _MODE_RESIZE[match]
    interpolation = default_interpolation if interpolation is None else interpolation
    antialias = default_antialias if antialias is None else bool(antialias)
    if match == "transformers" and (
        (interpolation, antialias) != _MODE_RESIZE[match] or crop_or_pad
    ):
        raise ValueError(
            "match='transformers' reproduces SiglipImageProcessorPil (Pillow's "
            "antialiased bicubic resize to the full image size): leave `interpolation` "
            "/ `antialias` unset (or 'bicubic' / True) and `crop_to_aspect_ratio` / "
            f"`pad_to_aspect_ratio` False; got interpolation={interpolation!r}, "
            f"antialias={antialias!r}. Use match='big_vision' for other resizes."
        )
    return interpolation, antialias


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2ImageConverter(ImageConverter):
    """Resizes raw images to the model resolution and maps [0, 255] to [-1, 1].

    `match="big_vision"` (default) reproduces big_vision's SigLIP 2 fixed-resolution
    pipeline `resize(size)|value_range(-1, 1)` (the demo colab's, for every released
    fixed-resolution checkpoint):

    1. Grayscale images (1 channel) and grayscale + alpha (2 channels) are converted to
       RGB by repeating the gray level; RGBA images (4 channels) lose the alpha channel
       (as `PIL.Image.convert("RGB")` does; pixels under transparency keep their stored
       color). Any other channel count is an error.
    2. `tf.image.resize(image, size, "bilinear", antialias=False)` (big_vision's
       `resize` defaults; no antialiasing even when downsampling), then, as big_vision's
       `get_resize` does, the result is clipped to the input dtype's range and cast
       back to that dtype: a uint8 image comes back as whole uint8 levels (truncated),
       a float32 image keeps its float values (nothing is rounded or clipped). The
       aspect ratio is not preserved, unless `crop_to_aspect_ratio` or
       `pad_to_aspect_ratio` (keras `Resizing` semantics, not part of big_vision) is
       set.
    3. `x * scale + offset` with `scale = 1 / 127.5`, `offset = -1` (big_vision's
       `value_range(-1, 1)`: x / 255 * 2 - 1).

    Measured on real photos (tests/fixtures/real_images, 224 and 384 px) this equals
    big_vision's outputs exactly (maximum difference 0). The antialiased float resize
    of earlier versions differed by up to 1.24 (mean 0.017) at 224 px.

    `match="transformers"` reproduces Hugging Face's `SiglipImageProcessorPil` (the
    PIL backend of `SiglipImageProcessor`): the image is taken as uint8 levels (float
    input truncated, as HF's `to_pil_image` does), resized by Pillow's antialiased
    bicubic filter (`Image.resize(..., BICUBIC)`, re-implemented in TensorFlow ops,
    bit-exact to Pillow 13, see `resampling.pil_resize`), then mapped to [-1, 1]
    ((x / 255 - 0.5) / 0.5). Measured: exactly HF's uint8 resized image on the fixture
    photos and on scikit-image's photos. HF's torchvision backend
    (`SiglipImageProcessor` with torchvision installed) resizes with
    `torchvision.transforms.v2.functional.resize` (bicubic, antialias) instead and
    differs from the PIL backend by up to several uint8 levels (see README).

    Both modes run the same TensorFlow ops eagerly (on the CPU, under every Keras
    backend; the result is a tensor of the backend), inside `tf.data` and in an
    exported SavedModel, so the three give identical values.

    Input: one image `(H, W, C)` or a batch `(B, H, W, C)`, uint8 or float with
    values in [0, 255] (not [0, 1]), channels last; eagerly also a list of images of
    different sizes (resized one by one, then stacked) or PIL images. Output:
    float32 `(image_size[0], image_size[1], 3)` per image in [-1, 1].

    Args:
        image_size: int or (height, width). The model resolution, e.g. 224 for
            `siglip2_base_patch16_224`. None skips the resize.
        scale, offset: the affine value map; defaults give [0, 255] -> [-1, 1].
        match: `"big_vision"` (default) or `"transformers"`: which reference
            preprocessing to reproduce (above).
        interpolation: resize method. None: the mode's (`"bilinear"` for big_vision,
            whose `resize` op takes any `tf.image.resize` method; the transformers
            mode is always `"bicubic"`).
        antialias: bool or None (the mode's: False for big_vision, as its `resize`
            default; the transformers mode always antialiases, as Pillow does).
        crop_to_aspect_ratio, pad_to_aspect_ratio: bool, False. Center-crop / pad
            to the target aspect ratio before resizing (keras `Resizing`
            semantics) instead of stretching; big_vision mode only.

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
        match="big_vision",
        interpolation=None,
        antialias=None,
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
        match = check_match(match)
        interpolation, antialias = _resize_settings(
            match, interpolation, antialias, crop_to_aspect_ratio or pad_to_aspect_ratio
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
        self.match = match

    @property
    def image_size(self):
        """(height, width) of the output, or None (no resize). Settable."""
        return ImageConverter.image_size.fget(self)

    @image_size.setter
    def image_size(self, value):
        ImageConverter.image_size.fset(self, standardize_image_size(value))

    def get_config(self):
        config = super().get_config()
        config["match"] = self.match
        if (self.interpolation, self.antialias) == _MODE_RESIZE[self.match]:
            # The mode's own resize: recorded as "the mode's", so that loading with
            # another `match=` takes that mode's resize.
            config["interpolation"] = config["antialias"] = None
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "match" not in config and config.get("antialias") is True:
            # Saved before `match` existed, when antialias=True was (wrongly) the
            # default: load it as the big_vision pipeline it meant to be.
            config.pop("antialias")
        return super().from_config(config)

    # --- Call ----------------------------------------------------------------------

    def call(self, inputs):
        if in_tf_function():
            return self._convert(inputs)
        images = self._canonicalize_python(inputs)
        if isinstance(images, list):  # Images of different sizes: one at a time.
            outputs = [self._call_eager(image) for image in images]
            if self.image_size is None:
                return outputs
            if isinstance(outputs[0], np.ndarray):  # inside a Grain pipeline
                return np.stack(outputs, axis=0)
            return keras.ops.stack(outputs, axis=0)
        return self._call_eager(images)

    def _value_map(self, images):
        """[0, 255] float32 -> scale / offset (float32)."""
        if self.scale is not None:
            images = images * np.asarray(self.scale, dtype="float32")
        if self.offset is not None:
            images = images + np.asarray(self.offset, dtype="float32")
        return images

    def _resize(self, images):
        """The mode's resize of an RGB image (batch) of any dtype; float32 [0, 255]."""
        if self.image_size is None:
            return tf.cast(images, tf.float32)
        if self.match == "transformers":
            return pil_resize(to_uint8_levels(images), self.image_size, "bicubic")
        if self.crop_to_aspect_ratio or self.pad_to_aspect_ratio:
            # lazy: keras' TF-backend image module (private path; crop / pad only)
            from keras.src.backend.tensorflow.image import resize

            # keras `Resizing`'s crop / pad (its TF ops), then big_vision's dtype round
            # trip.
            resized = resize(
                tf.cast(images, tf.float32), self.image_size,
                interpolation=self.interpolation, antialias=self.antialias,
                crop_to_aspect_ratio=self.crop_to_aspect_ratio,
                pad_to_aspect_ratio=self.pad_to_aspect_ratio, data_format="channels_last",
            )
            return cast_back(resized, images.dtype)
        return big_vision_resize(images, self.image_size, self.interpolation, self.antialias)

    @preprocessing_function
    def _call_eager(self, images):
        """One array (image or batch) eagerly: the TF ops on the CPU, a backend tensor
        out (NumPy inside a Grain pipeline)."""
        return self._convert(images)

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

    def _convert(self, inputs):
        """The conversion in TensorFlow ops (eagerly, in tf.data, in a SavedModel)."""
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
        images = self._value_map(self._resize(images))
        return tf.cast(images, self.compute_dtype)

    # --- Presets -------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset, match=None, **kwargs):
        """Loads the image converter of a preset: a keras-siglip2 preset name, a
        local preset directory (also one holding only `image_converter.json`, as
        written by `converter.save_to_preset`), or a `kaggle://` / `hf://` / `gs://`
        handle. `match`: None (the mode the preset records) or a mode to use instead.
        A recorded mode this version does not know is an error naming the file."""
        return converter_from_preset(cls, preset, match, **kwargs)


def converter_from_preset(cls, preset, match=None, **kwargs):
    """`from_preset` of both image converters (see `SigLIP2ImageConverter.from_preset`)."""
    kwargs.update(match_overrides(match))
    config = standalone_component_config(preset, IMAGE_CONVERTER_CONFIG_FILE)
    if config is None:
        preset = resolve_preset(preset)
    if match is None:
        check_recorded_match(preset, IMAGE_CONVERTER_CONFIG_FILE)
    if config is not None:
        return deserialize_component(
            ImageConverter, config, preset, IMAGE_CONVERTER_CONFIG_FILE, **kwargs
        )
    return ImageConverter.from_preset.__func__(cls, preset, **kwargs)

def match_overrides(match):
    """Config overrides that load a saved converter in mode `match` (None: as saved).
    The resize settings go back to the new mode's own."""
    if match is None:
        return {}
    return {"match": check_match(match), "interpolation": None, "antialias": None}


def check_recorded_match(preset, config_file):
    """A ValueError naming the file when `config_file` of `preset` records an image
    converter mode (`match`) that this version does not know; also looks inside a
    preprocessor's nested converter config."""

    if not check_file_exists(preset, config_file):
        return
    config = load_json(preset, config_file).get("config", {})
    nested = config.get("image_converter")
    if isinstance(nested, dict):
        config = nested.get("config", {})
    if not isinstance(config, dict) or "match" not in config:
        return
    recorded = config["match"]
    if recorded not in MATCH_MODES:
        raise ValueError(
            f"The preset file {get_file(preset, config_file)} records the image "
            f"converter mode match={recorded!r}, which this version of keras-siglip2 "
            f"does not know (modes: {list(MATCH_MODES)}). Upgrade keras-siglip2, or "
            "choose a mode with `from_preset(..., match=...)`."
        )
