"""SigLIP2Preprocessor: dict in, backbone inputs out; eager vs tf.data; NaFlex-style
dict converters; presets (alone and beside a backbone)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_siglip2.preprocessing import (
    SigLIP2ImageConverter,
    SigLIP2Preprocessor,
    SigLIP2Tokenizer,
)

from .conftest import IMAGE_SIZE, SEQUENCE_LENGTH, bilinear_reference

TEXTS = ["A photo of a CAT.", "L'ÉCOLE à côté", "一只猫", "एक बिल्ली"]


@pytest.fixture
def preprocessor(tokenizer, image_converter):
    return SigLIP2Preprocessor(tokenizer=tokenizer, image_converter=image_converter)


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, (len(TEXTS), 19, 27, 3), dtype=np.uint8)


def test_outputs_match_components(preprocessor, tokenizer, image_converter, images):
    out = preprocessor({"images": images, "prompts": TEXTS})
    assert sorted(out) == ["images", "token_ids"]
    assert np.asarray(out["token_ids"]).shape == (len(TEXTS), SEQUENCE_LENGTH)
    assert np.asarray(out["token_ids"]).dtype == np.int32
    assert np.asarray(out["images"]).shape == (len(TEXTS), IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(np.asarray(out["token_ids"]), np.asarray(tokenizer(TEXTS)))
    np.testing.assert_allclose(np.asarray(out["images"]), np.asarray(image_converter(images)))
    # "texts" is accepted as well as keras-hub's "prompts".
    again = preprocessor({"images": images, "texts": TEXTS})
    np.testing.assert_array_equal(np.asarray(again["token_ids"]), np.asarray(out["token_ids"]))


def test_single_example_and_partial_inputs(preprocessor, images):
    out = preprocessor({"images": images[0], "prompts": TEXTS[0]})
    assert np.asarray(out["images"]).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.asarray(out["token_ids"]).shape == (SEQUENCE_LENGTH,)
    assert sorted(preprocessor({"texts": TEXTS})) == ["token_ids"]
    assert sorted(preprocessor({"images": images})) == ["images"]


def test_labels_pass_through(preprocessor, images):
    labels = np.arange(len(TEXTS), dtype="int32")
    x, y = preprocessor({"images": images, "prompts": TEXTS}, labels)
    np.testing.assert_array_equal(y, labels)
    assert sorted(x) == ["images", "token_ids"]


def test_tf_data_matches_eager(preprocessor, images):
    eager = preprocessor({"images": images, "texts": TEXTS})
    ds = tf.data.Dataset.from_tensor_slices({"images": images, "texts": TEXTS})
    batch = next(iter(ds.batch(len(TEXTS)).map(preprocessor)))
    np.testing.assert_array_equal(batch["token_ids"].numpy(), np.asarray(eager["token_ids"]))
    np.testing.assert_allclose(batch["images"].numpy(), np.asarray(eager["images"]), atol=1e-5)
    singles = list(ds.map(preprocessor))
    np.testing.assert_array_equal(
        np.stack([s["token_ids"].numpy() for s in singles]), np.asarray(eager["token_ids"])
    )


def test_sequence_length(tokenizer, image_converter):
    preprocessor = SigLIP2Preprocessor(tokenizer, image_converter, sequence_length=5)
    assert preprocessor.sequence_length == 5 and tokenizer.sequence_length == 5
    ids = np.asarray(preprocessor({"texts": TEXTS})["token_ids"])
    assert ids.shape == (len(TEXTS), 5) and np.all(ids[:, -1] == 1)
    ids = np.asarray(preprocessor({"texts": TEXTS}, sequence_length=3)["token_ids"])
    assert ids.shape == (len(TEXTS), 3)
    assert SigLIP2Preprocessor.from_config(preprocessor.get_config()).sequence_length == 5


def test_bad_inputs(preprocessor, tokenizer, images):
    with pytest.raises(ValueError, match="either 'prompts' or 'texts'"):
        preprocessor({"images": images, "prompts": TEXTS, "texts": TEXTS})
    with pytest.raises(ValueError, match=r"unexpected keys \['image'\]"):
        preprocessor({"image": images, "texts": TEXTS})
    with pytest.raises(ValueError, match="neither"):
        preprocessor({})
    with pytest.raises(ValueError, match="takes a dict"):
        preprocessor(TEXTS)
    with pytest.raises(ValueError, match="no `image_converter`"):
        SigLIP2Preprocessor(tokenizer)({"images": images})


class _DictConverter(keras.layers.Layer):
    """Stands in for the NaFlex converter: returns a dict of model inputs."""

    def call(self, images):
        flat = keras.ops.reshape(keras.ops.cast(images, "float32"), (-1, 4, 3))
        return {
            "pixel_patches": flat / 127.5 - 1.0,
            "patch_mask": keras.ops.ones(keras.ops.shape(flat)[:2], "int32"),
        }


def test_dict_converter_outputs_are_merged(tokenizer, images):
    preprocessor = SigLIP2Preprocessor(tokenizer, _DictConverter())
    out = preprocessor({"images": images[:, :2, :2], "texts": TEXTS})
    assert sorted(out) == ["patch_mask", "pixel_patches", "token_ids"]
    assert np.asarray(out["pixel_patches"]).shape == (len(TEXTS), 4, 3)


def test_naflex_converter(tokenizer, images):
    from keras_siglip2.preprocessing import SigLIP2NaFlexImageConverter

    converter = SigLIP2NaFlexImageConverter(patch_size=4, max_num_patches=16)
    out = SigLIP2Preprocessor(tokenizer, converter)({"images": images, "texts": TEXTS})
    assert {"pixel_patches", "patch_positions", "patch_mask", "token_ids"} <= set(out)
    assert "images" not in out


def test_preset_round_trip(preprocessor, images, tmp_path):
    preset = str(tmp_path / "preprocessor")
    preprocessor.save_to_preset(preset)
    for name in ("preprocessor.json", "tokenizer.json", "image_converter.json"):
        assert os.path.isfile(os.path.join(preset, name)), name
    assert os.path.isfile(os.path.join(preset, "assets", "tokenizer", "vocabulary.spm"))
    restored = SigLIP2Preprocessor.from_preset(preset)
    assert isinstance(restored.tokenizer, SigLIP2Tokenizer)
    assert isinstance(restored.image_converter, SigLIP2ImageConverter)
    x = {"images": images, "prompts": TEXTS}
    expected, got = preprocessor(x), restored(x)
    np.testing.assert_array_equal(np.asarray(got["token_ids"]), np.asarray(expected["token_ids"]))
    np.testing.assert_array_equal(np.asarray(got["images"]), np.asarray(expected["images"]))


def test_full_preset_loading(tokenizer, image_converter, backbone_preset, images):
    # Only tokenizer + converter saved (no preprocessor.json): keras-hub assembles it.
    tokenizer.save_to_preset(backbone_preset)
    image_converter.save_to_preset(backbone_preset)
    preprocessor = SigLIP2Preprocessor.from_preset(backbone_preset)
    assert preprocessor.sequence_length == SEQUENCE_LENGTH
    x = {"images": images, "prompts": TEXTS}
    np.testing.assert_array_equal(
        np.asarray(preprocessor(x)["token_ids"]), np.asarray(tokenizer(TEXTS))
    )
    # A saved preprocessor.json wins and keeps its settings.
    SigLIP2Preprocessor(tokenizer, image_converter, sequence_length=6).save_to_preset(
        backbone_preset
    )
    assert SigLIP2Preprocessor.from_preset(backbone_preset).sequence_length == 6
    # A text-only preset (no image_converter.json) loads without a converter.
    os.remove(os.path.join(backbone_preset, "preprocessor.json"))
    os.remove(os.path.join(backbone_preset, "image_converter.json"))
    assert SigLIP2Preprocessor.from_preset(backbone_preset).image_converter is None


def test_outputs_feed_the_backbone(preprocessor, small_backbone, spm_processor, images):
    """What the backbone computes from the preprocessor's outputs equals what it computes
    from inputs built by hand from the references: SentencePiece's own ids of the
    lowercased text, cut to L - 1, then EOS (1), then <pad> (0); big_vision's
    `resize(IMAGE_SIZE)|value_range(-1, 1)` by hand (bilinear without antialiasing in
    float64, truncated to uint8 levels, then [0, 255] -> [-1, 1]). Compared: the image
    embeddings, within 1e-5 (the pixels are the same levels), and the text
    tower's token features, equal (the same ids; compared there because the text head
    starts at zero, so the text embeddings, and the logits, do not yet depend on the
    text)."""
    x = preprocessor({"images": images, "prompts": TEXTS})
    outputs = small_backbone(x)
    assert tuple(outputs["vision_logits"].shape) == (len(TEXTS), len(TEXTS))
    token_ids = []
    for text in TEXTS:
        ids = spm_processor.encode(text.lower())[: SEQUENCE_LENGTH - 1] + [1]
        token_ids.append(ids + [0] * (SEQUENCE_LENGTH - len(ids)))
    token_ids = np.asarray(token_ids, "int32")
    resized = np.stack([bilinear_reference(x, (IMAGE_SIZE, IMAGE_SIZE)) for x in images])
    pixels = np.floor(np.clip(resized, 0, 255) + 1e-9) / 127.5 - 1.0
    np.testing.assert_allclose(x["images"], pixels, atol=1e-6)
    numpy = keras.ops.convert_to_numpy
    image_embeddings = numpy(small_backbone.get_vision_embeddings(x["images"]))
    expected = numpy(small_backbone.get_vision_embeddings(pixels.astype("float32")))
    assert np.abs(expected - expected.mean(0)).max() > 1e-2  # the images tell apart
    np.testing.assert_allclose(image_embeddings, expected, rtol=0, atol=1e-5)
    text = small_backbone.text_encoder
    features, expected = numpy(text.get_tokens(x["token_ids"])), numpy(text.get_tokens(token_ids))
    assert np.abs(expected - expected.mean(0)).max() > 1e-2  # the texts tell apart
    np.testing.assert_array_equal(features, expected)


def test_match_from_preset_and_unknown_recorded_mode(tokenizer, image_converter, backbone_preset):
    import json

    SigLIP2Preprocessor(tokenizer, image_converter).save_to_preset(backbone_preset)
    assert SigLIP2Preprocessor.from_preset(backbone_preset).image_converter.match == "big_vision"
    switched = SigLIP2Preprocessor.from_preset(backbone_preset, match="transformers")
    assert switched.image_converter.match == "transformers"
    assert switched.image_converter.image_size == (IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ValueError, match="`match`.*'big_vision', 'transformers'"):
        SigLIP2Preprocessor.from_preset(backbone_preset, match="pil")
    for name in ("image_converter.json", "preprocessor.json"):
        path = os.path.join(backbone_preset, name)
        with open(path) as f:
            saved = json.load(f)
        config = saved["config"]
        config = config["image_converter"]["config"] if "image_converter" in config else config
        config["match"] = "opencv"
        with open(path, "w") as f:
            json.dump(saved, f)
        with pytest.raises(ValueError, match=f"{path}.*'opencv'"):
            SigLIP2Preprocessor.from_preset(backbone_preset)
    fixed = SigLIP2Preprocessor.from_preset(backbone_preset, match="big_vision")
    assert fixed.image_converter.match == "big_vision"
