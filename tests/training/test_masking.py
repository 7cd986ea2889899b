"""TIPS patch masking (paper sec. 2.3): exact count per image, uniform positions,
reproducible seeds, usable inside a jitted stateless step, clear errors."""

import jax
import keras
import numpy as np
import pytest

from keras_siglip2.training.masking import apply_patch_mask, random_patch_mask


@pytest.mark.parametrize("num_patches,ratio", [(16, 0.5), (7, 0.5), (10, 0.25), (9, 0.0), (9, 1.0)])
def test_exact_count_per_row(num_patches, ratio):
    mask = np.asarray(random_patch_mask(6, num_patches, ratio, seed=1))
    assert mask.shape == (6, num_patches) and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask.sum(1), np.full(6, round(ratio * num_patches)))


def test_positions_are_uniform_and_rows_differ():
    mask = np.asarray(random_patch_mask(4000, 8, 0.5, seed=3))
    # Each position is masked with probability 1/2: 4000 draws, std 0.008.
    np.testing.assert_allclose(mask.mean(0), 0.5, atol=0.04)
    assert len({tuple(row) for row in mask[:50]}) > 20


def test_seeds():
    a = np.asarray(random_patch_mask(3, 16, seed=5))
    np.testing.assert_array_equal(a, np.asarray(random_patch_mask(3, 16, seed=5)))
    assert not np.array_equal(a, np.asarray(random_patch_mask(3, 16, seed=6)))
    generator = keras.random.SeedGenerator(0)
    b = np.asarray(random_patch_mask(3, 16, seed=generator))
    assert not np.array_equal(b, np.asarray(random_patch_mask(3, 16, seed=generator)))


def test_jitted_stateless_step_with_seed_generator_and_raw_key():
    generator = keras.random.SeedGenerator(7)

    @jax.jit
    def step(seed_state):
        with keras.StatelessScope(state_mapping=[(generator.state, seed_state)]) as scope:
            mask = random_patch_mask(2, 12, seed=generator)
            new_state = scope.get_current_value(generator.state)
        return mask, new_state

    state = generator.state.value
    m1, state = step(state)
    m2, state = step(state)
    assert np.asarray(m1).sum() == np.asarray(m2).sum() == 12
    assert not np.array_equal(np.asarray(m1), np.asarray(m2))

    keyed = jax.jit(lambda key: random_patch_mask(2, 12, seed=key))
    k1, k2 = jax.random.key_data(jax.random.split(jax.random.key(0)))
    assert not np.array_equal(np.asarray(keyed(k1)), np.asarray(keyed(k2)))
    np.testing.assert_array_equal(np.asarray(keyed(k1)), np.asarray(keyed(k1)))


def test_apply_patch_mask():
    tokens = np.arange(2 * 4 * 3, dtype="float32").reshape(2, 4, 3)
    mask = np.array([[1, 0, 0, 1], [0, 0, 0, 0]], "float32")
    token = np.array([-1.0, -2.0, -3.0], "float32")
    out = np.asarray(apply_patch_mask(tokens, mask, token))
    np.testing.assert_array_equal(out[mask == 1], np.stack([token, token]))
    np.testing.assert_array_equal(out[mask == 0], tokens[mask == 0])


def test_bad_input_errors():
    with pytest.raises(ValueError, match="ratio"):
        random_patch_mask(2, 8, ratio=1.5)
    with pytest.raises(ValueError, match="num_patches"):
        random_patch_mask(2, 0)
    with pytest.raises(ValueError, match="batch_size"):
        random_patch_mask(0, 8)
