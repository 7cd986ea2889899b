"""SigLIP2PositionGrid and the antialiased bilinear resize of the NaFlex position grid."""

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_siglip2.layers.position_grid import (  # noqa: E402
    SigLIP2PositionGrid,
    antialiased_bilinear_matrices,
    antialiased_bilinear_rows,
    antialiased_bilinear_taps,
    grid_shapes_from_positions,
    position_embeddings,
    position_embeddings_per_image_loop,
    resize_position_grid,
    taps_cover,
)

# Output grids of DESIGN.md (from a 16 x 16 grid), plus the extremes.
SHAPES = [(1, 1), (3, 80), (80, 12), (7, 32), (64, 64), (100, 3), (16, 16), (1, 200)]


def reference_matrix(m, n):
    """float64 antialiased bilinear resize matrix (m x n), straight from the formula."""
    scale = m / n
    ks = max(1.0 / scale, 1.0)
    a = np.zeros((m, n), np.float64)
    for i in range(m):
        sample = (i + 0.5) / scale - 0.5
        for j in range(n):
            a[i, j] = max(0.0, 1.0 - abs(j - sample) / ks)
        a[i] /= a[i].sum()
    return a


def reference_resize(grid, h, w):
    grid = np.asarray(grid, np.float64)
    a_h, a_w = reference_matrix(h, grid.shape[0]), reference_matrix(w, grid.shape[1])
    return np.einsum("ai,ijd,bj->abd", a_h, grid, a_w)


def grid_positions(h, w):
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([r.ravel(), c.ravel()], -1).astype("int32")


@pytest.fixture(scope="module")
def grid16():
    return np.random.default_rng(0).normal(size=(16, 16, 8)).astype("float32") / 8**0.5


def test_reference_matches_jax_scale_and_translate(grid16):
    """The float64 formula is what jax.image.scale_and_translate(antialias=True) does."""

    @functools.partial(jax.jit, static_argnums=(1, 2, 3))
    def jax_resize(grid, h, w, method):
        return jax.image.scale_and_translate(
            grid,
            shape=(h, w, grid.shape[-1]),
            spatial_dims=(0, 1),
            scale=jax.numpy.array([h / 16, w / 16], "float32"),
            translation=jax.numpy.zeros(2, "float32"),
            method=method,
            antialias=True,
        )

    cases = [(h, w, "linear") for h, w in SHAPES[:6]] + [(3, 80, "bilinear")]
    for h, w, method in cases:
        ref = np.asarray(jax_resize(grid16, h, w, method))
        np.testing.assert_allclose(reference_resize(grid16, h, w), ref, atol=5e-6, rtol=0)


def test_matrices_batched_and_padded():
    sizes = np.array([1, 3, 80, 7, 16, 100], "int32")
    mats = np.asarray(antialiased_bilinear_matrices(sizes, 16, 128))
    assert mats.shape == (6, 128, 16)
    for b, m in enumerate(sizes):
        np.testing.assert_allclose(mats[b, :m], reference_matrix(m, 16), atol=1e-6)
        assert not mats[b, m:].any()


def test_resize_position_grid_matches_reference(grid16):
    shapes = np.array(SHAPES, "int32")
    resize = jax.jit(resize_position_grid, static_argnums=(2, 3))
    out = np.asarray(resize(grid16, shapes, 100, 200))
    assert np.isfinite(out).all()
    for b, (h, w) in enumerate(SHAPES):
        np.testing.assert_allclose(out[b, :h, :w], reference_resize(grid16, h, w), atol=2e-6)
        assert not out[b, h:].any() and not out[b, :, w:].any()


def test_rows_are_always_finite_and_normalized():
    # Degenerate / invalid sizes and indices (what a traced call could see) stay finite.
    idx = np.array([[-5, 0, 3, 10_000]], "int32")
    for size in (0, 1, 4, 5000):
        rows = np.asarray(antialiased_bilinear_rows(idx, np.array([size]), 16))
        assert np.isfinite(rows).all()
        np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_small_grids_match_reference(size):
    """Grids smaller than the released 16 x 16 (the encoder accepts any
    position_grid_size >= 1), up- and down-sampled, in one jitted batch."""
    grid = np.random.default_rng(size).normal(size=(size, size, 4)).astype("float32")
    shapes = [(2, 5), (1, 7), (3, 3), (5, 1)]
    n = max(h * w for h, w in shapes)
    positions = np.zeros((len(shapes), n, 2), "int32")
    mask = np.zeros((len(shapes), n), "int32")
    for b, (h, w) in enumerate(shapes):
        positions[b, : h * w], mask[b, : h * w] = grid_positions(h, w), 1
    out = np.asarray(jax.jit(position_embeddings)(grid, positions, mask))
    for b, (h, w) in enumerate(shapes):
        ref = reference_resize(grid, h, w).reshape(h * w, -1)
        np.testing.assert_allclose(out[b, : h * w], ref, atol=2e-6, rtol=0)


def test_invalid_positions_under_jit_stay_finite(grid16):
    """Traced values cannot be checked (the encoder refuses them eagerly); negative or
    huge positions must still give finite embeddings, never NaN."""
    positions = np.tile(grid_positions(4, 6)[None], (3, 1, 1))
    positions[0, 0] = (-5, 3)
    positions[1, :2] = ((-1, -1), (2, -7))
    positions[2, 5] = (10**6, 2**20)
    out = np.asarray(jax.jit(position_embeddings)(grid16, positions, np.ones((3, 24), "int32")))
    assert np.isfinite(out).all()


def make_layer(grid):
    layer = SigLIP2PositionGrid(grid.shape[0], grid.shape[-1])
    layer.build()
    layer.grid.assign(grid)
    return layer


@pytest.fixture(scope="module")
def layer16(grid16):
    return make_layer(grid16)


@pytest.fixture(scope="module")
def embed(layer16):
    """Jitted `position_embeddings` (one XLA program instead of many eager ops)."""
    return jax.jit(layer16.position_embeddings)


def test_layer_80x12_grid_equals_float64_reference(grid16, embed):
    """No 64-per-side cap (big_vision returns NaN there): an 80 x 12 grid is exact."""
    positions = grid_positions(80, 12)[None]
    mask = np.ones((1, 960), "int32")
    emb = np.asarray(embed(positions, mask))[0]
    assert np.isfinite(emb).all()
    ref = reference_resize(grid16, 80, 12).reshape(960, -1)
    np.testing.assert_allclose(emb, ref, atol=2e-6)


def test_layer_mixed_batch_with_padding(grid16, layer16):
    """Eager call on a batch of different grid shapes, padding at arbitrary positions."""
    n = 3 * 80
    shapes = [(3, 80), (7, 5), (1, 1), (12, 20)]
    positions = np.zeros((len(shapes), n, 2), "int32")
    mask = np.zeros((len(shapes), n), "int32")
    rng = np.random.default_rng(1)
    for b, (h, w) in enumerate(shapes):
        positions[b, : h * w] = grid_positions(h, w)
        mask[b, : h * w] = 1
        positions[b, h * w:] = rng.integers(-50, 500, size=(n - h * w, 2))  # ignored
    np.testing.assert_array_equal(np.asarray(grid_shapes_from_positions(positions, mask)), shapes)
    tokens = np.zeros((len(shapes), n, grid16.shape[-1]), "float32")
    out = np.asarray(layer16(tokens, positions, mask))
    assert np.isfinite(out).all()
    for b, (h, w) in enumerate(shapes):
        ref = reference_resize(grid16, h, w)
        np.testing.assert_allclose(out[b, : h * w], ref.reshape(h * w, -1), atol=2e-6)
        # Padding gets cell (0, 0), as big_vision / HF.
        pad = out[b, h * w:]
        np.testing.assert_allclose(pad, np.broadcast_to(ref[0, 0], pad.shape), atol=2e-6)


def test_batched_equals_per_image_loop(grid16):
    """The batched computation (one program for any mix of grids) gives what the
    reference's per-image loop gives (resize to each exact (h, w), then gather)."""
    shapes = [(3, 80), (1, 1), (80, 3)]  # each new shape costs the loop a compilation
    n = 240
    positions = np.zeros((len(shapes), n, 2), "int32")
    mask = np.zeros((len(shapes), n), "int32")
    rng = np.random.default_rng(4)
    for b, (h, w) in enumerate(shapes):
        perm = rng.permutation(n)[: h * w]  # real patches scattered among the padding
        positions[b, perm] = grid_positions(h, w)
        mask[b, perm] = 1
    batched = np.asarray(jax.jit(position_embeddings)(grid16, positions, mask))
    looped = np.asarray(position_embeddings_per_image_loop(grid16, positions, mask))
    assert batched.shape == looped.shape == (len(shapes), n, grid16.shape[-1])
    np.testing.assert_allclose(batched, looped, atol=2e-6, rtol=0)
    for b, (h, w) in enumerate(shapes):  # and both are the float64 formula
        real = mask[b].astype(bool)
        ref = reference_resize(grid16, h, w)[positions[b, real, 0], positions[b, real, 1]]
        np.testing.assert_allclose(looped[b, real], ref, atol=2e-6, rtol=0)


def test_layer_shuffled_patches(embed):
    """Positions are explicit: patch order does not matter."""
    positions = grid_positions(9, 4)
    perm = np.random.default_rng(2).permutation(36)
    ones = np.ones((1, 36), "int32")
    a = np.asarray(embed(positions[None], ones))[0]
    b = np.asarray(embed(positions[perm][None], ones))[0]
    np.testing.assert_allclose(a[perm], b, atol=1e-7)


def test_layer_resized_and_identity(grid16, layer16):
    resized = jax.jit(layer16.resized, static_argnums=(0, 1))
    # Same size: identity.
    np.testing.assert_allclose(np.asarray(resized(16, 16)), grid16, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(resized(5, 70)), reference_resize(grid16, 5, 70), atol=2e-6
    )


def test_layer_jit_one_trace_per_length(grid16, layer16):
    traces = []

    @jax.jit
    def embed(positions, mask):
        traces.append(positions.shape)
        return layer16.position_embeddings(positions, mask)

    for h, w in [(4, 6), (6, 4), (2, 12), (24, 1)]:  # 24 patches each
        out = embed(grid_positions(h, w)[None], np.ones((1, 24), "int32"))
        np.testing.assert_allclose(
            np.asarray(out)[0], reference_resize(grid16, h, w).reshape(24, -1), atol=2e-6
        )
    embed(grid_positions(5, 6)[None], np.ones((1, 30), "int32"))
    assert len(traces) == 2


def test_layer_config_round_trip(layer16):
    layer = layer16
    clone = SigLIP2PositionGrid.from_config(layer.get_config())
    assert clone.grid_size == 16 and clone.hidden_dim == 8
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, SigLIP2PositionGrid)


def taps_as_matrix(m, n):
    """The (m x n) matrix `antialiased_bilinear_taps` describes (its windows written out)."""
    start, weights = (np.asarray(a)[0] for a in antialiased_bilinear_taps(
        np.arange(m)[None], np.array([m]), n))
    dense = np.zeros((m, n))
    for i in range(m):
        for t in range(weights.shape[-1]):
            dense[i, start[i] + t] += weights[i, t]
    return dense


@pytest.mark.parametrize("n", [2, 3, 8, 15, 16])
def test_taps_hold_every_nonzero_when_the_side_shrinks_at_most_2x(n):
    # Every output side from n / 2 (the 2x shrink, the hardest case) to n + 1, and a
    # few upsampling ones (2 nonzeros a row): each side compiles its own resize.
    for m in sorted(set(range(-(-n // 2), n + 2)) | {2 * n - 1, 2 * n, 3 * n + 1}):
        np.testing.assert_allclose(taps_as_matrix(m, n), reference_matrix(m, n), atol=1e-6)


def test_taps_miss_nonzeros_below_half_the_side():
    """Why the gather path needs `taps_cover`: at m < n / 2 a row has > 4 nonzeros."""
    assert np.abs(taps_as_matrix(7, 16) - reference_matrix(7, 16)).max() > 1e-2
    shapes = np.array([[8, 30], [16, 16]], "int32")
    assert bool(taps_cover(shapes, np.zeros((16, 16, 1))))
    assert not bool(taps_cover(np.array([[8, 30], [7, 36]], "int32"), np.zeros((16, 16, 1))))


@pytest.mark.parametrize("shapes", [[(8, 30), (16, 16), (31, 8), (9, 9)],  # gather path
                                    [(8, 30), (3, 80), (16, 16)]])  # a side < 8: matmul
def test_gather_path_equals_float64_reference(grid16, shapes):
    """`gather=True` (the inference path) gives the resized grid at every patch, on
    batches all of whose sides are >= G / 2 (the 4 x 4 taps) and on those with a
    smaller side (where it falls back to the matmul); padding gets cell (0, 0)."""
    n = 256
    positions = np.zeros((len(shapes), n, 2), "int32")
    mask = np.zeros((len(shapes), n), "int32")
    rng = np.random.default_rng(5)
    for b, (h, w) in enumerate(shapes):
        perm = rng.permutation(n)[: h * w]
        positions[b, perm] = grid_positions(h, w)
        mask[b, perm] = 1
    out = np.asarray(jax.jit(functools.partial(position_embeddings, gather=True))(
        grid16, positions, mask))
    for b, (h, w) in enumerate(shapes):
        ref = reference_resize(grid16, h, w)
        real = mask[b].astype(bool)
        want = ref[positions[b, real, 0], positions[b, real, 1]]
        np.testing.assert_allclose(out[b, real], want, atol=2e-6, rtol=0)
        np.testing.assert_allclose(out[b, ~real], np.broadcast_to(ref[0, 0], out[b, ~real].shape),
                                   atol=2e-6, rtol=0)


def test_layer_inference_and_training_paths_agree(grid16, layer16):
    """The layer gathers at inference and runs the matmul in training: same output."""
    positions = grid_positions(12, 20)[None]
    mask = np.ones((1, 240), "int32")
    tokens = np.zeros((1, 240, grid16.shape[-1]), "float32")
    inference = np.asarray(layer16(tokens, positions, mask, training=False))
    training = np.asarray(layer16(tokens, positions, mask, training=True))
    np.testing.assert_allclose(inference, training, atol=1e-6, rtol=0)
    np.testing.assert_allclose(inference[0], reference_resize(grid16, 12, 20).reshape(240, -1),
                               atol=2e-6, rtol=0)
