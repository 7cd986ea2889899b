"""The SigLIP pairwise logit head (paper sec. 2.1, from SigLIP): L2-normalized image and
text embeddings, logits = exp(t) * zimg . ztxt^T + b with learned log-temperature t
(init log 10) and bias b (init -10)."""

import math

import keras
from keras import ops

from keras_siglip2.layers.config import ConfigAttributes

NORM_EPSILON = 1e-8


def l2_normalize(x, axis=-1):
    """z / (||z|| + 1e-8), the reference implementation's formula (not max(||z||, eps)),
    with a finite gradient at z = 0: the text tower's `head` starts at zero (as in
    big_vision), so at the first training step every text embedding is 0 and
    d||z||/dz = z / ||z|| would be NaN. ||z|| is computed as sqrt(max(||z||^2, 1e-30)),
    which changes the value only where ||z|| < 1e-15 (where it is 0 either way)."""
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x / (ops.sqrt(ops.maximum(squared, 1e-30)) + NORM_EPSILON)


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2LogitHead(ConfigAttributes, keras.layers.Layer):
    """Holds t and b; maps (B_img, D), (B_txt, D) embeddings to (B_img, B_txt) logits.

    Computed in float32 whatever the dtype policy: the logits feed a loss and a sigmoid.
    """

    CONFIG_KEYS = ("temperature_init", "bias_init")

    def __init__(self, temperature_init=10.0, bias_init=-10.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature_init = temperature_init
        self.bias_init = bias_init

    def build(self, *args):
        self.log_temperature = self.add_weight(
            shape=(1,),
            initializer=keras.initializers.Constant(math.log(self.temperature_init)),
            dtype="float32",
            name="log_temperature",
        )
        self.bias = self.add_weight(
            shape=(1,),
            initializer=keras.initializers.Constant(self.bias_init),
            dtype="float32",
            name="bias",
        )
        self.built = True

    def call(self, vision_embeddings, text_embeddings):
        zimg = l2_normalize(ops.cast(vision_embeddings, "float32"))
        ztxt = l2_normalize(ops.cast(text_embeddings, "float32"))
        logits = ops.matmul(zimg, ops.transpose(ztxt))
        logits = logits * ops.exp(self.log_temperature) + self.bias
        return logits, ops.transpose(logits)

    def compute_output_shape(self, vision_shape, text_shape):
        return (vision_shape[0], text_shape[0]), (text_shape[0], vision_shape[0])

    def compute_output_spec(self, vision_embeddings, text_embeddings):
        v, t = vision_embeddings.shape[0], text_embeddings.shape[0]
        return (
            keras.KerasTensor((v, t), dtype="float32"),
            keras.KerasTensor((t, v), dtype="float32"),
        )
