"""SigLIP 2 preprocessor (paper sec. 2): turns raw (image, text) pairs into the two
towers' inputs, pairing the SigLIP 2 tokenizer (lowercase, Gemma SentencePiece, sticky
EOS, length 64) with an image converter (fixed resolution, or NaFlex's
aspect-preserving patches)."""

import keras
import keras_hub
from keras_hub.models import Preprocessor
from keras_hub.src.utils.preset_utils import check_file_exists
from keras_hub.src.utils.tensor_utils import (
    convert_preprocessing_outputs_python,
    in_tf_function,
)

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.preprocessing.image_converter import (
    IMAGE_CONVERTER_CONFIG_FILE,
    SigLIP2ImageConverter,
    check_recorded_match,
    match_overrides,
)
from keras_siglip2.preprocessing.tokenizer import (
    SigLIP2Tokenizer,
    _standardize_sequence_length,
    deserialize_component,
    resolve_preset,
    standalone_component_config,
)

PREPROCESSOR_CONFIG_FILE = "preprocessor.json"
IMAGE_KEY = "images"
TEXT_KEYS = ("prompts", "texts")


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2Preprocessor(Preprocessor):
    """Tokenizer + image converter for `SigLIP2Backbone`.

    Call it on a dict with the images under `"images"` and the texts under
    `"prompts"` (keras-hub's SigLIP key) or `"texts"` (either, not both). Either part
    may be left out, e.g. to embed only texts. It returns the backbone inputs:
    `{"token_ids": int32 (..., sequence_length), "images": float (..., H, W, 3)}`
    for the fixed-resolution converter. A converter that returns a dict (the NaFlex
    converter's `pixel_patches`, `patch_positions`, `patch_mask`) has its dict
    merged into the output in place of `"images"`. `(x, y, sample_weight)` are
    passed through like every keras-hub preprocessor. Runs eagerly on Python / NumPy
    input and inside `tf.data` (`ds.map(preprocessor)`).

    Args:
        tokenizer: a `SigLIP2Tokenizer`.
        image_converter: a `SigLIP2ImageConverter`, a `SigLIP2NaFlexImageConverter`
            or None (text only).
        sequence_length: int or None. Overrides the tokenizer's `sequence_length`
            when given (64 for the released models).

    Example:
    ```python
    preprocessor = keras_siglip2.preprocessing.SigLIP2Preprocessor.from_preset(
        "siglip2_base_patch16_224"
    )
    inputs = preprocessor({"images": images_uint8, "prompts": ["a cat", "a dog"]})
    outputs = backbone(inputs)
    ds = ds.map(preprocessor)  # elements {"images": ..., "texts": ...}
    ```
    """

    backbone_cls = SigLIP2Backbone
    tokenizer_cls = SigLIP2Tokenizer
    image_converter_cls = SigLIP2ImageConverter

    def __init__(self, tokenizer, image_converter=None, sequence_length=None, **kwargs):
        super().__init__(**kwargs)
        if tokenizer is None:
            raise ValueError("SigLIP2Preprocessor needs a `tokenizer`; got None.")
        self.tokenizer = tokenizer
        self.image_converter = image_converter
        if sequence_length is not None:
            self.sequence_length = sequence_length
        self.built = True

    @property
    def sequence_length(self):
        """The token sequence length (the tokenizer's). Settable."""
        return self.tokenizer.sequence_length

    @sequence_length.setter
    def sequence_length(self, value):

        self.tokenizer.sequence_length = _standardize_sequence_length(value)

    def _split_inputs(self, x):
        if not isinstance(x, dict):
            raise ValueError(
                "SigLIP2Preprocessor takes a dict with images under 'images' and "
                "texts under 'prompts' (or 'texts'); got "
                f"{type(x).__name__}."
            )
        unknown = sorted(set(x) - {IMAGE_KEY, *TEXT_KEYS})
        if unknown:
            raise ValueError(
                f"SigLIP2Preprocessor got unexpected keys {unknown}; it accepts "
                f"'{IMAGE_KEY}' and one of {list(TEXT_KEYS)}."
            )
        text_keys = [k for k in TEXT_KEYS if k in x]
        if len(text_keys) > 1:
            raise ValueError(
                "Pass the texts under either 'prompts' or 'texts', not both."
            )
        texts = x[text_keys[0]] if text_keys else None
        images = x.get(IMAGE_KEY)
        if texts is None and images is None:
            raise ValueError(
                "SigLIP2Preprocessor got neither images ('images') nor texts "
                "('prompts' / 'texts')."
            )
        return images, texts

    def call(self, x, y=None, sample_weight=None, sequence_length=None):
        images, texts = self._split_inputs(x)
        outputs = {}
        if images is not None:
            if self.image_converter is None:
                raise ValueError(
                    "Got 'images' but this SigLIP2Preprocessor has no "
                    "`image_converter`."
                )
            converted = self.image_converter(images)
            if isinstance(converted, dict):  # NaFlex: patches, positions, mask.
                outputs.update(converted)
            else:
                outputs[IMAGE_KEY] = converted
        if texts is not None:
            if sequence_length is None:
                outputs["token_ids"] = self.tokenizer(texts)
            else:
                outputs["token_ids"] = self.tokenizer(
                    texts, sequence_length=sequence_length
                )
        outputs = keras.utils.pack_x_y_sample_weight(outputs, y, sample_weight)
        if not in_tf_function():
            # Eagerly the tokenizer gives NumPy and the converter backend tensors; a
            # Keras model refuses such a mix, so hand back backend tensors only
            # (NumPy inside a Grain pipeline).
            outputs = convert_preprocessing_outputs_python(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config["sequence_length"] = self.sequence_length
        return config

    @classmethod
    def _add_missing_kwargs(cls, loader, kwargs):
        # A preset may carry no image_converter.json (a text-only preset).
        if "image_converter" not in kwargs:

            if not check_file_exists(loader.preset, "image_converter.json"):
                kwargs["image_converter"] = None
        return super()._add_missing_kwargs(loader, kwargs)

    @classmethod
    def from_preset(cls, preset, config_file=PREPROCESSOR_CONFIG_FILE, match=None, **kwargs):
        """Loads the preprocessor of a preset: a keras-siglip2 preset name, a local
        preset directory (also one written by `preprocessor.save_to_preset` alone,
        without a backbone), or a `kaggle://` / `hf://` / `gs://` handle.

        `match`: None (the image converter mode the preset records) or
        `"big_vision"` / `"transformers"` to preprocess images that way instead (see
        `SigLIP2ImageConverter`). A recorded mode this version does not know is an
        error naming the preset file."""
        config = standalone_component_config(preset, config_file)
        if config is None:
            preset = resolve_preset(preset)
        if match is None:
            for name in (config_file, IMAGE_CONVERTER_CONFIG_FILE):
                check_recorded_match(preset, name)
        elif "image_converter" not in kwargs:
            kwargs["image_converter"] = _converter_for_match(preset, config, match)
        if config is not None:
            preprocessor = deserialize_component(cls, config, preset, config_file, **kwargs)
            preprocessor.load_preset_assets(preset)
            return preprocessor
        return super().from_preset(preset, config_file, **kwargs)


def _converter_for_match(preset, config, match):
    """The preset's image converter rebuilt in mode `match` (None when it has none)."""

    nested = (config or {}).get("config", {}).get("image_converter")
    if isinstance(nested, dict):
        nested = {**nested, "config": {**nested.get("config", {}), **match_overrides(match)}}
        return keras.saving.deserialize_keras_object(nested)
    if not check_file_exists(preset, IMAGE_CONVERTER_CONFIG_FILE):
        raise ValueError(
            f"`match`={match!r}: preset {preset!r} has no image converter to set it on."
        )
    return keras_hub.layers.ImageConverter.from_preset(preset, **match_overrides(match))
