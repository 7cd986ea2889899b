"""The SigLIP 2 recipe's constants and rules (paper sec. 2.1-2.4), in one place: the loss
terms and their default weights (with the SILC / TIPS size factors), the SILC / TIPS head
sizes, and the rule that a NaFlex tower trains without SILC / TIPS (sec. 2.4.2). The
pretrainer, `train()` and the CLI all read them from here.
"""

import math

from keras import ops

from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

# Loss-weight size factors for SILC / TIPS by vision width (B, L, So400m, g-opt).
SIZE_FACTORS = {768: 0.25, 1024: 0.5, 1152: 1.0, 1536: 0.5}
BASE_LOSS_WEIGHTS = {"sigmoid": 1.0, "locca": 1.0, "silc": 1.0, "tips": 0.25}
LOSS_TERMS = ("sigmoid", "locca", "silc", "tips")
# The terms computed against the EMA teacher: active from the teacher stage (80 %) on.
TEACHER_TERMS = ("silc", "tips")
_WEIGHT_ALIASES = {"self_distillation": "silc", "masked_prediction": "tips"}

# EMA momentum of the teacher. The paper defers to SILC, which follows DINO's 0.996
# (DINO raises it towards 1 over training; SILC / TIPS only run for the last 20 %).
TEACHER_MOMENTUM = 0.996
MASK_RATIO = 0.5
PARALLEL_PROBABILITY = 0.5

# Logged by training steps with an ACID curator (`curator=`).
CURATION_METRICS = ("acid_learnability", "acid_kept_fraction")

# Batch fields produced by make_locca_targets that the pretrainer reads.
LOCCA_FIELDS = ("decoder_token_ids", "decoder_targets", "decoder_weights")
# LocCa's three tasks (Wan et al. 2024; paper sec. 2.2), in the order of the task axis of
# (B, 3, L) decoder fields (`training.data.locca_targets.TASKS`).
LOCCA_TASKS = ("captioning", "aref", "gcap")


def size_factor(vision_width):
    """0.25 / 0.5 / 1.0 / 0.5 for B / L / So400m / g widths; 1.0 for any other width."""
    return SIZE_FACTORS.get(int(vision_width), 1.0)


def default_loss_weights(vision_width):
    """The paper's loss weights for a vision tower of this width."""
    factor = size_factor(vision_width)
    weights = dict(BASE_LOSS_WEIGHTS)
    weights["silc"] *= factor
    weights["tips"] *= factor
    return weights


def default_head_dims(vision_width):
    """(hidden, bottleneck, output) sizes of the SILC / TIPS projection heads.

    The paper gives no sizes (it defers to SILC / TIPS, which use DINO / iBOT heads).
    DINO's head is (2048, 256, 65,536) (main_dino.py `out_dim` 65536: "for complex and
    large datasets large values work well"); iBOT's (2048, 256, 8,192) for both the
    [CLS] and the patch head (main_ibot.py `out_dim` = `patch_out_dim` = 8192). We
    take (2048, 256, 4096) from the B width up (`SigLIP2ProjectionHead`'s defaults:
    the centers and the teacher copy stay small while SILC / TIPS run for 20 % of
    training only), and (4 w, w, 256) for tiny towers of width w. The pretrainer's
    `head_dims` (SILC, and TIPS by default) and `tips_head_dims` set other sizes, e.g.
    (2048, 256, 65536) and (2048, 256, 8192) for DINO's and iBOT's.
    """
    if vision_width >= 768:
        return (2048, 256, 4096)
    return (4 * vision_width, vision_width, 256)


def warmed_up_temperature(start, final, steps_done, warmup_steps):
    """start + (final - start) * min(steps_done / warmup_steps, 1): a linear warm-up of
    the teacher temperature over the first `warmup_steps` steps of the teacher stage
    (DINO: 0.04 -> 0.07 over 30 epochs), then `final`. Works on numbers and tensors."""
    if isinstance(steps_done, (int, float)):
        fraction = min(steps_done / warmup_steps, 1.0)
    else:
        fraction = ops.minimum(steps_done / warmup_steps, 1.0)
    return start + (final - start) * fraction


def _scalar_weight(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value >= 0
    ):
        raise ValueError(
            f"`loss_weights[{name!r}]` must be a finite number >= 0; got {value!r}."
        )
    return float(value)


def resolve_loss_weights(loss_weights, vision_width):
    """The default weights for this width, overridden by the dict `loss_weights` (keys
    among LOSS_TERMS and the aliases "self_distillation" / "masked_prediction")."""
    weights = default_loss_weights(vision_width)
    if loss_weights is None:
        return weights
    if not isinstance(loss_weights, dict):
        raise TypeError(
            "`loss_weights` must be a dict with keys among "
            f"{list(LOSS_TERMS) + list(_WEIGHT_ALIASES)}; got {type(loss_weights).__name__}."
        )
    for key, value in loss_weights.items():
        name = _WEIGHT_ALIASES.get(key, key)
        if name not in LOSS_TERMS:
            raise ValueError(
                f"Unknown loss weight {key!r}; expected keys among "
                f"{list(LOSS_TERMS) + list(_WEIGHT_ALIASES)}."
            )
        weights[name] = _scalar_weight(key, value)
    return weights


def resolve_locca_task_weights(task_weights):
    """(captioning, aref, gcap) float weights from None (all 1.0), a dict with keys
    among LOCCA_TASKS (missing ones 1.0) or a 3-sequence; each finite and >= 0."""
    if task_weights is None:
        return (1.0,) * len(LOCCA_TASKS)
    if isinstance(task_weights, dict):
        unknown = sorted(set(task_weights) - set(LOCCA_TASKS))
        if unknown:
            raise ValueError(
                f"`locca_task_weights` has unknown tasks {unknown}; expected keys among "
                f"{list(LOCCA_TASKS)}."
            )
        values = [task_weights.get(task, 1.0) for task in LOCCA_TASKS]
    elif isinstance(task_weights, (list, tuple)) and len(task_weights) == len(LOCCA_TASKS):
        values = list(task_weights)
    else:
        raise ValueError(
            "`locca_task_weights` must be None, a dict with keys among "
            f"{list(LOCCA_TASKS)} or a sequence of 3 numbers; got {task_weights!r}."
        )
    for task, value in zip(LOCCA_TASKS, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0):
            raise ValueError(
                f"`locca_task_weights[{task!r}]` must be a finite number >= 0; got {value!r}."
            )
    return tuple(float(v) for v in values)


def is_fixed_resolution(vision_encoder):
    """Whether an image tower is the fixed-resolution one (else NaFlex)."""
    return isinstance(vision_encoder, SigLIP2VisionEncoder)


def resolve_teacher_losses(vision_encoder, self_distillation=None, masked_prediction=None,
                           hint=""):
    """(self_distillation, masked_prediction) as bools for this image tower.

    The rule of the paper's NaFlex stage (sec. 2.4.2): a NaFlex tower trains with the
    sigmoid and LocCa losses only. None means the default: on for a fixed-resolution
    tower, off for a NaFlex one; True with a NaFlex tower is a ValueError (`hint` is
    appended to its message, e.g. how to turn them off on the command line).
    """
    fixed = is_fixed_resolution(vision_encoder)
    sd = fixed if self_distillation is None else bool(self_distillation)
    mp = fixed if masked_prediction is None else bool(masked_prediction)
    if (sd or mp) and not fixed:
        raise ValueError(
            "SILC / TIPS need a fixed-resolution image tower (the paper trains NaFlex "
            "without them, sec. 2.4.2); pass self_distillation=False, "
            f"masked_prediction=False for a {type(vision_encoder).__name__}."
            + (f" {hint}" if hint else "")
        )
    return sd, mp


def check_local_image_size(size, vision):
    """None, or `size` (int or (height, width)) as a pair of ints >= the patch size."""
    if size is None:
        return None
    if not hasattr(vision, "image_size"):
        raise ValueError(
            "`local_image_size` needs a fixed-resolution image tower (NaFlex towers "
            f"train without SILC); got local_image_size={size!r}."
        )
    pair = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    try:
        pair = tuple(pair)
        ok = len(pair) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= vision.patch_size
            for v in pair
        )
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            "`local_image_size` must be None, an int or (height, width), each at least "
            f"the patch size {vision.patch_size}; got local_image_size={size!r}."
        )
    return pair
