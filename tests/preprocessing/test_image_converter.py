"""SigLIP2ImageConverter against independent references: big_vision's and Hugging
Face's outputs on real photos (tests/fixtures/real_images), HF's `SiglipImageProcessorPil`
itself and a float64 bilinear resize written from its definition on scikit-image photos
and extreme aspect ratios; eager vs tf.data vs other backends, channel handling, presets
and error messages."""

import json
import os
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip2.preprocessing import SigLIP2ImageConverter

from tests.conftest import load_real_photos, run_in_backend

from .conftest import (
    IMAGE_SIZE,
    ONE_LEVEL,
    assert_close_to_reference,
    bilinear_reference,
    hf_fixed,
    skimage_photos,
)

REAL_PHOTOS = ("astronaut", "coffee", "tiny")


def reference(images, size=IMAGE_SIZE):
    """big_vision's `resize(size)|value_range(-1, 1)`, by hand: bilinear without
    antialiasing (float64), and for uint8 input truncated to whole levels."""
    images = np.asarray(images)
    batch = images if images.ndim == 4 else images[None]
    out = np.stack([bilinear_reference(x, (size, size)) for x in batch])
    if images.dtype == np.uint8:
        out = np.floor(np.clip(out, 0, 255) + 1e-9)
    out = out / 127.5 - 1.0
    return out if images.ndim == 4 else out[0]


def u8_fixture(photos, key):
    return photos[key].astype(np.float64) / 127.5 - 1.0


@pytest.mark.parametrize("size", [224, 384])
@pytest.mark.parametrize("match, prefix", [("big_vision", "bv"), ("transformers", "hf")])
def test_real_photos_match_the_reference(match, prefix, size):
    """tests/fixtures/real_images: big_vision's `resize(R)|value_range(-1, 1)` and HF's
    `SiglipImageProcessorPil`, eagerly and in tf.data (measured: exact, i.e. float32
    rounding of the value map)."""
    photos = load_real_photos()
    converter = SigLIP2ImageConverter(image_size=size, match=match)
    for name in REAL_PHOTOS:
        image, expected = photos[f"img/{name}"], u8_fixture(photos, f"{prefix}_fixed{size}/{name}@u8")
        assert_close_to_reference(converter(image), expected, max_diff=1e-6, mean_diff=1e-6)
        in_tf_data = next(iter(tf.data.Dataset.from_tensors(image).map(converter))).numpy()
        assert_close_to_reference(in_tf_data, expected, max_diff=1e-6, mean_diff=1e-6)
    # The two references differ, and so do the modes: not one pipeline passing twice.
    other = "hf" if prefix == "bv" else "bv"
    diff = np.abs(u8_fixture(photos, f"{other}_fixed{size}/astronaut@u8")
                  - np.asarray(converter(photos["img/astronaut"])))
    assert diff.max() > 0.05


@pytest.mark.parametrize(
    "backend", ["torch", pytest.param("tensorflow", marks=pytest.mark.large)]
)
def test_real_photos_on_other_backends(backend):
    """Both modes give the reference values under the other Keras backends too."""
    code = textwrap.dedent(
        """
        import json, numpy as np
        from keras_siglip2.preprocessing import SigLIP2ImageConverter
        from tests.conftest import load_real_photos
        photos = load_real_photos()
        worst = {}
        for match, prefix in (("big_vision", "bv"), ("transformers", "hf")):
            converter = SigLIP2ImageConverter(image_size=224, match=match)
            for name in ("astronaut", "coffee", "tiny"):
                out = np.asarray(converter(photos[f"img/{name}"]))
                ref = photos[f"{prefix}_fixed224/{name}@u8"] / 127.5 - 1.0
                worst[match] = max(worst.get(match, 0.0), float(np.abs(out - ref).max()))
        print(json.dumps(worst))
        """
    )
    worst = run_in_backend(backend, code)
    assert worst["big_vision"] <= 1e-6 and worst["transformers"] <= 1e-6, worst


@pytest.mark.parametrize("size", [224, 384])
def test_transformers_mode_equals_the_hf_processor(size):
    """HF's `SiglipImageProcessorPil` itself on scikit-image photos and extreme aspect
    ratios (measured: exact up to float32 rounding)."""
    converter = SigLIP2ImageConverter(image_size=size, match="transformers")
    for name, image in skimage_photos().items():
        assert_close_to_reference(converter(image), hf_fixed(image, size), max_diff=1e-5,
                                  mean_diff=1e-6)


def test_big_vision_mode_equals_the_hand_reference():
    """big_vision mode against the bilinear resize written from its definition
    (float64), on scikit-image photos and extreme aspect ratios, at 224 and 384; uint8
    input is truncated to whole levels (a level apart where float64 and float32 round
    across a whole number), float input is not."""
    for size in (224, 384):
        converter = SigLIP2ImageConverter(image_size=size)
        for name, image in skimage_photos().items():
            assert_close_to_reference(converter(image), reference(image, size),
                                      mean_diff=1e-4)
            as_float = image.astype("float32")
            assert_close_to_reference(converter(as_float), reference(as_float, size),
                                      max_diff=1e-4, mean_diff=1e-5)


def test_shape_range_and_values(image_converter, rng):
    images = rng.integers(0, 256, (2, 37, 23, 3), dtype=np.uint8)
    out = np.asarray(image_converter(images))
    assert out.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert_close_to_reference(out, reference(images), mean_diff=1e-4)
    # Whole uint8 levels (big_vision casts the resized image back to uint8).
    levels = (out + 1.0) * 127.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    # No antialiasing: the antialiased resize is far from it.
    smooth = tf.image.resize(images.astype("float32"), (IMAGE_SIZE, IMAGE_SIZE),
                             antialias=True).numpy()
    assert np.abs(out - (smooth / 127.5 - 1.0)).max() > 1e-1
    single = np.asarray(image_converter(images[0]))
    assert single.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_allclose(single, out[0], atol=1e-6)


def test_value_map_end_points(image_converter):
    for value, expected in ((0, -1.0), (255, 1.0), (127.5, 0.0)):
        image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), value, "float32")
        np.testing.assert_allclose(np.asarray(image_converter(image)), expected, atol=1e-6)


def test_input_dtypes_follow_big_vision(image_converter, rng):
    """Integer input comes back as whole levels (the cast back to the input dtype);
    float input is resized in float and not rounded; both within one level."""
    images = rng.integers(0, 256, (3, 20, 31, 3), dtype=np.uint8)
    from_uint8 = np.asarray(image_converter(images))
    np.testing.assert_allclose(np.asarray(image_converter(images.astype("int32"))),
                               from_uint8, atol=1e-6)
    from_float = np.asarray(image_converter(images.astype("float32")))
    assert_close_to_reference(from_float, reference(images.astype("float32")),
                              max_diff=1e-5, mean_diff=1e-6)
    gap = from_float - from_uint8
    assert gap.min() >= -1e-6 and gap.max() < ONE_LEVEL and gap.max() > 0.5 * ONE_LEVEL
    np.testing.assert_allclose(np.asarray(image_converter(images.astype("float64"))),
                               from_float, atol=1e-6)


def test_transformers_mode_truncates_float_input():
    """HF's PIL conversion keeps uint8 levels: float pixels are truncated first."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (30, 40, 3)).astype("float32")
    converter = SigLIP2ImageConverter(image_size=16, match="transformers")
    np.testing.assert_allclose(np.asarray(converter(image + 0.7)),
                               np.asarray(converter(image.astype("uint8"))), atol=1e-7)


def test_tf_data_matches_eager(image_converter, rng):
    images = rng.integers(0, 256, (4, 30, 18, 3), dtype=np.uint8)
    eager = np.asarray(image_converter(images))
    batched = tf.data.Dataset.from_tensor_slices(images).batch(2).map(image_converter)
    np.testing.assert_allclose(np.concatenate([b.numpy() for b in batched]), eager, atol=1e-5)
    single = tf.data.Dataset.from_tensor_slices(images).map(image_converter)
    elements = [e.numpy() for e in single]
    assert elements[0].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_allclose(np.stack(elements), eager, atol=1e-5)


def test_decoded_images_of_unknown_shape_in_tf_data(image_converter, rng):
    images = [rng.integers(0, 256, (h, w, c), dtype=np.uint8) for h, w, c in ((9, 14, 3), (20, 11, 1), (12, 12, 4))]
    encoded = [tf.io.encode_png(x).numpy() for x in images]
    ds = tf.data.Dataset.from_tensor_slices(encoded).map(
        lambda s: image_converter(tf.io.decode_png(s, channels=0))
    )
    out = np.stack([e.numpy() for e in ds])
    expected = np.stack([np.asarray(image_converter(x)) for x in images])
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_grayscale_and_rgba_are_converted(image_converter, rng):
    gray = rng.integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)
    rgb = np.repeat(gray, 3, axis=-1)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)], -1)
    gray_alpha = np.concatenate([gray, rgba[..., 3:]], -1)
    expected = np.asarray(image_converter(rgb))
    for images in (gray, rgba, gray_alpha):
        np.testing.assert_allclose(np.asarray(image_converter(images)), expected, atol=1e-6)
        ds = tf.data.Dataset.from_tensors(images).map(image_converter)
        np.testing.assert_allclose(next(iter(ds)).numpy(), expected, atol=1e-5)


def test_list_of_different_sizes(image_converter, rng):
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((10, 20), (33, 9))]
    out = np.asarray(image_converter(images))
    assert out.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    for got, image in zip(out, images):
        assert_close_to_reference(got, reference(image), mean_diff=1e-4)


def test_pil_image(image_converter, rng):
    from PIL import Image

    array = rng.integers(0, 256, (21, 13, 3), dtype=np.uint8)
    assert_close_to_reference(image_converter(Image.fromarray(array)), reference(array),
                              mean_diff=1e-4)


def test_image_size_argument_and_setter(rng):
    converter = SigLIP2ImageConverter(image_size=(6, 10))
    assert converter.image_size == (6, 10)
    assert np.asarray(converter(rng.integers(0, 256, (17, 17, 3)))).shape == (6, 10, 3)
    converter.image_size = 4
    assert converter.image_size == (4, 4)
    assert np.asarray(converter(np.zeros((17, 17, 3)))).shape == (4, 4, 3)
    cropped = SigLIP2ImageConverter(image_size=4, crop_to_aspect_ratio=True)
    assert np.asarray(cropped(np.zeros((2, 10, 20, 3)))).shape == (2, 4, 4, 3)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((8, 8), "rank 2"),
        ((1, 2, 8, 8, 3), "rank 5"),
        ((8, 8, 5), "5 channels"),
        ((2, 0, 8, 3), "zero height or width"),
        ((8, 0, 3), "zero height or width"),
    ],
)
def test_bad_shapes(image_converter, shape, message):
    with pytest.raises(ValueError, match=f"`images`.*{message}"):
        image_converter(np.zeros(shape, "uint8"))
    with pytest.raises(ValueError, match=f"`images`.*{message}"):
        tf.data.Dataset.from_tensors(np.zeros(shape, "uint8")).map(image_converter)


def test_bad_values_and_arguments(image_converter):
    with pytest.raises(ValueError, match="`images`.*string"):
        image_converter(np.array(["a.png"]))
    with pytest.raises(ValueError, match="`images`.*decode"):
        tf.data.Dataset.from_tensors(tf.constant("a.png")).map(image_converter)
    with pytest.raises(ValueError, match="`image_size`"):
        SigLIP2ImageConverter(image_size=(0, 224))
    with pytest.raises(ValueError, match="`image_size`"):
        SigLIP2ImageConverter(image_size="224")
    with pytest.raises(ValueError, match="data_format"):
        SigLIP2ImageConverter(data_format="channels_first")
    # Shapes known only at run time fail with TensorFlow's assertion instead.
    ds = tf.data.Dataset.from_generator(
        lambda: iter([np.zeros((0, 5, 3), "uint8")]),
        output_signature=tf.TensorSpec((None, None, 3), tf.uint8),
    ).map(image_converter)
    with pytest.raises(tf.errors.InvalidArgumentError, match="zero height or width"):
        next(iter(ds))


def test_config_and_preset_round_trip(tmp_path, rng):
    converter = SigLIP2ImageConverter(image_size=(6, 10))
    config = converter.get_config()
    assert SigLIP2ImageConverter.from_config(config).get_config() == config
    preset = str(tmp_path / "converter")
    converter.save_to_preset(preset)
    with open(os.path.join(preset, "image_converter.json")) as f:
        saved = json.load(f)
    assert saved["registered_name"] == "keras_siglip2>SigLIP2ImageConverter"
    assert tuple(saved["config"]["image_size"]) == (6, 10)
    restored = SigLIP2ImageConverter.from_preset(preset)
    assert isinstance(restored, SigLIP2ImageConverter) and restored.image_size == (6, 10)
    images = rng.integers(0, 256, (2, 15, 15, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(restored(images)), np.asarray(converter(images)))


def test_full_preset_through_keras_hub(image_converter, backbone_preset):
    import keras_hub

    image_converter.save_to_preset(backbone_preset)
    restored = keras_hub.layers.ImageConverter.from_preset(backbone_preset)
    assert isinstance(restored, SigLIP2ImageConverter)
    assert restored.image_size == (IMAGE_SIZE, IMAGE_SIZE)


def test_match_in_config_presets_and_bad_values(tmp_path):
    converter = SigLIP2ImageConverter(image_size=16, match="transformers")
    config = converter.get_config()
    assert config["match"] == "transformers"
    clone = SigLIP2ImageConverter.from_config(config)
    assert (clone.match, clone.interpolation, clone.antialias) == ("transformers", "bicubic", True)
    default = SigLIP2ImageConverter(image_size=16)
    assert (default.match, default.interpolation, default.antialias) == (
        "big_vision", "bilinear", False)
    preset = str(tmp_path / "converter")
    default.save_to_preset(preset)
    assert SigLIP2ImageConverter.from_preset(preset).match == "big_vision"
    switched = SigLIP2ImageConverter.from_preset(preset, match="transformers")
    assert (switched.match, switched.interpolation) == ("transformers", "bicubic")
    with pytest.raises(ValueError, match=r"`match`.*'big_vision', 'transformers'.*'pil'"):
        SigLIP2ImageConverter(match="pil")
    with pytest.raises(ValueError, match="`match`.*'bilinear'"):
        SigLIP2ImageConverter.from_preset(preset, match="bilinear")
    with pytest.raises(ValueError, match="match='transformers'.*interpolation"):
        SigLIP2ImageConverter(match="transformers", interpolation="bilinear")
    with pytest.raises(ValueError, match="match='transformers'"):
        SigLIP2ImageConverter(match="transformers", crop_to_aspect_ratio=True)


def test_unknown_recorded_mode_names_the_preset_file(tmp_path):
    from keras_siglip2.preprocessing import SigLIP2NaFlexImageConverter

    for converter in (SigLIP2ImageConverter(image_size=16),
                      SigLIP2NaFlexImageConverter(4, 8)):
        preset = tmp_path / type(converter).__name__
        converter.save_to_preset(str(preset))
        path = preset / "image_converter.json"
        saved = json.loads(path.read_text())
        saved["config"]["match"] = "opencv"
        path.write_text(json.dumps(saved))
        with pytest.raises(ValueError, match=f"{path}.*'opencv'.*'big_vision', 'transformers'"):
            type(converter).from_preset(str(preset))
        assert type(converter).from_preset(str(preset), match="transformers").match == (
            "transformers")


def test_config_saved_before_match_loads_as_big_vision():
    """A config written before `match` existed recorded the old (wrong) default
    antialias=True: it loads as big_vision's pipeline."""
    old = SigLIP2ImageConverter(image_size=16).get_config()
    old.pop("match")
    old.update(interpolation="bilinear", antialias=True)
    restored = SigLIP2ImageConverter.from_config(old)
    assert (restored.match, restored.antialias) == ("big_vision", False)
