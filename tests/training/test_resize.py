"""Weight resizing for the 95 % resolution switch (paper sec. 2.4): bilinear resize of
the position embedding and FlexiViT's PI-resize of the patch stem, checked against
jax.image.resize and against their defining properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from keras_siglip2.training.resize import (
    bilinear_resize_matrix,
    patch_resize_matrix,
    pi_resize_patch_kernel,
    resize_patches,
    resize_position_embedding,
)


@pytest.mark.parametrize("n, m", [(4, 6), (6, 4), (16, 14), (14, 16), (3, 3), (5, 1)])
def test_resize_matrix_matches_jax_image_resize(n, m):
    x = np.random.RandomState(0).normal(size=(n,)).astype("float32")
    expected = jax.image.resize(jnp.asarray(x), (m,), method="bilinear", antialias=True)
    np.testing.assert_allclose(bilinear_resize_matrix(n, m) @ x, expected, atol=2e-6)


@pytest.mark.parametrize("old, new", [((4, 4), (6, 6)), ((6, 6), (4, 4)), ((2, 3), (5, 2))])
def test_position_embedding_resize_matches_jax(old, new):
    rng = np.random.RandomState(1)
    emb = rng.normal(size=(1, old[0] * old[1], 5)).astype("float32")
    out = resize_position_embedding(emb, old, new)
    assert out.shape == (1, new[0] * new[1], 5)
    grid = jnp.asarray(emb[0].reshape(*old, 5))
    expected = jax.image.resize(grid, (*new, 5), method="bilinear", antialias=True)
    np.testing.assert_allclose(out[0].reshape(*new, 5), expected, atol=3e-6)


def test_position_embedding_same_size_is_identity():
    emb = np.random.RandomState(2).normal(size=(1, 9, 4))
    np.testing.assert_allclose(resize_position_embedding(emb, 3, 3), emb, atol=1e-12)
    np.testing.assert_allclose(resize_position_embedding(emb[0], 3, 3), emb[0], atol=1e-12)


def test_position_embedding_bad_shape():
    with pytest.raises(ValueError, match=r"\(1, 16, d\)"):
        resize_position_embedding(np.zeros((1, 9, 4)), 4, 6)


def test_patch_resize_matrix_matches_jax():
    patch = np.random.RandomState(3).normal(size=(8, 8)).astype("float32")
    expected = jax.image.resize(jnp.asarray(patch), (12, 12), method="bilinear", antialias=True)
    np.testing.assert_allclose(
        (patch_resize_matrix(8, 12) @ patch.reshape(-1)).reshape(12, 12), expected, atol=2e-6
    )
    np.testing.assert_allclose(
        resize_patches(patch[..., None], 12)[..., 0], expected, atol=2e-6
    )


def test_pi_resize_upsampling_keeps_every_token():
    """q >= p: <resize(x), w'> == <x, w> for every patch x (FlexiViT's PI-resize)."""
    rng = np.random.RandomState(4)
    p, q, c, d = 4, 6, 3, 5
    kernel = rng.normal(size=(p * p * c, d))
    new = pi_resize_patch_kernel(kernel, p, q)
    assert new.shape == (q * q * c, d)
    patches = rng.normal(size=(10, p, p, c))
    tokens = patches.reshape(10, -1) @ kernel
    resized_tokens = resize_patches(patches, q).reshape(10, -1) @ new
    np.testing.assert_allclose(resized_tokens, tokens, atol=1e-9)
    # A plain bilinear resize of the kernel does not have this property.
    naive = resize_patches(kernel.reshape(p, p, c, d).transpose(3, 0, 1, 2), q)
    naive = naive.transpose(1, 2, 3, 0).reshape(q * q * c, d)
    assert np.abs(resize_patches(patches, q).reshape(10, -1) @ naive - tokens).max() > 0.1


def test_pi_resize_16_to_14_is_the_least_squares_solution():
    rng = np.random.RandomState(5)
    p, q, c, d = 16, 14, 3, 4
    kernel = rng.normal(size=(p, p, c, d))  # conv layout
    new = pi_resize_patch_kernel(kernel, p, q)
    assert new.shape == (q, q, c, d)
    b = patch_resize_matrix(p, q)  # (q^2, p^2)
    target = kernel.reshape(p * p, c * d)
    expected, *_ = np.linalg.lstsq(b.T, target, rcond=None)
    np.testing.assert_allclose(new.reshape(q * q, c * d), expected, atol=1e-8)
    # Flattened (py, px, c) layout gives the same kernel.
    flat = pi_resize_patch_kernel(kernel.reshape(p * p * c, d), p, q)
    np.testing.assert_allclose(flat, new.reshape(q * q * c, d), atol=1e-12)


def test_pi_resize_same_patch_is_identity_and_bad_shapes():
    kernel = np.random.RandomState(6).normal(size=(4 * 4 * 3, 2))
    np.testing.assert_array_equal(pi_resize_patch_kernel(kernel, 4, 4), kernel)
    with pytest.raises(ValueError, match="flattened"):
        pi_resize_patch_kernel(np.zeros((10, 2)), 4, 6)
    with pytest.raises(ValueError, match="conv kernel"):
        pi_resize_patch_kernel(np.zeros((4, 4, 1, 2)), 4, 6)
    with pytest.raises(ValueError, match="output_size"):
        bilinear_resize_matrix(4, 0)
