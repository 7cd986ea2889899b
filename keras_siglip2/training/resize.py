"""Weight resizing for the resolution switch of fixed-resolution SigLIP 2 towers (paper
sec. 2.4): at 95 % of training the learned position embedding is resized to the target
patch grid, and for patch-14 targets the 16 x 16 patch stem is resized to 14 x 14 with
FlexiViT's pseudo-inverse resize (PI-resize, Beyer et al. 2023, sec. 3.4).

Both use the antialiased bilinear resize of `jax.image.resize(..., "bilinear")` (the
separable matrices of `keras_siglip2.layers.position_grid`). PI-resize chooses the new
kernel w' so that a token computed from the resized patch equals the token computed from
the original patch: <resize(x), w'> = <x, w> for every patch x, i.e. B^T w' = w with B the
(q^2 x p^2) resize matrix, solved as w' = pinv(B^T) w. Upsampling (q >= p) makes this exact;
downsampling (16 -> 14) gives the least-squares solution.
All functions work on NumPy arrays (they run once, at the switch) in float64, except
`resize_images`, the in-step resize of training images to a tower's resolution.
"""

import numpy as np
from keras import ops

from keras_siglip2.layers.position_grid import antialiased_bilinear_matrices
from keras_siglip2.checks import check_positive_int


def bilinear_resize_matrix(input_size, output_size):
    """The (output_size x input_size) matrix of the 1-D antialiased bilinear resize."""
    for name, value in (("input_size", input_size), ("output_size", output_size)):
        check_positive_int(name, value)
    matrix = antialiased_bilinear_matrices(
        np.array([output_size], "int32"), int(input_size), int(output_size)
    )[0]
    return np.asarray(ops.convert_to_numpy(matrix), np.float64)


def _grid_pair(grid, name):
    if isinstance(grid, (int, np.integer)):
        grid = (int(grid), int(grid))
    grid = tuple(int(g) for g in grid)
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"`{name}` must be (rows, cols) of positive ints; got {grid!r}.")
    return grid


def resize_position_embedding(embeddings, old_grid, new_grid):
    """Resizes a learned (1, H*W, d) (or (H*W, d)) position embedding laid out on an
    (H, W) patch grid to `new_grid` (H', W'): per channel, A_h @ grid @ A_w^T.

    Returns float64 (1, H'*W', d) (the input's leading axis is kept if it had none).
    """
    embeddings = np.asarray(embeddings, np.float64)
    squeeze = embeddings.ndim == 2
    if squeeze:
        embeddings = embeddings[None]
    (h, w), (nh, nw) = _grid_pair(old_grid, "old_grid"), _grid_pair(new_grid, "new_grid")
    if embeddings.ndim != 3 or embeddings.shape[0] != 1 or embeddings.shape[1] != h * w:
        raise ValueError(
            f"`embeddings` must have shape (1, {h * w}, d) for a {h}x{w} grid; got "
            f"{embeddings.shape}."
        )
    grid = embeddings[0].reshape(h, w, -1)
    a_h, a_w = bilinear_resize_matrix(h, nh), bilinear_resize_matrix(w, nw)
    resized = np.einsum("ai,ijd,bj->abd", a_h, grid, a_w).reshape(1, nh * nw, -1)
    return resized[0] if squeeze else resized


def patch_resize_matrix(old_patch_size, new_patch_size):
    """B (q^2 x p^2): flattened (row-major) p x p patch -> its q x q bilinear resize."""
    a = bilinear_resize_matrix(old_patch_size, new_patch_size)
    return np.kron(a, a)


def pi_resize_patch_kernel(kernel, old_patch_size, new_patch_size, num_channels=3):
    """FlexiViT PI-resize of a linear patch stem.

    Args:
        kernel: (p*p*c, d) flattened-patch kernel in (py, px, c) order (the layout of
            `SigLIP2PatchEmbedding`), or the (p, p, c, d) convolution kernel.
        old_patch_size, new_patch_size: p and q.

    Returns:
        float64 kernel of the same layout for q x q patches.
    """
    kernel = np.asarray(kernel, np.float64)
    p, q, c = int(old_patch_size), int(new_patch_size), int(num_channels)
    conv_layout = kernel.ndim == 4
    if conv_layout:
        if kernel.shape[:3] != (p, p, c):
            raise ValueError(
                f"A conv kernel for patch {p} must have shape ({p}, {p}, {c}, d); got "
                f"{kernel.shape}."
            )
    elif kernel.ndim != 2 or kernel.shape[0] != p * p * c:
        raise ValueError(
            f"`kernel` must have shape ({p * p * c}, d) (flattened {p}x{p}x{c} patches) "
            f"or ({p}, {p}, {c}, d); got {kernel.shape}."
        )
    d = kernel.shape[-1]
    if p == q:
        return kernel.copy()
    w = kernel.reshape(p * p, c * d)  # rows: patch pixels (py, px); cols: (c, d)
    b = patch_resize_matrix(p, q)  # (q*q, p*p)
    resized = np.linalg.pinv(b.T) @ w  # (q*q, c*d)
    if conv_layout:
        return resized.reshape(q, q, c, d)
    return resized.reshape(q * q * c, d)


def resize_patches(patches, new_patch_size):
    """Bilinear (antialiased) resize of (..., p, p, c) patches to q x q: what the
    PI-resized kernel is exact for. Used by tests and for inspection."""
    patches = np.asarray(patches, np.float64)
    p, q = patches.shape[-3], int(new_patch_size)
    a = bilinear_resize_matrix(p, q)
    return np.einsum("ai,...ijc,bj->...abc", a, patches, a)


def resize_images(images, size):
    """(B, H, W, 3) float images in [-1, 1] at (height, width) `size` (antialiased
    bilinear, clipped to [-1, 1]); returned unchanged when already that size. Used in
    the train step (keras.ops): batches made for another stage's resolution, SILC
    local crops, an ACID reference tower at another resolution."""
    size = tuple(int(s) for s in size)
    if tuple(images.shape[1:3]) == size:
        return images
    resized = ops.image.resize(
        ops.cast(images, "float32"), size, interpolation="bilinear", antialias=True
    )
    return ops.clip(resized, -1.0, 1.0)
