"""SILC local-to-global self-distillation loss (paper sec. 2.3; Naeem et al. 2023, SILC,
which follows DINO, Caron et al. 2021).

From 80 % of training an EMA teacher of the image tower sees the global view and the
student sees local crops; both go through a projection head (`training/heads.py`) to K
logits. The teacher's logits are centred (minus a running mean, the "center") and
sharpened with a low temperature into target probabilities, with no gradient; the
student's softmax at a higher temperature is pulled towards them by cross-entropy:

    p_teacher = softmax((teacher_logits - center) / teacher_temperature)   (stop-grad)
    loss = mean over local views and images of
           -sum_k p_teacher_k * log_softmax(student_logits / student_temperature)_k

Chosen values, and why. The SigLIP 2 paper defers these hyper-parameters to SILC, whose
local-to-global loss is DINO's formulation; we take DINO's published defaults:
- student temperature 0.1 and teacher temperature 0.04: the teacher is sharper than the
  student, so its targets are confident; centering (below) stops that sharpening from
  collapsing every image onto one output. DINO's paper warms the teacher temperature
  up linearly from 0.04 to 0.07 over the first 30 epochs (main_dino.py's
  warmup_teacher_temp / teacher_temp / warmup_teacher_temp_epochs; "anything above
  0.07 is unstable"); here the loss starts at 80 % of training from an already
  trained student, so the default is no warm-up, a fixed 0.04 (the pretrainer's
  `teacher_temperature_start` / `teacher_temperature_warmup_steps` add one; the
  temperature may then be a scalar tensor).
- center momentum 0.9 (`update_center`): the center follows the batch mean of the
  teacher logits with a short memory, which prevents one dimension from dominating.

Everything is computed in float32.
"""

from keras import ops

from keras_siglip2.training.losses.checks import (
    check_fraction,
    check_positive,
    check_rank,
    check_same_dim,
)

STUDENT_TEMPERATURE = 0.1
TEACHER_TEMPERATURE = 0.04
CENTER_MOMENTUM = 0.9


def teacher_probabilities(teacher_logits, center, teacher_temperature=TEACHER_TEMPERATURE):
    """softmax((teacher_logits - center) / teacher_temperature) over the last axis,
    float32, with the gradient stopped (the teacher is updated by EMA, not by the loss)."""
    if isinstance(teacher_temperature, (int, float)):  # else a scheduled scalar tensor
        check_positive("teacher_temperature", teacher_temperature)
    logits = ops.cast(teacher_logits, "float32") - ops.cast(center, "float32")
    return ops.stop_gradient(ops.softmax(logits / teacher_temperature, axis=-1))


def soft_cross_entropy(target_probs, student_logits, student_temperature=STUDENT_TEMPERATURE):
    """-sum_k target_k * log_softmax(student_logits / student_temperature)_k over the
    last axis, float32 (one value per leading position)."""
    check_positive("student_temperature", student_temperature)
    log_probs = ops.log_softmax(
        ops.cast(student_logits, "float32") / student_temperature, axis=-1
    )
    return -ops.sum(target_probs * log_probs, axis=-1)


def check_center(center, num_outputs):
    """`center` must be (K,) or (1, K) with K the logits' last dimension."""
    shape = check_rank("center", center, (1, 2), "(K,) or (1, K)")
    if len(shape) == 2 and shape[0] not in (1, None):
        raise ValueError(f"`center` must have shape (K,) or (1, K); got shape {shape}.")
    check_same_dim("center", shape[-1], "the logits", num_outputs, "last dimension K")


def self_distillation_loss(
    student_logits,
    teacher_logits,
    center,
    student_temperature=STUDENT_TEMPERATURE,
    teacher_temperature=TEACHER_TEMPERATURE,
):
    """SILC local-to-global self-distillation loss, a float32 scalar.

    Args:
        student_logits: (V, B, K) projection-head logits of V local views per image,
            or (B, K) for one view.
        teacher_logits: (B, K) EMA teacher logits of the global view.
        center: (K,) (or (1, K)) running mean of the teacher logits (`update_center`).
        student_temperature, teacher_temperature: softmax temperatures (0.1, 0.04).

    Returns the cross-entropy averaged over views and images.
    """
    student_shape = check_rank("student_logits", student_logits, (2, 3), "(V, B, K) or (B, K)")
    teacher_shape = check_rank("teacher_logits", teacher_logits, (2,), "(B, K)")
    check_same_dim(
        "student_logits", student_shape[-1], "teacher_logits", teacher_shape[-1],
        "number of outputs K",
    )
    check_same_dim(
        "student_logits", student_shape[-2], "teacher_logits", teacher_shape[0],
        "batch size B",
    )
    check_center(center, teacher_shape[-1])
    targets = teacher_probabilities(teacher_logits, center, teacher_temperature)
    # (B, K) targets broadcast over the leading view axis of (V, B, K) student logits.
    return ops.mean(soft_cross_entropy(targets, student_logits, student_temperature))


def update_center(center, teacher_logits, momentum=CENTER_MOMENTUM):
    """New center: momentum * center + (1 - momentum) * mean of `teacher_logits` over
    every axis but the last (images, and patches or views if present). Float32, no
    gradient; same shape as `center`.
    """
    check_fraction("momentum", momentum)
    shape = check_rank("teacher_logits", teacher_logits, (2, 3, 4), "(..., K)")
    check_center(center, shape[-1])
    logits = ops.cast(ops.stop_gradient(teacher_logits), "float32")
    batch_mean = ops.mean(ops.reshape(logits, (-1, ops.shape(logits)[-1])), axis=0)
    center = ops.cast(center, "float32")
    return momentum * center + (1.0 - momentum) * ops.reshape(batch_mean, ops.shape(center))
