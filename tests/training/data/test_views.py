"""Tests of the SILC views (training/data/views.py, augment.py; issue 17 item 3): the
teacher's augmented global view "teacher_images" (random resized crop, flip, colour
jitter) and the published local-crop size (96 px at 224 px globals, DINO / SILC).
References: hand-computed sizes, constant images (a crop or flip of a constant image
is the same constant), and half-black / half-white images (a flip swaps the halves)."""

import numpy as np
import pytest

from keras_siglip2.training.data import augment, sources
from keras_siglip2.training.data.pipeline import image_text_dataset

HOST = {"num_hosts": 1, "host_index": 0}


def test_silc_local_size_by_hand():
    # 96/224 of the global side, rounded to the patch size.
    assert augment.silc_local_size((224, 224), 16) == (96, 96)
    assert augment.silc_local_size((256, 384), 16) == (112, 160)
    assert augment.silc_local_size((512, 512), 16) == (224, 224)
    assert augment.silc_local_size((224, 224), 14) == (98, 98)
    assert augment.silc_local_size((8, 8), 16) == (8, 8)  # never above the global side


def _write(tmp_path, images):
    examples = [{"image": im, "caption": f"image {i}"} for i, im in enumerate(images)]
    return sources.write_tfrecord_shards(tmp_path / "v", examples, 1)


def _batch(path, **kwargs):
    args = dict(batch_size=8, image_size=56, views=("image", "local"), num_local_crops=2,
                patch_size=8, num_epochs=1, seed=3, shuffle=False, **HOST)
    ds = image_text_dataset(path, **{**args, **kwargs})
    return next(ds.as_numpy_iterator())


def test_local_crops_default_to_the_silc_size_and_teacher_view_is_augmented(tmp_path):
    rng = np.random.default_rng(0)
    path = _write(tmp_path, [rng.integers(0, 256, (64, 80, 3), np.uint8) for _ in range(8)])
    batch = _batch(path)
    # 56 * 96 / 224 = 24, a multiple of the patch size 8.
    assert batch["local_images"].shape == (8, 2, 24, 24, 3)
    teacher = batch["teacher_images"]
    assert teacher.shape == batch["images"].shape == (8, 56, 56, 3)
    assert teacher.dtype == np.float32 and -1.0 <= teacher.min() and teacher.max() <= 1.0
    # An augmented view, not the image itself.
    assert all(np.abs(teacher[i] - batch["images"][i]).mean() > 0.05 for i in range(8))
    np.testing.assert_array_equal(_batch(path)["teacher_images"], teacher)  # seeded
    assert not np.array_equal(_batch(path, seed=4)["teacher_images"], teacher)
    assert "teacher_images" not in _batch(path, teacher_crop_scale=None)


def test_teacher_view_crop_flip_and_colour(tmp_path):
    constant = [np.full((40, 40, 3), 100, np.uint8)] * 8
    path = _write(tmp_path, constant)
    plain = _batch(path, teacher_color_jitter=None)["teacher_images"]
    np.testing.assert_allclose(plain, 100 / 127.5 - 1.0, atol=1e-5)  # crop + flip only
    jittered = _batch(path, teacher_jitter_probability=1.0,
                      teacher_grayscale_probability=0.0)["teacher_images"]
    # Brightness x U(0.6, 1.4) changes a constant image (contrast, saturation and hue
    # leave a gray constant unchanged); a factor within 1.3 % of 1 would not show.
    changed = np.abs(jittered - (100 / 127.5 - 1.0)).max(axis=(1, 2, 3)) > 0.01
    assert changed.sum() >= 6
    # Half black / half white: a crop over the whole area keeps the halves, a flip
    # swaps them; both occur (flip with probability 1/2).
    halves = np.zeros((40, 40, 3), np.uint8)
    halves[:, 20:] = 255
    path = _write(tmp_path / "h", [halves] * 8)
    view = _batch(path, teacher_color_jitter=None, teacher_crop_scale=(1.0, 1.0))
    left = view["teacher_images"][:, :, :20].mean(axis=(1, 2, 3))
    right = view["teacher_images"][:, :, 36:].mean(axis=(1, 2, 3))
    flipped = left > right
    assert flipped.any() and (~flipped).any()
    assert (np.abs(left - right) > 1.5).all()


def test_teacher_view_argument_errors(tmp_path):
    path = _write(tmp_path, [np.zeros((8, 8, 3), np.uint8)])
    for kwargs, message in [
        (dict(teacher_crop_scale=(0.0, 1.0)), "`teacher_crop_scale`"),
        (dict(teacher_jitter_probability=1.5), "`teacher_jitter_probability`"),
        (dict(teacher_color_jitter=(0.4, 0.4)), "`teacher_color_jitter`"),
    ]:
        with pytest.raises(ValueError, match=message):
            _batch(path, **kwargs)
