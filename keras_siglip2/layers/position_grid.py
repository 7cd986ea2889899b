"""Learned 2-D position grid of the NaFlex image tower (paper sec. 2.4; big_vision
`naflex_vit.py`, HF `Siglip2VisionEmbeddings`).

The grid (G, G, d) (G = 16 in the released checkpoints) is resized to each image's patch
grid (h, w) with *antialiased bilinear* interpolation (jax.image.scale_and_translate /
torch `interpolate(..., antialias=True)`), and each patch gets the resized embedding at
its (row, col). The resize is separable: resized = A_h @ grid @ A_w^T (per channel), where
for an input side n and an output side m (scale = m / n, ks = max(1 / scale, 1)):

    sample_i = (i + 0.5) / scale - 0.5
    A[i, j]  = max(0, 1 - |j - sample_i| / ks),  each row divided by its sum.

Hence a patch at (r, c) needs only row r of A_h and row c of A_w:

    pos[r, c] = sum_ij A_h[r, i] * grid[i, j] * A_w[c, j]

`SigLIP2PositionGrid` computes exactly those rows, directly at each patch's position, so its
work and memory are O(B * N * G^2) whatever the image shapes: no (B, h_max, w_max, d)
resized grid is materialized, there is no per-side cap (big_vision resizes to a static
64 x 64 canvas and returns NaN beyond it), every shape is static for a given sequence
length (one XLA compilation per length), and there is no Python loop over images.
`position_embeddings` is that computation as a function of the grid;
`antialiased_bilinear_matrices` / `resize_position_grid` give the same numbers in matrix
form (tests, inspection, conversion), and `position_embeddings_per_image_loop` the same
numbers the reference way, one image at a time in a Python loop (tests, benchmark)."""

import keras
import numpy as np
from keras import ops

from keras_siglip2.layers.initializers import embedding_init


def antialiased_bilinear_rows(indices, output_sizes, input_size):
    """Rows of the antialiased bilinear resize matrix A (output side m -> input side n).

    Args:
        indices: (..., K) int output positions i (clipped into [0, m - 1]).
        output_sizes: (...) int output sides m (one per leading index; values < 1 are
            treated as 1, so the result is always finite).
        input_size: int n, the static input side (the grid size G).

    Returns:
        float32 (..., K, n): row i of A for each index; each row sums to 1.
    """
    m = ops.maximum(ops.cast(output_sizes, "float32"), 1.0)[..., None, None]
    n = float(input_size)
    i = ops.cast(indices, "float32")[..., None]
    i = ops.minimum(ops.maximum(i, 0.0), m - 1.0)
    inv_scale = n / m  # 1 / scale, scale = m / n
    kernel_scale = ops.maximum(inv_scale, 1.0)  # antialias: widen the kernel when shrinking
    sample = (i + 0.5) * inv_scale - 0.5
    j = ops.arange(input_size, dtype="float32")
    weights = ops.relu(1.0 - ops.abs(j - sample) / kernel_scale)
    # sample lies in [-0.5, n - 0.5], so some j is within 0.5 of it: the sum is >= 0.5.
    total = ops.maximum(ops.sum(weights, axis=-1, keepdims=True), 1e-12)
    return weights / total


def antialiased_bilinear_matrices(output_sizes, input_size, max_output_size):
    """Resize matrices A_b (m_b x n) for a batch of output sides in one computation.

    Args:
        output_sizes: (B,) int output sides m_b.
        input_size: int n.
        max_output_size: static int >= max(m_b); the matrices are zero-padded to it.

    Returns:
        float32 (B, max_output_size, input_size): rows i < m_b hold A_b, rows beyond are 0.
    """
    output_sizes = ops.convert_to_tensor(output_sizes, "int32")
    batch = ops.shape(output_sizes)[0]
    i = ops.broadcast_to(
        ops.arange(max_output_size, dtype="int32")[None, :], (batch, max_output_size)
    )
    rows = antialiased_bilinear_rows(i, output_sizes, input_size)
    valid = ops.cast(i < output_sizes[:, None], rows.dtype)[..., None]
    return rows * valid


def resize_position_grid(grid, grid_shapes, max_height, max_width):
    """Resizes a (G_h, G_w, d) grid to each (h_b, w_b) in `grid_shapes` (B, 2).

    Returns (B, max_height, max_width, d); entries outside an image's (h_b, w_b) are 0.
    Computed as one batched A_h @ grid @ A_w^T.
    """
    grid = ops.convert_to_tensor(grid)
    grid_shapes = ops.convert_to_tensor(grid_shapes, "int32")
    a_h = antialiased_bilinear_matrices(grid_shapes[:, 0], grid.shape[0], max_height)
    a_w = antialiased_bilinear_matrices(grid_shapes[:, 1], grid.shape[1], max_width)
    grid = ops.cast(grid, "float32")
    rows_resized = ops.einsum("bhi,ijd->bhjd", a_h, grid)  # (B, max_height, G_w, d)
    return ops.einsum("bwj,bhjd->bhwd", a_w, rows_resized)


def _masked_positions(patch_positions, patch_mask):
    """int32 (B, N, 2) positions with padding entries moved to (0, 0)."""
    positions = ops.cast(patch_positions, "int32")
    if patch_mask is not None:
        real = ops.cast(patch_mask, "bool")[..., None]
        positions = ops.where(real, positions, ops.zeros_like(positions))
    return positions


def grid_shapes_from_positions(patch_positions, patch_mask=None):
    """(h, w) of each image's patch grid: 1 + the largest row / column of its real patches.

    Args:
        patch_positions: (B, N, 2) int (row, col).
        patch_mask: optional (B, N), nonzero/True = real patch.

    Returns:
        int32 (B, 2), at least 1 per side.
    """
    positions = _masked_positions(patch_positions, patch_mask)
    return ops.maximum(ops.max(positions, axis=1) + 1, 1)


def position_embeddings(grid, patch_positions, patch_mask=None):
    """The resized (G_h, G_w, d) grid at every patch, for a whole batch at once.

    Each image's grid shape (h, w) is 1 + the largest (row, col) of its real patches;
    patch n of image b gets sum_ij A_h[r, i] * grid[i, j] * A_w[c, j] for its
    (r, c) = patch_positions[b, n]: one (B, N, G_h * G_w) @ (G_h * G_w, d) matmul,
    no Python loop over images and no per-shape recompilation. Padding entries
    (patch_mask 0) get cell (0, 0) of their image's resized grid.

    Args:
        grid: (G_h, G_w, d) learned grid.
        patch_positions: (B, N, 2) int (row, col).
        patch_mask: optional (B, N), 1 = real patch, 0 = padding.

    Returns:
        float32 (B, N, d).
    """
    grid = ops.convert_to_tensor(grid)
    g_h, g_w, dim = grid.shape
    positions = _masked_positions(patch_positions, patch_mask)
    shapes = grid_shapes_from_positions(positions)
    rows, cols = positions[..., 0], positions[..., 1]
    w_rows = antialiased_bilinear_rows(rows, shapes[:, 0], g_h)  # (B, N, G_h)
    w_cols = antialiased_bilinear_rows(cols, shapes[:, 1], g_w)  # (B, N, G_w)
    weights = w_rows[..., :, None] * w_cols[..., None, :]  # (B, N, G_h, G_w)
    batch, length = ops.shape(weights)[0], ops.shape(weights)[1]
    weights = ops.reshape(weights, (batch, length, g_h * g_w))
    return ops.matmul(weights, ops.reshape(ops.cast(grid, "float32"), (g_h * g_w, dim)))


def position_embeddings_per_image_loop(grid, patch_positions, patch_mask=None):
    """Reference for `position_embeddings`: the same numbers computed the way the
    reference implementations do it, one image at a time in a Python loop (resize the
    grid to that image's exact (h, w), then gather each patch's cell), as HF's
    `Siglip2VisionEmbeddings.resize_positional_embeddings` loops over the batch.

    Needs concrete (eager) positions and mask: the per-image shapes drive the loop,
    so under `jit` every new (h, w) is a new program. Used by tests and by the
    benchmark's "batched vs per-image loop" row; the model never calls it.

    Args / returns: as `position_embeddings` (float32 (B, N, d)).
    """
    grid = ops.convert_to_tensor(grid)
    dim = grid.shape[-1]
    positions = np.asarray(ops.convert_to_numpy(patch_positions)).astype("int64")
    if patch_mask is None:
        mask = np.ones(positions.shape[:2], bool)
    else:
        mask = np.asarray(ops.convert_to_numpy(patch_mask)).astype(bool)
    outputs = []
    for b in range(positions.shape[0]):
        real = positions[b][mask[b]]
        h, w = (max(int(v) + 1, 1) for v in real.max(axis=0)) if real.size else (1, 1)
        rows = np.where(mask[b], positions[b, :, 0], 0)
        cols = np.where(mask[b], positions[b, :, 1], 0)
        resized = resize_position_grid(grid, np.array([[h, w]], "int32"), h, w)[0]
        flat = ops.reshape(resized, (h * w, dim))
        outputs.append(ops.take(flat, ops.convert_to_tensor(rows * w + cols, "int32"), axis=0))
    return ops.stack(outputs)


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2PositionGrid(keras.layers.Layer):
    """Learned (G, G, d) position grid, resized per image and added to the patch tokens.

    Args:
        grid_size: int G (16 in the SigLIP 2 NaFlex releases).
        hidden_dim: int d.

    Call: `layer(tokens, patch_positions, patch_mask=None)` with tokens (B, N, d),
    patch_positions (B, N, 2) int (row, col) and patch_mask (B, N) (1 = real patch)
    returns tokens + the resized embedding at each patch's (row, col). Each image's grid
    shape is 1 + its largest real row / column (as in big_vision); padding entries get
    the embedding of cell (0, 0) (as in big_vision and HF), their positions are ignored.
    """

    def __init__(self, grid_size, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = grid_size
        self.hidden_dim = hidden_dim

    def build(self, *args, **kwargs):
        self.grid = self.add_weight(
            shape=(self.grid_size, self.grid_size, self.hidden_dim),
            initializer=embedding_init(self.hidden_dim),
            name="grid",
        )
        self.built = True

    def position_embeddings(self, patch_positions, patch_mask=None):
        """The (B, N, d) float32 embeddings of each patch (before adding)."""
        return position_embeddings(self.grid, patch_positions, patch_mask)

    def call(self, tokens, patch_positions, patch_mask=None):
        embeddings = self.position_embeddings(patch_positions, patch_mask)
        return tokens + ops.cast(embeddings, tokens.dtype)

    def resized(self, height, width):
        """The grid resized to one (height, width) patch grid: (height, width, d)."""
        shapes = ops.convert_to_tensor([[height, width]], "int32")
        return resize_position_grid(self.grid, shapes, height, width)[0]

    def compute_output_shape(self, tokens_shape, *args, **kwargs):
        return tokens_shape

    def get_config(self):
        config = super().get_config()
        config.update({"grid_size": self.grid_size, "hidden_dim": self.hidden_dim})
        return config


__all__ = [
    "SigLIP2PositionGrid",
    "antialiased_bilinear_matrices",
    "antialiased_bilinear_rows",
    "grid_shapes_from_positions",
    "position_embeddings",
    "position_embeddings_per_image_loop",
    "resize_position_grid",
]
