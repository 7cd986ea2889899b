"""training/joint_selection.py (JEST blockwise sampling, used by ACID): block sizes,
the conditional learnability against a hand computation, the sampling probabilities
against the exact ones (Monte Carlo over seeds), a gain over uniform sub-batches on the
joint score, and the errors."""

import itertools

import numpy as np
import pytest
from keras import ops

from keras_siglip2.training.joint_selection import (
    chunk_sizes,
    conditional_learnability,
    gumbel_noise,
    joint_selection,
)


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def test_chunk_sizes():
    assert chunk_sizes(10, 4) == [3, 3, 2, 2]
    assert chunk_sizes(3, 16) == [1, 1, 1]
    assert chunk_sizes(32, 16) == [2] * 16
    assert sum(chunk_sizes(257, 16)) == 257


def test_conditional_learnability_by_hand():
    scores = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0], [4.0, 0.0, 2.0]], "float32")
    chosen = np.array([1.0, 0.0, 0.0], "float32")
    # A_ii + A_i0 + A_0i for i = 0, 1, 2.
    expected = [1.0 + 1.0 + 1.0, -1.0 + 0.5 + 2.0, 2.0 + 4.0 + 0.0]
    np.testing.assert_allclose(numpy(conditional_learnability(scores, chosen)), expected)


def sampled_frequencies(scores, k, num_chunks, draws):
    """Frequencies of each ordered draw over `draws` seeds (one jitted, vmapped call:
    JAX takes a (2,) uint32 array as a Keras seed)."""
    import jax

    seeds = np.stack([np.arange(draws), np.zeros(draws)], axis=1).astype("uint32")
    draw = jax.jit(jax.vmap(lambda seed: joint_selection(scores, k, num_chunks, seed=seed)))
    counts = {}
    for row in np.asarray(draw(seeds)).tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    return {key: n / draws for key, n in counts.items()}


def test_blocks_follow_the_conditional_scores(monkeypatch):
    """With the noise replaced by zeros the draw is the greedy one, by hand: A_22 = 5 is
    the largest diagonal; given {2}, candidate 0 scores A_00 + A_02 + A_20 = 1 + 0 + 4 = 5,
    candidate 1 scores -1 + 3 + 0 = 2, candidate 3 scores 0 + 1 + 1 = 2: 0 is next. Then
    given {2, 0}: 1 scores -1 + (3 + 0) + (2 + 0.5) = 4.5, 3 scores 0 + (1 + 1) + (0 + 0) = 2."""
    from keras_siglip2.training import joint_selection as module

    scores = np.array([[1.0, 2.0, 0.0, 0.0],
                       [0.5, -1.0, 3.0, 0.0],
                       [4.0, 0.0, 5.0, 1.0],
                       [0.0, 0.0, 1.0, 0.0]], "float32")
    monkeypatch.setattr(module, "gumbel_noise", lambda shape, seed: ops.zeros(shape))
    assert numpy(joint_selection(scores, 3, num_chunks=3)).tolist() == [2, 0, 1]
    # One block of 3: the top 3 diagonal entries.
    assert numpy(joint_selection(scores, 3, num_chunks=1)).tolist() == [2, 0, 3]


def test_noise_rows_are_independent():
    noise = numpy(gumbel_noise((3, 1000), seed=0))
    assert abs(noise.mean() - 0.5772) < 0.1  # the Gumbel mean (Euler's constant)
    assert abs(np.corrcoef(noise[0], noise[1])[0, 1]) < 0.1


def test_sampling_probabilities_are_the_exact_ones():
    """B = 4, two examples drawn one at a time: P(i first) = softmax(A_ii) and
    P(j second | i) = softmax over j != i of A_jj + A_ij + A_ji. The 12 ordered pairs'
    frequencies over 20,000 seeds are within 4 standard errors of these."""
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 1, (4, 4)).astype("float32")
    draws = 20000
    freq = sampled_frequencies(scores, 2, 2, draws)
    first = softmax(np.diag(scores).astype(np.float64))
    for i, j in itertools.permutations(range(4), 2):
        others = [m for m in range(4) if m != i]
        cond = np.array([scores[m, m] + scores[i, m] + scores[m, i] for m in others], np.float64)
        p = first[i] * softmax(cond)[others.index(j)]
        stderr = np.sqrt(p * (1 - p) / draws)
        assert abs(freq.get((i, j), 0.0) - p) < 4 * stderr + 1e-3, (i, j, freq.get((i, j)), p)
    assert all(len(set(key)) == 2 for key in freq)  # without replacement


def test_joint_sub_batches_score_higher_than_uniform_ones():
    """On a matrix with strong pair structure (large A_ij + A_ji for pairs inside hidden
    groups), the sampled sub-batches' joint score sum(A over S x S) beats that of uniform
    random sub-batches by a wide margin (measured means 175 vs 11, sd 12, over 50 draws)."""
    rng = np.random.default_rng(1)
    size, k = 32, 8
    groups = rng.permutation(size) % 4
    scores = rng.normal(0, 0.5, (size, size)) + 3.0 * (groups[:, None] == groups[None, :]) * (
        groups[:, None] == 0)
    scores = scores.astype("float32")

    def joint_score(indices):
        return float(scores[np.ix_(indices, indices)].sum())

    sampled = [joint_score(numpy(joint_selection(scores, k, 4, seed=s))) for s in range(50)]
    uniform = [joint_score(rng.permutation(size)[:k]) for _ in range(50)]
    assert np.mean(sampled) > np.mean(uniform) + 10 * np.std(uniform), (
        np.mean(sampled), np.mean(uniform))


def test_errors():
    scores = np.zeros((4, 4), "float32")
    with pytest.raises(ValueError, match="exceeds the 4 candidates"):
        joint_selection(scores, 5)
    with pytest.raises(ValueError, match="`num_selected` must be an integer >= 1"):
        joint_selection(scores, 0)
    with pytest.raises(ValueError, match=r"square \(B, B\)"):
        joint_selection(np.zeros((4, 3), "float32"), 2)
    with pytest.raises(ValueError, match="`num_chunks` must be an integer >= 1"):
        joint_selection(scores, 2, num_chunks=0)
