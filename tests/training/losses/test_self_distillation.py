"""SILC self-distillation loss (paper sec. 2.3): numpy float64 reference, teacher gets no
gradient, the student's optimum is the teacher's centred sharpened distribution,
center update, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from keras_siglip2.training.losses import self_distillation_loss, update_center

TOL = 1e-5


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference(student, teacher, center, ts=0.1, tt=0.04):
    p = np.exp(_log_softmax((teacher.astype("float64") - center) / tt))
    ce = -(p * _log_softmax(student.astype("float64") / ts)).sum(-1)
    return ce.mean()


def _inputs(views=3, batch=4, k=16, seed=0):
    rng = np.random.RandomState(seed)
    student = rng.normal(0, 1, (views, batch, k)).astype("float32")
    teacher = rng.normal(0, 1, (batch, k)).astype("float32")
    center = rng.normal(0, 0.3, (k,)).astype("float32")
    return student, teacher, center


def test_matches_float64_reference_views_and_single():
    student, teacher, center = _inputs()
    np.testing.assert_allclose(
        float(self_distillation_loss(student, teacher, center)), _reference(student, teacher, center), rtol=TOL
    )
    np.testing.assert_allclose(
        float(self_distillation_loss(student[0], teacher, center)), _reference(student[0], teacher, center), rtol=TOL
    )
    got = jax.jit(lambda s, t, c: self_distillation_loss(s, t, c, 0.2, 0.07))(student, teacher, center[None])
    np.testing.assert_allclose(float(got), _reference(student, teacher, center, 0.2, 0.07), rtol=TOL)


def test_center_matters_and_teacher_gets_no_gradient():
    student, teacher, center = _inputs()
    assert abs(float(self_distillation_loss(student, teacher, center))
               - float(self_distillation_loss(student, teacher, np.zeros_like(center)))) > 1e-3
    g_teacher, g_center = jax.grad(self_distillation_loss, argnums=(1, 2))(student, teacher, center)
    assert np.all(np.asarray(g_teacher) == 0) and np.all(np.asarray(g_center) == 0)


def test_student_optimum_is_the_teacher_distribution():
    _, teacher, center = _inputs()
    optimum = (teacher - center) / 0.04 * 0.1  # student logits giving the same softmax
    grad = np.asarray(jax.grad(self_distillation_loss)(optimum, teacher, center))
    assert np.abs(grad).max() < 1e-5
    moved = optimum + np.random.RandomState(2).normal(0, 1, optimum.shape).astype("float32")
    assert float(self_distillation_loss(moved, teacher, center)) > float(
        self_distillation_loss(optimum, teacher, center)
    )


def _bfloat16(x):
    """x rounded to bfloat16 (returned as float32 values)."""
    return np.asarray(jnp.asarray(x, "bfloat16").astype("float32"))


def test_low_precision_inputs_give_float32():
    """bfloat16 logits (mixed precision): the loss is computed in float32 from their
    values, so it equals the float64 reference on the bfloat16-rounded inputs within TOL
    (measured: 5e-8; the same computation in bfloat16 is off by 5e-3), and stays within
    1e-2 of the float32 run on the unrounded inputs (measured: 1.8e-4, the rounding of
    the inputs, 2^-9 relative, through the teacher's 1 / 0.04 sharpening)."""
    student, teacher, center = _inputs()
    loss = self_distillation_loss(jnp.asarray(student, "bfloat16"), jnp.asarray(teacher, "bfloat16"), center)
    assert loss.dtype == jnp.float32
    reference = _reference(_bfloat16(student), _bfloat16(teacher), center)
    np.testing.assert_allclose(float(loss), reference, rtol=TOL)
    full = float(self_distillation_loss(student, teacher, center))
    assert float(loss) != full  # the inputs really were rounded
    np.testing.assert_allclose(float(loss), full, rtol=1e-2)


def test_update_center():
    rng = np.random.RandomState(3)
    center = rng.normal(size=(8,)).astype("float32")
    teacher = rng.normal(size=(5, 8)).astype("float32")
    expected = 0.9 * center + 0.1 * teacher.astype("float64").mean(0)
    np.testing.assert_allclose(np.asarray(update_center(center, teacher)), expected, rtol=1e-6, atol=1e-6)
    patches = rng.normal(size=(2, 7, 8)).astype("float32")
    expected = 0.5 * center + 0.5 * patches.reshape(-1, 8).mean(0)
    got = update_center(center[None], patches, momentum=0.5)
    assert tuple(got.shape) == (1, 8)
    np.testing.assert_allclose(np.asarray(got)[0], expected, rtol=1e-6, atol=1e-6)
    got = jax.jit(update_center)(center, teacher)
    assert got.dtype == jnp.float32


def test_bad_input_errors():
    student, teacher, center = _inputs()
    with pytest.raises(ValueError, match="batch size B"):
        self_distillation_loss(student[:, :3], teacher, center)
    with pytest.raises(ValueError, match="number of outputs K"):
        self_distillation_loss(student[..., :8], teacher, center)
    with pytest.raises(ValueError, match="`center`"):
        self_distillation_loss(student, teacher, center[:8])
    with pytest.raises(ValueError, match="`center` must have shape"):
        self_distillation_loss(student, teacher, np.stack([center, center]))
    with pytest.raises(ValueError, match=r"`teacher_logits` must have shape \(B, K\)"):
        self_distillation_loss(student, student, center)
    with pytest.raises(ValueError, match="student_temperature"):
        self_distillation_loss(student, teacher, center, student_temperature=0.0)
    with pytest.raises(ValueError, match="teacher_temperature"):
        self_distillation_loss(student, teacher, center, teacher_temperature=-1)
    with pytest.raises(ValueError, match="momentum"):
        update_center(center, teacher, momentum=1.5)
    with pytest.raises(ValueError, match="`center`"):
        update_center(center[:3], teacher)
