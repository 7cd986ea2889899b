"""TIPS masked-prediction loss (paper sec. 2.3; Maninis et al. 2024, TIPS, an iBOT-style
masked image modelling objective).

From 80 % of training, 50 % of the student's patch tokens are replaced by a learned mask
token (`training/masking.py`) while the EMA teacher sees the full image. Both per-patch
outputs go through a projection head to K logits; at every masked position the
student's distribution is matched to the teacher's centred, sharpened distribution with
the same soft cross-entropy as the SILC loss (`self_distillation.py`), using a center
of the teacher's patch logits kept separately from the global one:

    loss = sum_{masked (b, n)} CE(p_teacher[b, n], student[b, n]) / number masked

Unmasked positions contribute nothing (not even NaN from a bad value there), and a batch
with no masked position gives loss 0. Temperatures default to the same values as SILC
(student 0.1, teacher 0.04, see `self_distillation.py`). Float32 throughout.
"""

from keras import ops

from keras_siglip2.training.losses.checks import check_rank, check_same_dim
from keras_siglip2.training.losses.self_distillation import (
    STUDENT_TEMPERATURE,
    TEACHER_TEMPERATURE,
    check_center,
    soft_cross_entropy,
    teacher_probabilities,
)


def masked_prediction_loss(
    student_patch_logits,
    teacher_patch_logits,
    mask,
    center,
    student_temperature=STUDENT_TEMPERATURE,
    teacher_temperature=TEACHER_TEMPERATURE,
):
    """TIPS masked-patch loss, a float32 scalar.

    Args:
        student_patch_logits: (B, N, K) head logits of the masked student's patches.
        teacher_patch_logits: (B, N, K) head logits of the teacher's (unmasked) patches.
        mask: (B, N), 1 where the student's patch was replaced by the mask token
            (bool, int or float 0/1).
        center: (K,) running mean of the teacher's patch logits (`update_center`).
        student_temperature, teacher_temperature: softmax temperatures (0.1, 0.04).
    """
    student_shape = check_rank("student_patch_logits", student_patch_logits, (3,), "(B, N, K)")
    teacher_shape = check_rank("teacher_patch_logits", teacher_patch_logits, (3,), "(B, N, K)")
    mask_shape = check_rank("mask", mask, (2,), "(B, N)")
    for axis, what in ((0, "batch size B"), (1, "number of patches N"), (2, "number of outputs K")):
        check_same_dim(
            "student_patch_logits", student_shape[axis],
            "teacher_patch_logits", teacher_shape[axis], what,
        )
    for axis, what in ((0, "batch size B"), (1, "number of patches N")):
        check_same_dim("mask", mask_shape[axis], "student_patch_logits", student_shape[axis], what)
    check_center(center, teacher_shape[-1])

    targets = teacher_probabilities(teacher_patch_logits, center, teacher_temperature)
    per_patch = soft_cross_entropy(targets, student_patch_logits, student_temperature)
    masked = ops.greater(ops.cast(mask, "float32"), 0.0)
    total = ops.sum(ops.where(masked, per_patch, 0.0))
    count = ops.sum(ops.cast(masked, "float32"))
    return total / ops.maximum(count, 1.0)
