"""The SigLIP 2 optimizer (paper sec. 2.1, "Architecture, training data, optimizer"):
Adam with decoupled weight decay, peak learning rate 1e-3, weight decay 1e-4, gradients
clipped to global norm 1, and a cosine learning-rate schedule with linear warmup.

"Decoupled" is meant as in big_vision: the weight decay is scaled by the schedule but not
by the peak learning rate, so each step shrinks a kernel by `1e-4 * schedule(step)`.
Keras' `AdamW` multiplies its `weight_decay` by the current learning rate, hence it gets
`weight_decay / peak_learning_rate` (0.1 for the paper's numbers). As in big_vision only
kernels (Dense / projection matrices) are decayed: biases, LayerNorm scales, embeddings,
position embeddings, the MAP probe, the mask token and the logit temperature / bias are not.
"""

import math

import keras
from keras import ops

from keras_siglip2.checks import check_positive_int

PEAK_LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4
GLOBAL_CLIPNORM = 1.0
# The paper: "a cosine schedule with 20k warmup steps" (sec. 2.1, 32k batch, 40B
# examples: about 1.2M steps, so 1.6 % of training). Short runs cap the warmup at
# WARMUP_FRACTION of their steps (our choice: 20k steps would be the whole run).
PAPER_WARMUP_STEPS = 20_000
WARMUP_FRACTION = 0.05

# Variables whose name matches one of these are not weight-decayed (everything that is
# not a kernel).
NO_DECAY_NAMES = (
    "bias",
    "gamma",
    "beta",
    "embeddings",
    "grid",
    "probe",
    "mask_token",
    "log_temperature",
    "center",
    "scale",
)


@keras.saving.register_keras_serializable(package="keras_siglip2")
class WarmupCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak_learning_rate` over `warmup_steps`, then cosine
    decay to `end_learning_rate` at `total_steps` (constant afterwards).

    Args:
        peak_learning_rate: float, 1e-3 in the paper.
        total_steps: int or None. None defers the length to `SigLIP2Pretrainer.fit`,
            which sets it from `epochs x steps_per_epoch` (`set_total_steps`).
        warmup_steps: int or None. None: the paper's 20,000 steps, capped at
            `warmup_fraction` of `total_steps` (so a 1,000-step run warms up for 50).
        warmup_fraction: float in [0, 1), the cap used when `warmup_steps` is None.
        end_learning_rate: float, 0.
    """

    def __init__(
        self,
        peak_learning_rate=PEAK_LEARNING_RATE,
        total_steps=None,
        warmup_steps=None,
        warmup_fraction=WARMUP_FRACTION,
        end_learning_rate=0.0,
    ):
        if not peak_learning_rate > 0:
            raise ValueError(
                f"`peak_learning_rate` must be > 0; got {peak_learning_rate!r}."
            )
        if not 0 <= warmup_fraction < 1:
            raise ValueError(
                f"`warmup_fraction` must lie in [0, 1); got {warmup_fraction!r}."
            )
        if warmup_steps is not None and warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0; got {warmup_steps!r}.")
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_fraction = float(warmup_fraction)
        self.end_learning_rate = float(end_learning_rate)
        self._warmup_steps_arg = warmup_steps
        self.total_steps = None
        self.warmup_steps = None
        if total_steps is not None:
            self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps):
        """Fixes the schedule length (and the warmup, when given as a fraction)."""
        check_positive_int("total_steps", total_steps)
        warmup = self._warmup_steps_arg
        if warmup is None:
            warmup = min(PAPER_WARMUP_STEPS, int(round(self.warmup_fraction * total_steps)))
        if warmup >= total_steps:
            raise ValueError(
                f"`warmup_steps`={warmup} must be smaller than `total_steps`={total_steps}."
            )
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup)

    def __call__(self, step):
        if self.total_steps is None:
            raise ValueError(
                "WarmupCosineSchedule has no `total_steps`: pass `total_steps` to "
                "`SigLIP2Pretrainer.compile()` or train with `SigLIP2Pretrainer.fit()` "
                "with a known number of steps."
            )
        step = ops.cast(step, "float32")
        peak, end = self.peak_learning_rate, self.end_learning_rate
        warmup = float(self.warmup_steps)
        if self.warmup_steps > 0:
            warm = peak * (step + 1.0) / warmup  # the first step already moves
        else:
            warm = peak
        progress = (step - warmup) / float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip(progress, 0.0, 1.0)
        cosine = end + (peak - end) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < warmup, warm, cosine)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self._warmup_steps_arg,
            "warmup_fraction": self.warmup_fraction,
            "end_learning_rate": self.end_learning_rate,
        }


def siglip2_optimizer(
    learning_rate=PEAK_LEARNING_RATE,
    weight_decay=WEIGHT_DECAY,
    clipnorm=GLOBAL_CLIPNORM,
    total_steps=None,
    warmup_steps=None,
    warmup_fraction=WARMUP_FRACTION,
    beta_1=0.9,
    beta_2=0.999,
):
    """The paper's optimizer: `keras.optimizers.AdamW` with a `WarmupCosineSchedule`,
    big_vision-style decoupled weight decay (see the module docstring), global-norm
    gradient clipping, and no decay on non-kernel variables.

    Args:
        learning_rate: float, the peak learning rate (1e-3).
        weight_decay: float, the per-step decoupled decay at the schedule peak (1e-4).
        clipnorm: float or None, the global gradient-norm clip (1.0).
        total_steps, warmup_steps, warmup_fraction: the schedule (see
            `WarmupCosineSchedule`); `total_steps=None` lets `fit` fill it in.
        beta_1, beta_2: Adam's moment decays (0.9, 0.999).
    """
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        raise TypeError(
            "`learning_rate` must be the peak learning rate (a float); the warmup + "
            "cosine schedule is built here. Pass your own optimizer to "
            "`compile(optimizer=...)` for another schedule."
        )
    if not learning_rate > 0:
        raise ValueError(f"`learning_rate` must be > 0; got {learning_rate!r}.")
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0; got {weight_decay!r}.")
    schedule = WarmupCosineSchedule(
        learning_rate,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        warmup_fraction=warmup_fraction,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=weight_decay / learning_rate,
        beta_1=beta_1,
        beta_2=beta_2,
        global_clipnorm=clipnorm,
        name="siglip2_adamw",
    )
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return optimizer


def learning_rate_schedule_of(optimizer):
    """The optimizer's `WarmupCosineSchedule`, or None."""
    schedule = getattr(optimizer, "_learning_rate", None)
    inner = getattr(optimizer, "inner_optimizer", None)  # LossScaleOptimizer
    if inner is not None:
        schedule = getattr(inner, "_learning_rate", None)
    return schedule if isinstance(schedule, WarmupCosineSchedule) else None


def clone_optimizer(optimizer):
    """A fresh, unbuilt optimizer with the configuration and the name-based
    weight-decay exclusions of `optimizer` (of its inner optimizer, re-wrapped, for a
    `LossScaleOptimizer`)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        config = optimizer.get_config()
        del config["inner_optimizer"]
        return keras.optimizers.LossScaleOptimizer(
            clone_optimizer(optimizer.inner_optimizer), **config
        )
    clone = optimizer.__class__.from_config(optimizer.get_config())
    pattern = getattr(optimizer, "_exclude_from_weight_decay_pattern", None)
    if pattern is not None:
        clone.exclude_from_weight_decay(var_names=[pattern.pattern])
    return clone
