"""`NaFlexSwitch`: the NaFlex curriculum stage of the SigLIP 2 recipe (paper sec. 2.4.2:
the NaFlex variants continue from the fixed-resolution run at 90 % of training, with
aspect-preserving NaFlex inputs, sequence lengths sampled per batch, and the sigmoid
and LocCa losses only).

At `start` (0.9) of training the callback calls `SigLIP2Pretrainer.switch_to_naflex`:
the fixed tower becomes a NaFlex tower in place (position embedding to the learned
grid), the optimizer state is carried over, SILC / TIPS are turned off. Progress counts
optimizer steps as the other curriculum callbacks (`training/callbacks.py`), and the
stage is saved in the pretrainer's variables (and a checkpoint's metadata), so a run
resumed after the switch reloads as NaFlex and the callback does nothing more. The
data: after the switch the step takes the NaFlex inputs when the batch has them (`train`
fits the NaFlex stage on NaFlex views of the data, aspect kept, the sequence length
drawn per batch: `training/recipes/naflex_stage.py`), else cuts the batch's "images"
into patches. Do not combine with `ResolutionAdaptation` (a fixed-resolution stage);
with `LossCurriculum`, start after it (SILC / TIPS are off after the switch).
"""

from keras_siglip2.checks import check_positive_int
from keras_siglip2.training.callbacks import _ProgressCallback
from keras_siglip2.training.pretrainer.recipe import is_fixed_resolution


class NaFlexSwitch(_ProgressCallback):
    """Switches a fixed-resolution pretrainer to a NaFlex tower at `start` of training.

    Args:
        start: fraction of training strictly inside (0, 1) (0.9, the paper's).
        max_num_patches: the NaFlex tower's default sequence length (256).
        position_grid_size: side G of the learned position grid; default the fixed
            tower's grid side (max(gh, gw)).
        total_steps: total optimizer steps; default `epochs x steps_per_epoch`.
    """

    kind = "naflex"

    def __init__(self, start=0.9, max_num_patches=256, position_grid_size=None,
                 total_steps=None):
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not (
                0 < start < 1):
            raise ValueError(
                f"`start` of NaFlexSwitch must be a fraction of training strictly inside "
                f"(0, 1) (the paper: 0.9); got start={start!r}."
            )
        super().__init__(start, total_steps, "start")
        self.max_num_patches = check_positive_int("max_num_patches", max_num_patches)
        self.position_grid_size = check_positive_int(
            "position_grid_size", position_grid_size, allow_none=True)
        self.switched_at = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if not hasattr(self.model, "switch_to_naflex"):
            raise ValueError("NaFlexSwitch needs a SigLIP2Pretrainer.")
        vision = self.model.backbone.vision_encoder
        if not is_fixed_resolution(vision) and not self.model._naflex_from_images:
            raise ValueError(
                "NaFlexSwitch converts a fixed-resolution image tower; this pretrainer's "
                f"backbone has a {type(vision).__name__} (a NaFlex preset)."
            )

    def on_stage(self, step):
        if is_fixed_resolution(self.model.backbone.vision_encoder):
            self.model.switch_to_naflex(self.max_num_patches, self.position_grid_size)
            self.switched_at = step
