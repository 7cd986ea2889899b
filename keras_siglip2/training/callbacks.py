"""Curriculum callbacks of the SigLIP 2 recipe (paper sec. 2.3-2.4) and the non-finite
loss guard.

- `LossCurriculum` switches SILC self-distillation and TIPS masked prediction on at 80 %
  of training: the teacher is initialized from the student at that step.
- `ResolutionAdaptation` at 95 % resizes the fixed-resolution tower to the target
  resolution (position embedding bilinear-resized; patch stem PI-resized when the patch
  size changes, e.g. 16 -> 14) and training continues with all losses.
- `StopOnNonFiniteLoss` stops training at the first step whose loss terms are NaN / inf,
  naming the step and the terms (`SigLIP2Pretrainer.fit` adds it by default).

Progress is measured in optimizer steps: a switch at fraction f of `total_steps` (given,
or `epochs x steps_per_epoch` from `fit`) happens before step floor(f * total_steps)
(0-based), i.e. once that many steps are done. The step count is read from the
optimizer at the start of `fit`, so a run resumed by `keras.callbacks.BackupAndRestore`
(or from a `ModelCheckpoint`) switches at the same step as an uninterrupted one; the
stage itself is saved in the pretrainer's variables, so a run resumed after a switch
continues in that stage with the saved teacher.

How the data follows the resolution switch: `SigLIP2Pretrainer` resizes the images of a
batch (and the local crops) to the tower's current resolution inside the train step, so
a dataset at the target resolution feeds every stage unchanged (the demo does this:
its images are rendered at the target size and downscaled in the step before 95 %).
"""

import math

import keras

from keras_siglip2 import checks
from keras_siglip2.distribution import to_numpy
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder, image_size_pair


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the step and the terms."""


def check_fraction(name, value):
    """A curriculum fraction must lie in (0, 1] (`keras_siglip2.checks`)."""
    return checks.check_fraction(name, value, low_open=True)


# The paper's start of SILC / TIPS (sec. 2.3: the last 20 % of training).
SELF_DISTILLATION_START = 0.8


def check_curriculum(self_distillation_start, resolution_start):
    """Both fractions in (0, 1] and the resolution switch not before SILC / TIPS."""
    sd = check_fraction("self_distillation_start", self_distillation_start)
    res = check_fraction("start", resolution_start)
    if res < sd:
        raise ValueError(
            "The curriculum is out of order: the resolution switch "
            f"(start={res}) must not come before self-distillation "
            f"(self_distillation_start={sd}); the paper uses 0.8 and 0.95."
        )
    return sd, res


def check_naflex_after_teacher(self_distillation_start, naflex_start, total_steps=None):
    """The NaFlex stage turns SILC / TIPS off (paper sec. 2.4.2: NaFlex from 90 %,
    after SILC / TIPS from 80 %): it must start strictly after them (and, given
    `total_steps`, at a later step), or they would never train."""
    sd = check_fraction("self_distillation_start", self_distillation_start)
    naflex = check_fraction("naflex start", naflex_start)
    at = "" if total_steps is None else (
        f" (of {total_steps} steps: SILC / TIPS from step "
        f"{switch_step(sd, total_steps)}, NaFlex from step "
        f"{switch_step(naflex, total_steps)})")
    if naflex <= sd or (total_steps is not None and switch_step(naflex, total_steps)
                        <= switch_step(sd, total_steps)):
        raise ValueError(
            f"The curriculum is out of order: the NaFlex stage (start={naflex}) turns "
            f"SILC / TIPS off, so it must come after them (self_distillation_start={sd}"
            f"{at}; the paper uses 0.8 and 0.9); start it later or train without "
            "self_distillation and masked_prediction."
        )
    return sd, naflex


def switch_step(fraction, total_steps):
    """Number of completed steps at which a stage starting at `fraction` begins."""
    return int(math.floor(fraction * total_steps + 1e-9))


class _ProgressCallback(keras.callbacks.Callback):
    """Tracks the global optimizer step during `fit`."""

    kind = None

    def __init__(self, start, total_steps=None, start_name="start"):
        super().__init__()
        self.start = check_fraction(start_name, start)
        self.total_steps = checks.check_positive_int("total_steps", total_steps, allow_none=True)
        self._step = None
        self._begin = 0

    def resolved_total_steps(self):
        if self.total_steps is not None:
            return self.total_steps
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        if not epochs or not steps:
            raise ValueError(
                f"{type(self).__name__} needs the length of training: pass "
                "`total_steps=` or fit with a known `steps_per_epoch`."
            )
        return int(epochs) * int(steps)

    @property
    def switch_at(self):
        """The step (number of completed steps) at which this stage begins."""
        return switch_step(self.start, self.resolved_total_steps())

    def _register(self):
        """Records this stage's start in the `params` dict that all callbacks of one
        `fit` share, and checks the order of the stages."""
        if self.params is None:
            self.params = {}
        starts = self.params.setdefault("_siglip2_curriculum", {})
        starts[self.kind] = self.start
        if "self_distillation" in starts and "resolution" in starts:
            check_curriculum(starts["self_distillation"], starts["resolution"])
        if "self_distillation" in starts and "naflex" in starts:
            check_naflex_after_teacher(starts["self_distillation"], starts["naflex"])

    def on_train_begin(self, logs=None):
        self._step = None
        self.resolved_total_steps()  # fail early
        self._register()

    def on_train_batch_begin(self, batch, logs=None):
        if self._step is None:
            self._step = int(to_numpy(self.model.optimizer.iterations))
        self._begin = batch
        if self._step >= self.switch_at:
            self.on_stage(self._step)

    def on_train_batch_end(self, batch, logs=None):
        if self._step is not None:
            self._step += max(batch - self._begin + 1, 1)

    def on_stage(self, step):
        raise NotImplementedError


class LossCurriculum(_ProgressCallback):
    """Switches SILC + TIPS on at `self_distillation_start` (0.8) of training.

    At the switch the teacher is initialized from the student (tower and heads), the
    student's SILC / TIPS heads and mask token are re-initialized, and the stage
    variable is set; the train step is retraced once.

    Args:
        self_distillation_start: fraction of training in (0, 1] (0.8).
        total_steps: total optimizer steps; default `epochs x steps_per_epoch`.
    """

    kind = "self_distillation"

    def __init__(self, self_distillation_start=SELF_DISTILLATION_START, total_steps=None):
        super().__init__(self_distillation_start, total_steps, "self_distillation_start")
        self.self_distillation_start = self.start
        self.switched_at = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if not getattr(self.model, "uses_teacher", False):
            raise ValueError(
                "LossCurriculum needs a SigLIP2Pretrainer with self_distillation or "
                "masked_prediction."
            )

    def on_stage(self, step):
        # The pretrainer's Python mirror of the stage is current here: `fit` and weight
        # loading (BackupAndRestore) set it from the saved stage variable. After the
        # NaFlex stage switch (`NaFlexSwitch`) the pretrainer has no SILC / TIPS.
        if self.model._self_distillation_on or not self.model.uses_teacher:
            return
        self.model.start_self_distillation()
        self.switched_at = step


class ResolutionAdaptation(_ProgressCallback):
    """Moves a fixed-resolution tower to `target_image_size` at `start` (0.95).

    Args:
        start: fraction of training in (0, 1] (0.95).
        target_image_size: int or (height, width), the final resolution.
        target_patch_size: int or None. A different patch size PI-resizes the patch
            stem (the paper's /14 models are trained at /16 and resized here).
        total_steps: total optimizer steps; default `epochs x steps_per_epoch`.
    """

    kind = "resolution"

    def __init__(self, start=0.95, target_image_size=None, target_patch_size=None,
                 total_steps=None):
        super().__init__(start, total_steps, "start")
        if target_image_size is None:
            raise ValueError("ResolutionAdaptation needs `target_image_size`.")
        self.target_image_size = image_size_pair(target_image_size)
        if min(self.target_image_size) < 1:
            raise ValueError(f"`target_image_size` must be positive; got {target_image_size!r}.")
        self.target_patch_size = checks.check_positive_int("target_patch_size", target_patch_size,
                                                          allow_none=True)
        self.switched_at = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        backbone = getattr(self.model, "backbone", None)
        if not isinstance(getattr(backbone, "vision_encoder", None), SigLIP2VisionEncoder):
            raise ValueError(
                "ResolutionAdaptation needs a SigLIP2Pretrainer whose backbone has a "
                "fixed-resolution image tower (NaFlex has no fixed resolution)."
            )

    def on_stage(self, step):
        if self.model.adapt_resolution(self.target_image_size, self.target_patch_size):
            self.switched_at = step


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` at the first step whose loss terms ("loss" and every
    "<term>_loss" in the logs) are not finite, naming the step and the terms.

    Training stops before any later callback (e.g. a checkpoint) runs for that step, so
    the last good checkpoint stays intact; on JAX the pretrainer's step also keeps the
    previous weights when a loss is not finite.
    """

    def __init__(self):
        super().__init__()
        self._step = None
        self._begin = 0

    def on_train_begin(self, logs=None):
        self._step = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._step is None:
            self._step = int(to_numpy(self.model.optimizer.iterations))
        self._begin = batch

    def on_train_batch_end(self, batch, logs=None):
        bad = []
        for name, value in (logs or {}).items():
            if name == "loss" or name.endswith("_loss"):
                value = float(to_numpy(value))
                if not math.isfinite(value):
                    bad.append((name, value))
        if bad:
            terms = [n for n, _ in bad if n != "loss"] or ["loss"]
            values = ", ".join(f"{n}={v}" for n, v in bad)
            raise NonFiniteLossError(
                f"Training stopped at step {self._step}: the loss term(s) "
                f"{', '.join(repr(t) for t in terms)} became non-finite ({values}). "
                "The weights of the last good step were kept."
            )
        if self._step is not None:
            self._step += max(batch - self._begin + 1, 1)
