"""SigLIP 2 training recipe (paper sec. 2.1-2.5): losses, pretrainer, curriculum, data.

Public names: `SigLIP2Pretrainer` (the multi-loss train step with the EMA teacher),
`SigLIPLoss`, the curriculum callbacks `LossCurriculum` (80 %: + SILC / TIPS) and
`ResolutionAdaptation` (95 %: resolution switch), `StopOnNonFiniteLoss`, the paper's
optimizer `siglip2_optimizer` / `WarmupCosineSchedule`, the resize helpers for the
resolution switch, and `ActiveCurator` (ACID, sec. 2.5). Data pipelines and the
synthetic demo dataset are in `keras_siglip2.training.data`.
"""

from keras_siglip2.training.callbacks import (
    LossCurriculum,
    NonFiniteLossError,
    ResolutionAdaptation,
    StopOnNonFiniteLoss,
)
from keras_siglip2.training.heads import SigLIP2ProjectionHead
from keras_siglip2.training.losses import SigLIPLoss
from keras_siglip2.training.optimizers import WarmupCosineSchedule, siglip2_optimizer
from keras_siglip2.training.pretrainer import SigLIP2Pretrainer
from keras_siglip2.training.resize import pi_resize_patch_kernel, resize_position_embedding

__all__ = [
    "ActiveCurator",
    "LossCurriculum",
    "NonFiniteLossError",
    "ResolutionAdaptation",
    "SigLIP2Pretrainer",
    "SigLIP2ProjectionHead",
    "SigLIPLoss",
    "StopOnNonFiniteLoss",
    "WarmupCosineSchedule",
    "pi_resize_patch_kernel",
    "resize_position_embedding",
    "siglip2_optimizer",
]


def __getattr__(name):
    if name == "ActiveCurator":
        # lazy: ACID curation is optional to the recipe; loaded on first use
        from keras_siglip2.training.curation import ActiveCurator

        return ActiveCurator
    raise AttributeError(f"module 'keras_siglip2.training' has no attribute {name!r}")
