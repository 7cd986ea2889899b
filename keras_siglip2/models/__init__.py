"""SigLIP 2 models: the image towers (fixed resolution, NaFlex), the text tower and the
two-tower backbone, and the training-only LocCa decoder."""

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.locca_decoder import SigLIP2LocCaDecoder, locca_decoder_for
from keras_siglip2.models.naflex_vision_encoder import SigLIP2NaFlexVisionEncoder
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
