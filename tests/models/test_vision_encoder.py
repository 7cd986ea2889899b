"""The fixed-resolution image tower at another resolution (`any_resolution=True`), as
the SILC student sees small local crops (paper sec. 2.3): the position embedding is
resized to the crop's patch grid with the resolution switch's resize."""

import numpy as np
import pytest

from keras_siglip2 import SigLIP2VisionEncoder
from keras_siglip2.training.resize import resize_position_embedding

SIZES = dict(patch_size=4, hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=48)


@pytest.fixture(scope="module")
def encoder():
    return SigLIP2VisionEncoder(image_size=(16, 24), **SIZES)


def images(height, width, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (2, height, width, 3)).astype("float32")


def test_own_resolution_unchanged(encoder):
    x = images(16, 24)
    pooled, tokens = encoder.get_pooled_and_tokens(x)
    pooled_any, tokens_any = encoder.get_pooled_and_tokens(x, any_resolution=True)
    np.testing.assert_array_equal(np.asarray(tokens_any), np.asarray(tokens))
    np.testing.assert_allclose(np.asarray(encoder(x)), np.asarray(pooled), atol=1e-6)


@pytest.mark.parametrize("size", [(8, 12), (12, 8), (24, 36)])
def test_other_resolution_equals_a_resized_tower(encoder, size):
    """Same as a tower built at that resolution holding the resized embedding
    (float64 reference resize of training/resize.py); 1e-5."""
    other = SigLIP2VisionEncoder(image_size=size, **SIZES)
    for source, target in zip(encoder.weights, other.weights):
        if "position_embedding" in source.path:
            grid = (size[0] // 4, size[1] // 4)
            target.assign(resize_position_embedding(np.asarray(source), encoder.grid_size, grid))
        else:
            target.assign(source)
    x = images(*size, seed=1)
    pooled, tokens = encoder.get_pooled_and_tokens(x, any_resolution=True)
    assert tokens.shape == (2, (size[0] // 4) * (size[1] // 4), 32)
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(other(x)), atol=1e-5)


def test_resolution_errors(encoder):
    with pytest.raises(ValueError, match="must be 16x24"):
        encoder.get_tokens(images(8, 12))
    with pytest.raises(ValueError, match="at least one patch"):
        encoder.get_tokens(images(2, 12), any_resolution=True)
