"""layers/fences.py: an exact identity (values, gradients, forward-mode tangents,
NaN included) that, on JAX with one CPU device, makes XLA write the residual stream's
gradient once: the largest fusion of a deep stack's backward stops growing with depth."""

import re

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from keras_siglip2.layers import SigLIP2EncoderBlock, gradient_fence
from keras_siglip2.layers import fences as fence_module

DEPTH, WIDTH = 6, 32


def stack_loss():
    keras.utils.set_random_seed(0)
    blocks = [SigLIP2EncoderBlock(WIDTH, 2, 64, name=f"block_{i}") for i in range(DEPTH)]
    for b in blocks:
        b.build((2, 8, WIDTH))
    weights = [[v.value for v in b.weights] for b in blocks]

    def loss(params, x):
        for b, p in zip(blocks, params):
            x, _ = b.stateless_call(p, [], x)
        return jnp.sum(jnp.tanh(x) * jnp.arange(x.size).reshape(x.shape) / x.size)

    return loss, weights


def largest_fusion(loss, weights, x):
    """The most operands any fusion of the compiled gradient takes."""
    hlo = jax.jit(jax.grad(loss)).lower(weights, x).compile().as_text()
    return max(len(ops.split(",")) for ops in re.findall(r" fusion\(([^)]*)\)", hlo))


def test_is_active_here():
    # The checks below measure the fence: they mean something only where it acts
    # (`make test` runs with KERAS_BACKEND=jax on one CPU device).
    assert keras.backend.backend() == "jax"
    assert jax.default_backend() == "cpu" and jax.device_count() == 1
    assert fence_module._fence_on_this_machine()


@pytest.mark.parametrize("where", ["tensorflow", "torch", "8 devices"])
def test_a_plain_identity_elsewhere(monkeypatch, where):
    if where == "8 devices":
        monkeypatch.setattr(jax, "device_count", lambda: 8)
    else:
        monkeypatch.setattr(keras.backend, "backend", lambda: where)
    assert not fence_module._fence_on_this_machine()
    x = jnp.ones((2, 3), jnp.float32)
    assert gradient_fence(x) is x


def test_values_gradients_and_tangents_are_the_identitys():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    x = x.at[0, 0].set(jnp.nan)  # the element the always-true predicate reads
    w = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(gradient_fence(x), x)
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(gradient_fence(v) * w))(x), w)
    t = jnp.ones_like(x) * 3.0
    _, tangent = jax.jvp(gradient_fence, (x,), (t,))
    np.testing.assert_array_equal(tangent, t)
    g = jax.grad(lambda v: jnp.sum(gradient_fence(v) ** 2))(x)  # NaN stays where it was
    assert np.isnan(g[0, 0]) and np.isfinite(np.asarray(g).ravel()[1:]).all()
    symbolic = keras.KerasTensor((None, 4))
    assert gradient_fence(symbolic) is symbolic


def test_stack_gradients_equal_plain_autodiff(monkeypatch):
    loss, weights = stack_loss()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, WIDTH)), jnp.float32)
    fenced = jax.jit(jax.grad(loss, argnums=(0, 1)))(weights, x)
    monkeypatch.setattr(fence_module, "_fence_on_this_machine", lambda: False)
    plain = jax.jit(jax.grad(loss, argnums=(0, 1)))(weights, x)
    for a, b in zip(jax.tree_util.tree_leaves(fenced), jax.tree_util.tree_leaves(plain)):
        # float32; only the order of the additions may differ
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))


def test_largest_backward_fusion_stops_growing_with_depth(monkeypatch):
    loss, weights = stack_loss()
    x = jnp.zeros((2, 8, WIDTH), jnp.float32)
    fenced = largest_fusion(loss, weights, x)
    monkeypatch.setattr(fence_module, "_fence_on_this_machine", lambda: False)
    plain = largest_fusion(loss, weights, x)
    # Without the fence XLA folds every later block's gradient into each block's fusion
    # (about 5 operands per later block); with it a fusion reads its own block's only.
    assert plain >= 4 * DEPTH, plain
    assert fenced <= 16 < plain, (fenced, plain)
