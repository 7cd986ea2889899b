"""patch_features: patch tokens laid out on the patch grid (fixed and NaFlex; the layout
is checked by perturbing one patch of a tower without attention layers, so only its
own feature may change), and LinearProbe learning segmentation and depth targets."""

import keras
import numpy as np
import pytest

from keras_siglip2.models import SigLIP2NaFlexVisionEncoder, SigLIP2VisionEncoder
from keras_siglip2.tasks import LinearProbe, patch_features
from keras_siglip2.tasks.dense_features import scatter_to_grids


def changed_cells(a, b):
    return sorted(map(tuple, np.argwhere(np.abs(a - b).max(axis=-1) > 1e-6).tolist()))


def test_fixed_layout():
    keras.utils.set_random_seed(0)
    # No encoder block: every token depends on its own patch only.
    encoder = SigLIP2VisionEncoder(8, 32, 0, 2, 64, image_size=(32, 48))
    rng = np.random.RandomState(0)
    images = rng.uniform(-1, 1, (2, 32, 48, 3)).astype("float32")
    maps = patch_features(encoder, images)
    assert maps.shape == (2, 4, 6, 32) and maps.dtype == np.float32
    perturbed = images.copy()
    perturbed[1, 16:24, 40:48] = -perturbed[1, 16:24, 40:48]  # patch (row 2, col 5)
    after = patch_features(encoder, {"images": perturbed})
    assert changed_cells(maps[0], after[0]) == []
    assert changed_cells(maps[1], after[1]) == [(2, 5)]
    # Row-major like the token sequence of the tower.
    tokens = np.asarray(encoder.get_tokens(images))
    np.testing.assert_array_equal(maps[1, 2, 5], tokens[1, 2 * 6 + 5])


def naflex_inputs(images, patch, length):
    """Patchify (H, W, 3) images (sides multiples of `patch`) without resizing, in a
    shuffled order, padded to `length`."""
    rng = np.random.RandomState(1)
    pixel, positions, mask = [], [], []
    for image in images:
        h, w = image.shape[0] // patch, image.shape[1] // patch
        patches = image.reshape(h, patch, w, patch, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, -1)
        pos = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
        order = rng.permutation(h * w)
        pad = length - h * w
        pixel.append(np.concatenate([patches[order], np.zeros((pad, patches.shape[1]))]))
        positions.append(np.concatenate([pos[order], np.zeros((pad, 2))]))
        mask.append(np.concatenate([np.ones(h * w), np.zeros(pad)]))
    return {
        "pixel_patches": np.stack(pixel).astype("float32"),
        "patch_positions": np.stack(positions).astype("int32"),
        "patch_mask": np.stack(mask).astype("int32"),
    }


def test_naflex_layout():
    keras.utils.set_random_seed(0)
    encoder = SigLIP2NaFlexVisionEncoder(8, 32, 0, 2, 64, position_grid_size=4, max_num_patches=16)
    rng = np.random.RandomState(0)
    images = [rng.uniform(-1, 1, (16, 48, 3)), rng.uniform(-1, 1, (24, 8, 3))]
    maps = patch_features(encoder, naflex_inputs(images, 8, 16))
    assert [m.shape for m in maps] == [(2, 6, 32), (3, 1, 32)]
    images[0][8:16, 24:32] *= -1  # patch (1, 3) of the first image
    after = patch_features(encoder, naflex_inputs(images, 8, 16))
    assert changed_cells(maps[0], after[0]) == [(1, 3)]
    assert changed_cells(maps[1], after[1]) == []


def test_scatter_to_grids_by_hand():
    tokens = np.arange(2 * 4 * 1, dtype=np.float32).reshape(2, 4, 1)
    positions = np.array([[[0, 1], [0, 0], [9, 9], [1, 1]], [[0, 0], [1, 0], [2, 0], [5, 5]]])
    mask = np.array([[1, 1, 0, 1], [1, 1, 1, 0]])
    grids = scatter_to_grids(tokens, positions, mask)
    np.testing.assert_array_equal(grids[0][..., 0], [[1, 0], [0, 3]])  # (1, 0) never set
    np.testing.assert_array_equal(grids[1][..., 0], [[4], [5], [6]])


def test_raw_images_through_the_preprocessor(fixed_model, naflex_model, image_dir):
    _, paths = image_dir
    backbone, preprocessor = fixed_model
    maps = patch_features(backbone, paths[:3], preprocessor=preprocessor)
    assert maps.shape == (3, 2, 2, backbone.embedding_dim)
    nbackbone, npreprocessor = naflex_model
    nmaps = patch_features(nbackbone, paths[:3], preprocessor=npreprocessor)
    # (16, 16), (24, 16), (20, 30) pixels with at most 16 patches of 8: aspect kept.
    for m, (h, w) in zip(nmaps, [(16, 16), (24, 16), (20, 30)]):
        assert m.shape[0] * m.shape[1] <= 16
        assert abs(m.shape[0] / m.shape[1] - h / w) < 0.5
    with pytest.raises(TypeError, match="must be a SigLIP2Backbone"):
        patch_features(keras.layers.Dense(2), paths[:1])


def test_linear_probe_segmentation():
    keras.utils.set_random_seed(0)
    rng = np.random.RandomState(0)
    features = rng.normal(size=(32, 4, 4, 8)).astype("float32")
    weights = rng.normal(size=(8, 3))
    labels = np.argmax(features @ weights, axis=-1)  # linearly separable classes
    probe = LinearProbe(8, 3)
    probe.compile(optimizer=keras.optimizers.Adam(0.05))
    history = probe.fit(features, labels, epochs=60, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] / 3
    accuracy = np.mean(probe.predict_classes(features) == labels)
    assert accuracy > 0.9, accuracy
    # Upsampled to the label resolution.
    big = LinearProbe(8, 3, output_size=(16, 16))
    assert big.predict(features[:2], verbose=0).shape == (2, 16, 16, 3)
    restored = LinearProbe.from_config(big.get_config())
    assert restored.output_size == (16, 16) and restored.task == "segmentation"


def test_linear_probe_depth(fixed_model, image_dir):
    keras.utils.set_random_seed(0)
    rng = np.random.RandomState(1)
    features = rng.normal(size=(32, 4, 4, 8)).astype("float32")
    depth = (features @ rng.normal(size=(8, 1)) + 2.0).astype("float32")
    probe = LinearProbe(8, 1, task="depth")
    probe.compile(optimizer=keras.optimizers.Adam(0.05))
    probe.fit(features, depth, epochs=150, batch_size=32, verbose=0)
    mse = float(np.mean((probe.predict(features, verbose=0) - depth) ** 2))
    assert mse < 0.01 * np.var(depth), (mse, np.var(depth))
    with pytest.raises(ValueError, match="for task='segmentation'"):
        probe.predict_classes(features)
    # On real patch features of the tiny model: trains and predicts per patch.
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    maps = patch_features(backbone, paths[:4], preprocessor=preprocessor)
    real = LinearProbe(maps.shape[-1], 1, task="depth")
    real.compile()
    real.fit(maps, np.ones(maps.shape[:3] + (1,), "float32"), epochs=1, verbose=0)
    assert real.predict(maps, verbose=0).shape == maps.shape[:3] + (1,)


def test_linear_probe_bad_arguments():
    with pytest.raises(ValueError, match="`task` must be one of"):
        LinearProbe(8, 2, task="detection")
    with pytest.raises(ValueError, match="`num_outputs` must be an integer >= 1"):
        LinearProbe(8, 0)
    with pytest.raises(ValueError, match="`output_size` must be None or"):
        LinearProbe(8, 2, output_size=(4,))
