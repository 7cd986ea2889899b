"""Sigmoid loss (paper sec. 2.1): plain and chunked forms against an independent numpy
float64 reference (value and analytic gradients), chunked == plain in value and
gradients within 1e-5 on JAX (jax.grad, jit) and TensorFlow (GradientTape,
tf.function), O(B * chunk) memory of the chunked gradient, and clear errors."""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from keras_siglip2.training.losses import (
    SigLIPLoss,
    chunked_sigmoid_loss,
    per_example_sigmoid_loss,
    sigmoid_loss,
)
from tests.conftest import run_in_backend

TOL = 1e-5  # float32 vs float32 (chunked vs plain) and float32 vs float64 reference


def _embeddings(batch=10, dim=8, seed=0):
    rng = np.random.RandomState(seed)
    z = rng.normal(size=(2, batch, dim))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    # Make pairs partly aligned so both positive and negative terms matter.
    zimg = z[0]
    ztxt = 0.6 * z[0] + 0.8 * z[1]
    ztxt /= np.linalg.norm(ztxt, axis=-1, keepdims=True)
    return zimg.astype("float32"), ztxt.astype("float32")


def _reference(zimg, ztxt, log_t, bias):
    """float64 loss, per-image losses and analytic gradients."""
    zimg, ztxt = zimg.astype("float64"), ztxt.astype("float64")
    batch = zimg.shape[0]
    t = np.exp(log_t)
    cos = zimg @ ztxt.T
    logits = t * cos + bias
    labels = np.where(np.eye(batch) > 0, 1.0, -1.0)
    nll = np.logaddexp(0.0, -labels * logits)  # -log sigmoid(y * l)
    per_example = nll.sum(axis=1)
    loss = per_example.sum() / batch
    g = -labels / (1.0 + np.exp(labels * logits)) / batch  # dloss / dlogits
    grads = (t * g @ ztxt, t * g.T @ zimg, np.sum(g * t * cos), np.sum(g))
    return loss, per_example, grads


LOG_T, BIAS = np.log(10.0), -10.0


def test_plain_loss_matches_float64_reference():
    zimg, ztxt = _embeddings()
    loss, per_example, grads = _reference(zimg, ztxt, LOG_T, BIAS)
    np.testing.assert_allclose(float(sigmoid_loss(zimg, ztxt, LOG_T, BIAS)), loss, rtol=TOL)
    np.testing.assert_allclose(
        np.asarray(per_example_sigmoid_loss(zimg, ztxt, LOG_T, BIAS)), per_example, rtol=TOL
    )
    got = jax.grad(sigmoid_loss, argnums=(0, 1, 2, 3))(
        zimg, ztxt, jnp.float32(LOG_T), jnp.float32(BIAS)
    )
    for g, ref in zip(got, grads):
        np.testing.assert_allclose(np.asarray(g), ref, rtol=TOL, atol=TOL)


def test_loss_is_not_symmetric_in_the_wrong_way():
    # Swapping which text pairs with which image changes the loss (labels are on
    # the diagonal, not everywhere).
    zimg, ztxt = _embeddings()
    a = float(sigmoid_loss(zimg, ztxt, LOG_T, BIAS))
    b = float(sigmoid_loss(zimg, ztxt[::-1], LOG_T, BIAS))
    assert a < b


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, 32])
def test_chunked_equals_plain_value_and_grads_jax(chunk_size):
    # 3 and 4 do not divide B = 10 (remainder chunk); 32 > B (one chunk).
    zimg, ztxt = _embeddings(batch=10)
    args = (zimg, ztxt, jnp.asarray([LOG_T], "float32"), jnp.float32(BIAS))
    plain = jax.value_and_grad(sigmoid_loss, argnums=(0, 1, 2, 3))
    chunked = jax.jit(
        jax.value_and_grad(
            lambda *a: chunked_sigmoid_loss(*a, chunk_size=chunk_size), argnums=(0, 1, 2, 3)
        )
    )
    (v1, g1), (v2, g2) = plain(*args), chunked(*args)
    np.testing.assert_allclose(float(v2), float(v1), rtol=TOL, atol=TOL)
    for a, b in zip(g2, g1):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=TOL, atol=TOL)


def test_chunked_matches_reference_at_other_temperature():
    zimg, ztxt = _embeddings(batch=12, dim=5, seed=3)
    loss, _, grads = _reference(zimg, ztxt, 0.3, 1.5)
    value, got = jax.value_and_grad(
        lambda *a: chunked_sigmoid_loss(*a, chunk_size=5), argnums=(0, 1, 2, 3)
    )(zimg, ztxt, jnp.float32(0.3), jnp.float32(1.5))
    np.testing.assert_allclose(float(value), loss, rtol=TOL)
    for g, ref in zip(got, grads):
        np.testing.assert_allclose(np.asarray(g), ref, rtol=TOL, atol=TOL)


def test_chunked_gradient_never_forms_b_by_b_logits():
    batch, dim = 64, 16
    zimg, ztxt = _embeddings(batch=batch, dim=dim)
    args = (zimg, ztxt, jnp.float32(LOG_T), jnp.float32(BIAS))

    def program(fn):
        return str(jax.make_jaxpr(jax.grad(fn, argnums=(0, 1, 2, 3)))(*args))

    square = f"f32[{batch},{batch}]"
    assert square in program(sigmoid_loss)  # the check can see a (B, B) array
    assert square not in program(lambda *a: chunked_sigmoid_loss(*a, chunk_size=8))

    def temp_bytes(fn):
        compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    big = _embeddings(batch=512, dim=dim)
    args = (big[0], big[1], jnp.float32(LOG_T), jnp.float32(BIAS))
    plain = temp_bytes(sigmoid_loss)
    chunked = temp_bytes(lambda *a: chunked_sigmoid_loss(*a, chunk_size=32))
    assert plain >= 512 * 512 * 4  # at least one (B, B) float32 buffer
    assert chunked < plain / 4, (chunked, plain)


def test_low_precision_inputs_give_float32_loss():
    zimg, ztxt = _embeddings()
    for dtype in ("bfloat16", "float16"):
        a, b = jnp.asarray(zimg, dtype), jnp.asarray(ztxt, dtype)
        for loss in (sigmoid_loss(a, b, LOG_T, BIAS), chunked_sigmoid_loss(a, b, LOG_T, BIAS, 4)):
            assert loss.dtype == jnp.float32
            ref = _reference(np.asarray(a, "float32"), np.asarray(b, "float32"), LOG_T, BIAS)[0]
            np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_siglip_loss_class_and_config_round_trip():
    zimg, ztxt = _embeddings()
    ref = _reference(zimg, ztxt, LOG_T, BIAS)[0]
    for loss in (SigLIPLoss(), SigLIPLoss(chunked=True, chunk_size=3), SigLIPLoss(chunked=True)):
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert isinstance(clone, SigLIPLoss) and clone.get_config() == loss.get_config()
        np.testing.assert_allclose(float(clone(zimg, ztxt, LOG_T, BIAS)), ref, rtol=TOL)
    np.testing.assert_allclose(
        np.asarray(SigLIPLoss().per_example(zimg, ztxt, LOG_T, BIAS)),
        _reference(zimg, ztxt, LOG_T, BIAS)[1],
        rtol=TOL,
    )


def test_bad_input_errors():
    zimg, ztxt = _embeddings(batch=6)
    with pytest.raises(ValueError, match="same batch size"):
        sigmoid_loss(zimg, ztxt[:5], LOG_T, BIAS)
    with pytest.raises(ValueError, match="same batch size"):
        chunked_sigmoid_loss(zimg, ztxt[:5], LOG_T, BIAS, 2)
    with pytest.raises(ValueError, match="embedding width"):
        sigmoid_loss(zimg, ztxt[:, :4], LOG_T, BIAS)
    with pytest.raises(ValueError, match=r"`zimg` must have shape \(B, D\)"):
        chunked_sigmoid_loss(zimg[None], ztxt, LOG_T, BIAS, 2)
    with pytest.raises(ValueError, match="`ztxt` must have shape"):
        sigmoid_loss(zimg, ztxt[0], LOG_T, BIAS)
    for bad in (0, -2, 1.5, True, None):
        with pytest.raises(ValueError, match="chunk_size"):
            chunked_sigmoid_loss(zimg, ztxt, LOG_T, BIAS, bad)
    with pytest.raises(ValueError, match="log_temperature"):
        sigmoid_loss(zimg, ztxt, np.zeros(2, "float32"), BIAS)
    with pytest.raises(ValueError, match="chunk_size"):
        SigLIPLoss(chunked=True, chunk_size=0)
    with pytest.raises(TypeError, match="chunked"):
        SigLIPLoss(chunked="yes")


TF_CODE = r"""
import json
import numpy as np
import tensorflow as tf
from keras_siglip2.training.losses import chunked_sigmoid_loss, sigmoid_loss

rng = np.random.RandomState(1)
z = rng.normal(size=(2, 10, 8))
z /= np.linalg.norm(z, axis=-1, keepdims=True)
zimg, ztxt = tf.constant(z[0], tf.float32), tf.constant(z[1], tf.float32)
log_t = tf.Variable([np.log(10.0)], dtype=tf.float32)
bias = tf.Variable([-10.0], dtype=tf.float32)

def value_and_grads(fn):
    with tf.GradientTape() as tape:
        tape.watch([zimg, ztxt])
        loss = fn(zimg, ztxt, log_t, bias)
    return loss, tape.gradient(loss, [zimg, ztxt, log_t, bias])

def diff(a, b):
    return max(float(tf.reduce_max(tf.abs(x - y))) for x, y in zip(a, b))

v1, g1 = value_and_grads(sigmoid_loss)
out = {"v_plain": float(v1)}
for c in (3, 10):
    chunked = lambda *a: chunked_sigmoid_loss(*a, chunk_size=c)
    v2, g2 = value_and_grads(chunked)
    v3, g3 = tf.function(lambda: value_and_grads(chunked))()
    spec = [tf.TensorSpec((None, 8), tf.float32)] * 2
    v4 = tf.function(lambda a, b: chunked(a, b, log_t, bias), input_signature=spec)(zimg, ztxt)
    out[f"v_eager_{c}"], out[f"v_graph_{c}"], out[f"v_dynamic_{c}"] = float(v2), float(v3), float(v4)
    out[f"g_eager_{c}"], out[f"g_graph_{c}"] = diff(g1, g2), diff(g1, g3)
out["log_t_grad_shape"] = list(g3[2].shape)
print(json.dumps(out))
"""


def test_chunked_equals_plain_value_and_grads_tensorflow():
    result = run_in_backend("tensorflow", TF_CODE)
    for key, value in result.items():
        if key.startswith("v_"):
            np.testing.assert_allclose(value, result["v_plain"], rtol=TOL, atol=TOL, err_msg=key)
        elif key.startswith("g_"):
            assert value <= TOL, (key, value)
    assert result["log_t_grad_shape"] == [1]
