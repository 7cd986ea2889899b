"""LocCa decoder loss (paper sec. 2.2): weighted token cross-entropy against a numpy
float64 reference; prefix/padding positions (weight 0) have no influence; clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from keras_siglip2.training.losses import locca_loss

TOL = 1e-5


def _inputs(batch=3, length=6, vocab=11, seed=0):
    rng = np.random.RandomState(seed)
    logits = rng.normal(0, 3, (batch, length, vocab)).astype("float32")
    targets = rng.randint(0, vocab, (batch, length)).astype("int32")
    weights = (rng.uniform(size=(batch, length)) > 0.4).astype("float32")
    weights[0, 0] = 1.0
    return logits, targets, weights


def _reference(logits, targets, weights):
    x = logits.astype("float64")
    log_probs = x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
    ce = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return (ce * weights).sum() / max(weights.sum(), 1.0)


def test_matches_float64_reference():
    logits, targets, weights = _inputs()
    np.testing.assert_allclose(float(locca_loss(logits, targets, weights)), _reference(logits, targets, weights), rtol=TOL)
    jitted = jax.jit(locca_loss)(logits, targets, weights)
    np.testing.assert_allclose(float(jitted), _reference(logits, targets, weights), rtol=TOL)


def test_zero_weight_positions_have_no_influence():
    logits, targets, weights = _inputs()
    perturbed = logits.copy()
    perturbed[weights == 0] += np.random.RandomState(1).normal(0, 5, perturbed[weights == 0].shape)
    np.testing.assert_allclose(
        float(locca_loss(perturbed, targets, weights)), float(locca_loss(logits, targets, weights)), rtol=1e-6
    )
    grad = np.asarray(jax.grad(locca_loss)(logits, targets, weights))
    assert np.all(grad[weights == 0] == 0.0)
    assert np.all(np.abs(grad[weights == 1]).sum(-1) > 0)


def test_no_weighted_token_gives_zero():
    logits, targets, weights = _inputs()
    loss = locca_loss(logits, targets, np.zeros_like(weights))
    assert float(loss) == 0.0
    assert np.all(np.isfinite(np.asarray(jax.grad(locca_loss)(logits, targets, np.zeros_like(weights)))))


def test_low_precision_logits_give_float32():
    logits, targets, weights = _inputs()
    loss = locca_loss(jnp.asarray(logits, "bfloat16"), targets, weights)
    assert loss.dtype == jnp.float32
    ref = _reference(np.asarray(jnp.asarray(logits, "bfloat16"), "float32"), targets, weights)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_bad_input_errors():
    logits, targets, weights = _inputs()
    with pytest.raises(ValueError, match=r"`logits` must have shape \(B, L, V\)"):
        locca_loss(logits[0], targets, weights)
    with pytest.raises(ValueError, match="sequence length"):
        locca_loss(logits, targets[:, :-1], weights)
    with pytest.raises(ValueError, match="`weights`.*batch size"):
        locca_loss(logits, targets, weights[:2])
    with pytest.raises(ValueError, match="outside the decoder vocabulary"):
        locca_loss(logits, np.full_like(targets, 11), weights)
    with pytest.raises(ValueError, match="id -1"):
        locca_loss(logits, np.full_like(targets, -1), weights)
    with pytest.raises(TypeError, match="integer token ids"):
        locca_loss(logits, targets.astype("float32"), weights)
