"""The model factory: a `SigLIP2Backbone` from plain dicts of tower sizes, the form in
which the preset registry (paper Table 1 architectures) and every converter describe a
model."""

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.naflex_vision_encoder import SigLIP2NaFlexVisionEncoder
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

VISION_TOWERS = {"fixed": SigLIP2VisionEncoder, "naflex": SigLIP2NaFlexVisionEncoder}


def build_backbone(vision, text, dtype=None):
    """A randomly initialized `SigLIP2Backbone` from two dicts of tower sizes.
    `vision["type"]` is "fixed" (the keys of SigLIP2VisionEncoder, the default) or
    "naflex" (SigLIP2NaFlexVisionEncoder); `text` holds SigLIP2TextEncoder's keys."""
    vision = dict(vision)
    kind = vision.pop("type", "fixed")
    if kind not in VISION_TOWERS:
        raise ValueError(f"Unknown vision tower type {kind!r}; expected 'fixed' or 'naflex'.")
    vision_encoder = VISION_TOWERS[kind](**vision, dtype=dtype)
    text_encoder = SigLIP2TextEncoder(**text, dtype=dtype)
    return SigLIP2Backbone(vision_encoder, text_encoder, dtype=dtype)
