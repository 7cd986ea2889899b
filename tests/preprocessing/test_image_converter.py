"""SigLIP2ImageConverter: antialiased bilinear resize + [0, 255] -> [-1, 1], eager vs
tf.data, channel handling, presets and error messages."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip2.preprocessing import SigLIP2ImageConverter

from .conftest import IMAGE_SIZE


def reference(images, size=IMAGE_SIZE):
    """big_vision's `resize(size)|value_range(-1, 1)` on float pixels."""
    resized = tf.image.resize(
        np.asarray(images, "float32"), (size, size), method="bilinear", antialias=True
    ).numpy()
    return resized / 127.5 - 1.0


def test_shape_range_and_values(image_converter, rng):
    images = rng.integers(0, 256, (2, 37, 23, 3), dtype=np.uint8)
    out = np.asarray(image_converter(images))
    assert out.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    np.testing.assert_allclose(out, reference(images), atol=1e-5)
    # Antialiasing matters when downsampling: without it the result is different.
    plain = tf.image.resize(images.astype("float32"), (IMAGE_SIZE, IMAGE_SIZE)).numpy()
    assert np.abs(out - (plain / 127.5 - 1.0)).max() > 1e-2
    single = np.asarray(image_converter(images[0]))
    assert single.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_allclose(single, out[0], atol=1e-6)


def test_value_map_end_points(image_converter):
    for value, expected in ((0, -1.0), (255, 1.0), (127.5, 0.0)):
        image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), value, "float32")
        np.testing.assert_allclose(np.asarray(image_converter(image)), expected, atol=1e-6)


def test_uint8_and_float_inputs_agree(image_converter, rng):
    images = rng.integers(0, 256, (3, 20, 31, 3), dtype=np.uint8)
    from_uint8 = np.asarray(image_converter(images))
    for dtype in ("float32", "float64", "int32"):
        np.testing.assert_allclose(
            np.asarray(image_converter(images.astype(dtype))), from_uint8, atol=1e-6
        )


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
        np.testing.assert_allclose(got, reference(image), atol=1e-5)


def test_pil_image(image_converter, rng):
    from PIL import Image

    array = rng.integers(0, 256, (21, 13, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        np.asarray(image_converter(Image.fromarray(array))), reference(array), atol=1e-5
    )


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
