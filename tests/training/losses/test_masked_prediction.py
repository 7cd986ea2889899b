"""TIPS masked-prediction loss (paper sec. 2.3): numpy float64 reference over masked
patches only, unmasked patches have no influence (even NaN), no masked patch gives 0
(never NaN), clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from keras_siglip2.training.losses import masked_prediction_loss

TOL = 1e-5


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference(student, teacher, mask, center, ts=0.1, tt=0.04):
    p = np.exp(_log_softmax((teacher.astype("float64") - center) / tt))
    ce = -(p * _log_softmax(student.astype("float64") / ts)).sum(-1)
    return (ce * mask).sum() / mask.sum()


def _inputs(batch=3, patches=8, k=12, seed=0):
    rng = np.random.RandomState(seed)
    student = rng.normal(size=(batch, patches, k)).astype("float32")
    teacher = rng.normal(size=(batch, patches, k)).astype("float32")
    mask = np.zeros((batch, patches), "float32")
    for row in mask:
        row[rng.permutation(patches)[: patches // 2]] = 1.0
    center = rng.normal(0, 0.2, (k,)).astype("float32")
    return student, teacher, mask, center


def test_matches_float64_reference():
    student, teacher, mask, center = _inputs()
    ref = _reference(student, teacher, mask, center)
    for m in (mask, mask.astype(bool), mask.astype("int32")):
        np.testing.assert_allclose(float(masked_prediction_loss(student, teacher, m, center)), ref, rtol=TOL)
    got = jax.jit(lambda *a: masked_prediction_loss(*a, student_temperature=0.2, teacher_temperature=0.05))(
        student, teacher, mask, center
    )
    np.testing.assert_allclose(float(got), _reference(student, teacher, mask, center, 0.2, 0.05), rtol=TOL)


def test_unmasked_patches_have_no_influence():
    student, teacher, mask, center = _inputs()
    ref = float(masked_prediction_loss(student, teacher, mask, center))
    bad_student, bad_teacher = student.copy(), teacher.copy()
    bad_student[mask == 0] = np.nan
    bad_teacher[mask == 0] = np.inf
    np.testing.assert_allclose(float(masked_prediction_loss(bad_student, bad_teacher, mask, center)), ref, rtol=1e-6)
    grad = np.asarray(jax.grad(masked_prediction_loss)(student, teacher, mask, center))
    assert np.all(grad[mask == 0] == 0) and np.all(np.abs(grad[mask == 1]).sum(-1) > 0)
    assert np.all(np.asarray(jax.grad(masked_prediction_loss, argnums=1)(student, teacher, mask, center)) == 0)


def test_no_masked_patch_gives_zero_not_nan():
    student, teacher, mask, center = _inputs()
    zero = np.zeros_like(mask)
    assert float(masked_prediction_loss(student, teacher, zero, center)) == 0.0
    grad = np.asarray(jax.grad(masked_prediction_loss)(student, teacher, zero, center))
    assert np.all(grad == 0)


def _bfloat16(x):
    """x rounded to bfloat16 (returned as float32 values)."""
    return np.asarray(jnp.asarray(x, "bfloat16").astype("float32"))


def test_low_precision_inputs_give_float32():
    """bfloat16 patch logits (mixed precision): the loss is computed in float32 from
    their values, so it equals the float64 reference on the bfloat16-rounded inputs
    within TOL (measured: 5e-8), and stays within 1e-2 of the float32 run on the
    unrounded inputs (measured: 1.4e-3, the rounding of the inputs, 2^-9 relative,
    through the teacher's 1 / 0.04 sharpening)."""
    student, teacher, mask, center = _inputs()
    loss = masked_prediction_loss(jnp.asarray(student, "bfloat16"), jnp.asarray(teacher, "bfloat16"), mask, center)
    assert loss.dtype == jnp.float32
    reference = _reference(_bfloat16(student), _bfloat16(teacher), mask, center)
    np.testing.assert_allclose(float(loss), reference, rtol=TOL)
    full = float(masked_prediction_loss(student, teacher, mask, center))
    assert float(loss) != full  # the inputs really were rounded
    np.testing.assert_allclose(float(loss), full, rtol=1e-2)


def test_bad_input_errors():
    student, teacher, mask, center = _inputs()
    with pytest.raises(ValueError, match="number of patches N"):
        masked_prediction_loss(student, teacher[:, :4], mask, center)
    with pytest.raises(ValueError, match="`mask`.*number of patches N"):
        masked_prediction_loss(student, teacher, mask[:, :4], center)
    with pytest.raises(ValueError, match=r"`mask` must have shape \(B, N\)"):
        masked_prediction_loss(student, teacher, mask[0], center)
    with pytest.raises(ValueError, match=r"`student_patch_logits` must have shape \(B, N, K\)"):
        masked_prediction_loss(student[0], teacher, mask, center)
    with pytest.raises(ValueError, match="`center`"):
        masked_prediction_loss(student, teacher, mask, center[:5])
