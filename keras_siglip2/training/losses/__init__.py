"""Losses of the SigLIP 2 recipe (paper sec. 2.1-2.3): sigmoid (plain and chunked),
LocCa decoder cross-entropy, SILC self-distillation and TIPS masked prediction. Each is
a function of plain tensors written with keras.ops, computed in float32."""

from keras_siglip2.training.losses.locca import (
    locca_loss,
    locca_loss_from_features,
    token_cross_entropy,
    token_cross_entropy_from_features,
    weighted_token_mean,
)
from keras_siglip2.training.losses.masked_prediction import masked_prediction_loss
from keras_siglip2.training.losses.self_distillation import (
    CENTER_MOMENTUM,
    STUDENT_TEMPERATURE,
    TEACHER_TEMPERATURE,
    self_distillation_loss,
    update_center,
)
from keras_siglip2.training.losses.sigmoid import (
    SigLIPLoss,
    chunked_sigmoid_loss,
    per_example_sigmoid_loss,
    sigmoid_logits,
    sigmoid_loss,
)
from keras_siglip2.training.losses.distributed import (
    DistributedSigLIPLoss,
    distributed_sigmoid_loss,
)
