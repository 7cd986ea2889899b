"""SigLIP2NaFlexImageConverter against big_vision's NaFlex preprocessing
(`value_range(-1, 1)|resize_to_sequence|patchify`, pad): the reference output sizes of
`resize_to_sequence`, the patch grids and patches of the shared fixture naflex_b.npz and
of the real-photo fixture, and, with `match="transformers"`, HF's
`Siglip2ImageProcessorPil` itself; the (py, px, c) patch order, eager vs tf.data,
channel handling and bad input."""

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip2.preprocessing import SigLIP2NaFlexImageConverter
from keras_siglip2.preprocessing.naflex_image_converter import (
    naflex_inputs_from_transformers,
    target_size_for_sequence,
)
from tests.conftest import fixture_path, load_real_photos

from .conftest import assert_close_to_reference, hf_naflex, skimage_photos

# big_vision `resize_to_sequence` (input hw, patch, max patches -> output hw), as
# recorded in docs/reference_facts.md.
REFERENCE_SIZES = [
    ((48, 48), 3, 121, (33, 33)),
    ((112, 109), 7, 225, (105, 105)),
    ((256, 64), 16, 12, (96, 32)),
    ((256, 64), 8, 15, (56, 16)),
    ((63, 241), 16, 16, (32, 128)),
    ((16, 512), 16, 16, (16, 256)),
]


def as_numpy(outputs):
    return {k: np.asarray(v) for k, v in outputs.items()}


def random_images(rng, shapes):
    return [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in shapes]


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("hw,patch,n,expected", REFERENCE_SIZES)
def test_reference_output_sizes(hw, patch, n, expected, rng):
    np.testing.assert_array_equal(target_size_for_sequence(*hw, patch, n).numpy(), expected)
    # The converter cuts that size into its patch grid, row-major, then pads to n.
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    out = as_numpy(SigLIP2NaFlexImageConverter(patch, n)(image))
    rows, cols = expected[0] // patch, expected[1] // patch
    assert out["pixel_patches"].shape == (n, patch * patch * 3)
    np.testing.assert_array_equal(out["patch_mask"], np.arange(n) < rows * cols)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    np.testing.assert_array_equal(
        out["patch_positions"][: rows * cols], np.stack([r.ravel(), c.ravel()], -1)
    )
    assert not out["patch_positions"][rows * cols:].any()
    assert not out["pixel_patches"][rows * cols:].any()


def test_fixture_raw_images_give_big_vision_patches():
    """in/raw_image_* -> the same grids (ptype, yidx, xidx) and patches as big_vision."""
    with np.load(fixture_path("naflex_b")) as npz:
        fixture = {k: npz[k] for k in npz.files}
    images = [fixture[f"in/raw_image_{k}"] for k in range(5)]
    out = as_numpy(SigLIP2NaFlexImageConverter(patch_size=8, max_num_patches=24)(images))
    np.testing.assert_array_equal(out["patch_mask"], fixture["in/ptype"])
    np.testing.assert_array_equal(out["patch_positions"][..., 0], fixture["in/yidx"])
    np.testing.assert_array_equal(out["patch_positions"][..., 1], fixture["in/xidx"])
    np.testing.assert_allclose(out["pixel_patches"], fixture["in/patches"], atol=1e-6, rtol=0)


def test_patch_order_is_py_px_c():
    """An image already at its target size is not resampled; each patch is the image
    block at (row, col), flattened in (py, px, c) order."""
    p, h, w = 4, 12, 20  # 3 x 5 = 15 patches = max_num_patches: no rescaling
    image = np.arange(h * w * 3).reshape(h, w, 3) % 256
    out = as_numpy(SigLIP2NaFlexImageConverter(p, 15)(image.astype("uint8")))
    expected = image.astype("float32") / 255.0 * 2.0 - 1.0
    for n, (r, c) in enumerate(out["patch_positions"]):
        block = expected[r * p:(r + 1) * p, c * p:(c + 1) * p]
        np.testing.assert_allclose(out["pixel_patches"][n], block.reshape(-1), atol=1e-6)


def test_value_range_end_points():
    for value, expected in ((0, -1.0), (255, 1.0)):
        out = SigLIP2NaFlexImageConverter(4, 8)(np.full((9, 13, 3), value, "uint8"))
        patches = np.asarray(out["pixel_patches"])[np.asarray(out["patch_mask"]) == 1]
        np.testing.assert_allclose(patches, expected, atol=1e-6)


def test_batches_images_of_different_sizes_and_per_call_length(rng):
    converter = SigLIP2NaFlexImageConverter(patch_size=4, max_num_patches=32)
    images = random_images(rng, [(40, 9), (9, 40), (17, 17)])
    batch = as_numpy(converter(images))
    assert batch["pixel_patches"].shape == (3, 32, 48)
    assert batch["patch_positions"].shape == (3, 32, 2) and batch["patch_mask"].shape == (3, 32)
    assert batch["patch_positions"].dtype == np.int32 and batch["patch_mask"].dtype == np.int32
    for i, image in enumerate(images):
        alone = as_numpy(converter(image))
        for key in alone:
            np.testing.assert_allclose(batch[key][i], alone[key], atol=1e-6)
    # Tall stays tall, wide stays wide.
    tall, wide = (batch["patch_positions"][i].max(0) + 1 for i in (0, 1))
    assert tall[0] > tall[1] and wide[1] > wide[0]
    short = as_numpy(converter(images, max_num_patches=12))
    assert short["patch_mask"].shape == (3, 12) and (short["patch_mask"].sum(1) <= 12).all()


def test_tf_data_matches_eager(rng):
    converter = SigLIP2NaFlexImageConverter(patch_size=4, max_num_patches=20)
    images = random_images(rng, [(30, 11), (8, 25), (16, 16)])
    eager = as_numpy(converter(images))

    def generate():
        yield from images

    signature = tf.TensorSpec((None, None, 3), tf.uint8)
    per_image = tf.data.Dataset.from_generator(generate, output_signature=signature)
    # Static shapes per sequence length: every image of any size gives the same
    # fully-defined element spec, so plain `.batch` works and XLA sees one shape.
    spec = per_image.map(converter).element_spec
    assert spec["pixel_patches"].shape == (20, 48) and spec["patch_mask"].shape == (20,)
    assert spec["patch_positions"].shape == (20, 2)
    batches = list(per_image.map(converter).batch(3).as_numpy_iterator())
    assert len(batches) == 1
    ragged = tf.ragged.stack([tf.constant(x) for x in images])
    ragged_batches = list(
        tf.data.Dataset.from_tensor_slices(ragged).batch(3).map(converter).as_numpy_iterator()
    )
    for got in (batches[0], ragged_batches[0]):
        for key in eager:
            np.testing.assert_allclose(got[key], eager[key], atol=1e-5)


def test_channel_conversion(rng):
    converter = SigLIP2NaFlexImageConverter(patch_size=4, max_num_patches=16)
    rgb = rng.integers(0, 256, (13, 21, 3), dtype=np.uint8)
    gray = rgb[..., :1]
    expected_gray = as_numpy(converter(np.repeat(gray, 3, axis=-1)))
    cases = {
        "gray": (gray, expected_gray),
        "gray+alpha": (np.concatenate([gray, rgb[..., 2:]], -1), expected_gray),
        "rgba": (np.concatenate([rgb, gray], -1), as_numpy(converter(rgb))),
    }
    for name, (image, expected) in cases.items():
        got = as_numpy(converter(image))
        in_graph = tf.data.Dataset.from_tensors(image).map(converter).get_single_element()
        for key in got:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=name)
            np.testing.assert_array_equal(in_graph[key].numpy(), expected[key], err_msg=name)


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((0, 10, 3), "uint8"), r"empty \(shape \(0, 10, 3\)\)"),
        (np.zeros((10, 0, 3), "uint8"), r"empty \(shape \(10, 0, 3\)\)"),
        (np.zeros((1, 1, 3), "uint8"), "single pixel"),
        (np.zeros((8, 8, 5), "uint8"), r"5 channels .* expected 3 \(RGB\)"),
        (np.zeros((8, 8), "uint8"), r"an image \(H, W, C\).* got shape \(8, 8\)"),
        (np.full((8, 8, 3), 300.0, "float32"), r"\[300, 300\]; expected raw pixels in \[0, 255\]"),
        (np.full((8, 8, 3), np.nan, "float32"), "NaN"),
    ],
)
def test_bad_images_are_refused(image, message):
    converter = SigLIP2NaFlexImageConverter(patch_size=4, max_num_patches=16)
    with pytest.raises(ValueError, match=message):
        converter(image)
    with pytest.raises(ValueError, match=message) as error:
        converter([np.zeros((8, 8, 3), "uint8"), image])
    assert "image 1" in str(error.value)  # names the culprit in a list


def test_bad_images_in_tf_data_fail_clearly():
    converter = SigLIP2NaFlexImageConverter(patch_size=4, max_num_patches=16)
    for image, message in (
        (np.zeros((1, 1, 3), "uint8"), "single pixel"),
        (np.zeros((0, 7, 3), "uint8"), "empty or a single pixel"),
        (np.zeros((6, 6, 5), "uint8"), "1 \\(gray\\), 2 .* or 4 \\(RGBA\\) channels"),
    ):
        dataset = tf.data.Dataset.from_tensors(image).map(converter)
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            list(dataset)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "256"])
def test_bad_max_num_patches(value):
    with pytest.raises((ValueError, TypeError), match="max_num_patches"):
        SigLIP2NaFlexImageConverter(patch_size=16, max_num_patches=value)
    converter = SigLIP2NaFlexImageConverter(patch_size=4, max_num_patches=8)
    with pytest.raises((ValueError, TypeError), match="max_num_patches"):
        converter(np.zeros((8, 8, 3), "uint8"), max_num_patches=value)


def test_config_round_trip():
    converter = SigLIP2NaFlexImageConverter(patch_size=14, max_num_patches=576)
    clone = SigLIP2NaFlexImageConverter.from_config(converter.get_config())
    assert clone.patch_size == 14 and clone.max_num_patches == 576


def test_inputs_from_transformers_layout():
    """HF's `Siglip2ImageProcessorPil` output itself (pixel_values, spatial_shapes,
    pixel_attention_mask: real patches first, row-major) -> the three NaFlex inputs,
    equal to the transformers mode of the converter on the same photos."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import (
        Siglip2ImageProcessorPil,
    )

    photos = skimage_photos()
    images = [photos["chelsea"], photos["7x11"]]
    hf = Siglip2ImageProcessorPil(patch_size=16, max_num_patches=64)(
        images=images, return_tensors="np", input_data_format="channels_last"
    )
    got = as_numpy(naflex_inputs_from_transformers(
        hf["pixel_values"], hf["spatial_shapes"], hf["pixel_attention_mask"]
    ))
    ours = as_numpy(SigLIP2NaFlexImageConverter(16, 64, match="transformers")(images))
    np.testing.assert_array_equal(got["patch_positions"], ours["patch_positions"])
    np.testing.assert_array_equal(got["patch_mask"], ours["patch_mask"])
    np.testing.assert_allclose(got["pixel_patches"], ours["pixel_patches"], atol=1e-6)
    spatial_shapes = hf["spatial_shapes"]
    with pytest.raises(ValueError, match="spatial_shapes"):
        naflex_inputs_from_transformers(
            hf["pixel_values"], spatial_shapes * 8, hf["pixel_attention_mask"]
        )
    disagree = hf["pixel_attention_mask"].copy()
    disagree[1, 0] = 0  # a mask that disagrees with spatial_shapes
    with pytest.raises(ValueError, match="pixel_attention_mask"):
        naflex_inputs_from_transformers(hf["pixel_values"], spatial_shapes, disagree)
    with pytest.raises(ValueError, match="got shapes"):  # mismatched lengths
        naflex_inputs_from_transformers(
            hf["pixel_values"][:, :-1], spatial_shapes, hf["pixel_attention_mask"]
        )


def _real_patches(out, count):
    return np.asarray(out["pixel_patches"])[:count], np.asarray(out["patch_positions"])[:count]


def test_real_photos_match_big_vision_and_transformers():
    """tests/fixtures/real_images: big_vision's `value_range|resize_to_sequence|patchify`
    and HF's `Siglip2ImageProcessorPil` (measured: both exact), eagerly and in
    tf.data; the two references differ."""
    photos = load_real_photos()
    for name in ("astronaut", "coffee", "tiny"):
        image = photos[f"img/{name}"]
        for match in ("big_vision", "transformers"):
            converter = SigLIP2NaFlexImageConverter(16, 256, match=match)
            outs = [as_numpy(converter(image)),
                    as_numpy(next(iter(tf.data.Dataset.from_tensors(image).map(converter))))]
            for out in outs:
                if match == "big_vision":
                    key = f"bv_naflex16_256/{name}"
                    expected = photos[f"{key}/patches"]
                    grid = np.stack([photos[f"{key}/yidx"], photos[f"{key}/xidx"]], -1)
                else:
                    key = f"hf_naflex16_256/{name}"
                    expected = photos[f"{key}/patches@u8"] / 127.5 - 1.0
                    rows, cols = photos[f"{key}/spatial_shape"]
                    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols),
                                                indexing="ij"), -1).reshape(-1, 2)
                patches, positions = _real_patches(out, len(expected))
                assert int(out["patch_mask"].sum()) == len(expected)
                np.testing.assert_array_equal(positions, grid)
                assert_close_to_reference(patches, expected, max_diff=1e-6, mean_diff=1e-6)
    bv = SigLIP2NaFlexImageConverter(16, 256)(photos["img/astronaut"])
    hf = photos["hf_naflex16_256/astronaut/patches@u8"] / 127.5 - 1.0
    # The references differ by under a level (HF rounds to uint8 levels after its
    # resize; measured: mean 0.0021, max 0.0078), far more than the 1e-6 above.
    assert np.abs(np.asarray(bv["pixel_patches"]) - hf).mean() > 1e-3
    for key, patch, n in (("bv_naflex16_1024", 16, 1024), ("bv_naflex14_729", 14, 729)):
        out = SigLIP2NaFlexImageConverter(patch, n)(photos["img/tiny"])
        expected = photos[f"{key}/tiny/patches"]
        assert_close_to_reference(_real_patches(out, len(expected))[0], expected,
                                  max_diff=1e-6, mean_diff=1e-6)


def test_transformers_mode_equals_the_hf_processor():
    """HF's `Siglip2ImageProcessorPil` itself on scikit-image photos and 1 x 600,
    600 x 1, 7 x 11 images, at two sequence lengths (measured: exact)."""
    for n in (256, 64):
        converter = SigLIP2NaFlexImageConverter(16, n, match="transformers")
        for name, image in skimage_photos().items():
            expected, (rows, cols) = hf_naflex(image, 16, n)
            out = as_numpy(converter(image))
            patches, positions = _real_patches(out, len(expected))
            assert int(out["patch_mask"].sum()) == rows * cols, name
            assert positions[-1].tolist() == [rows - 1, cols - 1], name
            assert_close_to_reference(patches, expected, max_diff=1e-5, mean_diff=1e-6)


def test_match_in_config_and_bad_values():
    converter = SigLIP2NaFlexImageConverter(16, 64, match="transformers")
    assert converter.get_config()["match"] == "transformers"
    assert SigLIP2NaFlexImageConverter.from_config(converter.get_config()).match == "transformers"
    assert SigLIP2NaFlexImageConverter().match == "big_vision"
    with pytest.raises(ValueError, match=r"`match`.*'big_vision', 'transformers'.*'pil'"):
        SigLIP2NaFlexImageConverter(match="pil")
