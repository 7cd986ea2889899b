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


def _sample_and_kernel_scale(indices, output_sizes, input_size):
    """(sample_i, ks) of the antialiased bilinear resize for output positions `indices`
    (..., K) of sides `output_sizes` (...): both float32 (..., K, 1)."""
    m = ops.maximum(ops.cast(output_sizes, "float32"), 1.0)[..., None, None]
    i = ops.cast(indices, "float32")[..., None]
    i = ops.minimum(ops.maximum(i, 0.0), m - 1.0)
    inv_scale = float(input_size) / m  # 1 / scale, scale = m / n
    kernel_scale = ops.maximum(inv_scale, 1.0)  # antialias: widen the kernel when shrinking
    return (i + 0.5) * inv_scale - 0.5, kernel_scale


def _normalized_triangle(j, sample, kernel_scale):
    """max(0, 1 - |j - sample| / ks), divided by its sum over the last axis."""
    weights = ops.relu(1.0 - ops.abs(j - sample) / kernel_scale)
    # sample lies in [-0.5, n - 0.5], so some j is within 0.5 of it: the sum is >= 0.5.
    total = ops.maximum(ops.sum(weights, axis=-1, keepdims=True), 1e-12)
    return weights / total


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
    sample, kernel_scale = _sample_and_kernel_scale(indices, output_sizes, input_size)
    j = ops.arange(input_size, dtype="float32")
    return _normalized_triangle(j, sample, kernel_scale)


# Nonzeros of a row of A when the side shrinks by at most 2 (m >= n / 2): ks <= 2, so
# the weights are > 0 only on the open interval (sample - ks, sample + ks), which holds
# at most 4 integers.
TAPS = 4


def antialiased_bilinear_taps(indices, output_sizes, input_size):
    """The nonzero window of each row of A, for sides m >= input_size / 2.

    Returns (start, weights): int32 (..., K) first column of the window (clipped so the
    window fits in [0, n)) and float32 (..., K, TAPS) the row's values A[i, start + t]
    (those of `antialiased_bilinear_rows`; the row's other entries are 0). For smaller
    sides the window misses nonzeros: callers check `taps_cover(...)` first.
    """
    sample, kernel_scale = _sample_and_kernel_scale(indices, output_sizes, input_size)
    first = ops.floor(sample - kernel_scale) + 1.0  # the first j with |j - sample| < ks
    start = ops.clip(first, 0.0, float(max(input_size - TAPS, 0)))
    j = start + ops.arange(min(TAPS, input_size), dtype="float32")
    return ops.cast(start[..., 0], "int32"), _normalized_triangle(j, sample, kernel_scale)


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


def _tap_embeddings(grid, rows, cols, shapes):
    """Each patch's embedding as the sum of its <= TAPS x TAPS nonzero terms
    (`antialiased_bilinear_taps` per side), the grid rows read by index: 1/16 of the
    matmul's multiply-adds at G = 16. Exact only where `taps_cover(shapes, grid)`."""
    g_h, g_w, dim = grid.shape
    flat = ops.reshape(ops.cast(grid, "float32"), (g_h * g_w, dim))
    start_r, w_rows = antialiased_bilinear_taps(rows, shapes[:, 0], g_h)  # (B, N), (B, N, T)
    start_c, w_cols = antialiased_bilinear_taps(cols, shapes[:, 1], g_w)
    out = None
    # The weights factor per side: each row of taps is summed over its columns first,
    # then scaled by that row's weight (measured 0.8x the time of summing the 16
    # products w_row * w_col * grid on CPU; not profiled further). One term per tap,
    # written out: XLA fuses the gathers and multiply-adds into one loop (an einsum
    # over a gathered (B, N, T, T, d) tensor would materialize it).
    for a in range(w_rows.shape[-1]):
        row = None
        for b in range(w_cols.shape[-1]):
            index = (start_r + a) * g_w + start_c + b
            term = w_cols[..., b, None] * ops.take(flat, index, axis=0)
            row = term if row is None else row + term
        row = w_rows[..., a, None] * row
        out = row if out is None else out + row
    return out


def taps_cover(shapes, grid):
    """True when every (h, w) in `shapes` (B, 2) is at least half the grid's side, so
    `antialiased_bilinear_taps` holds all of every row's nonzeros."""
    g_h, g_w = grid.shape[0], grid.shape[1]
    return ops.logical_and(ops.all(2 * shapes[:, 0] >= g_h), ops.all(2 * shapes[:, 1] >= g_w))


def position_embeddings(grid, patch_positions, patch_mask=None, gather=False):
    """The resized (G_h, G_w, d) grid at every patch, for a whole batch at once.

    Each image's grid shape (h, w) is 1 + the largest (row, col) of its real patches;
    patch n of image b gets sum_ij A_h[r, i] * grid[i, j] * A_w[c, j] for its
    (r, c) = patch_positions[b, n]: one (B, N, G_h * G_w) @ (G_h * G_w, d) matmul,
    no Python loop over images and no per-shape recompilation. Padding entries
    (patch_mask 0) get cell (0, 0) of their image's resized grid.

    `gather=True` (inference): when every image's sides are >= G / 2 (no side shrinks
    the grid more than 2x, e.g. aspect ratios up to 4:1 at 256 patches, G = 16), each
    patch's embedding is instead summed from its <= 4 x 4 nonzero terms, the grid rows
    read by index (`ops.cond`; otherwise the matmul runs). Same numbers to float32
    rounding; the forward costs about half the matmul's time on CPU, but its gradient
    is a scatter-add (slower than the matmul's), so training keeps the matmul.

    Args:
        grid: (G_h, G_w, d) learned grid.
        patch_positions: (B, N, 2) int (row, col).
        patch_mask: optional (B, N), 1 = real patch, 0 = padding.
        gather: bool, see above.

    Returns:
        float32 (B, N, d).
    """
    grid = ops.convert_to_tensor(grid)
    g_h, g_w, dim = grid.shape
    positions = _masked_positions(patch_positions, patch_mask)
    shapes = grid_shapes_from_positions(positions)
    rows, cols = positions[..., 0], positions[..., 1]

    def matmul():
        w_rows = antialiased_bilinear_rows(rows, shapes[:, 0], g_h)  # (B, N, G_h)
        w_cols = antialiased_bilinear_rows(cols, shapes[:, 1], g_w)  # (B, N, G_w)
        weights = w_rows[..., :, None] * w_cols[..., None, :]  # (B, N, G_h, G_w)
        batch, length = ops.shape(weights)[0], ops.shape(weights)[1]
        weights = ops.reshape(weights, (batch, length, g_h * g_w))
        return ops.matmul(weights, ops.reshape(ops.cast(grid, "float32"), (g_h * g_w, dim)))

    if not gather:
        return matmul()
    return ops.cond(
        taps_cover(shapes, grid), lambda: _tap_embeddings(grid, rows, cols, shapes), matmul
    )


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

    def position_embeddings(self, patch_positions, patch_mask=None, gather=False):
        """The (B, N, d) float32 embeddings of each patch (before adding); `gather`:
        see the function `position_embeddings`."""
        return position_embeddings(self.grid, patch_positions, patch_mask, gather=gather)

    def call(self, tokens, patch_positions, patch_mask=None, training=None):
        # Inference reads the grid rows by index where it can (`gather=True`); training
        # keeps the matmul, whose gradient is a matmul too.
        embeddings = self.position_embeddings(patch_positions, patch_mask, gather=not training)
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
    "antialiased_bilinear_taps",
    "grid_shapes_from_positions",
    "position_embeddings",
    "position_embeddings_per_image_loop",
    "resize_position_grid",
    "taps_cover",
]
