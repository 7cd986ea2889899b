"""SigLIP 2 models: the image towers (fixed resolution, NaFlex), the text tower and the
two-tower backbone."""

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.naflex_vision_encoder import SigLIP2NaFlexVisionEncoder
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
