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

    The layer follows its dtype policy like every keras-hub layer (t and b are
    variables of the policy's variable dtype, the outputs have its compute dtype, as
    keras-hub's backbone harness requires), but the arithmetic is float32 whatever
    the policy: the embeddings are cast to float32 before the L2 normalization and
    t and b are read without autocasting, so only the final logits are rounded to
    the compute dtype (float16 or bfloat16 under the mixed policies). Losses need
    float32 logits: `float32_logits` returns them unrounded (the training losses
    compute them from the embeddings and t, b themselves, in float32).
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
            autocast=False,
            name="log_temperature",
        )
        self.bias = self.add_weight(
            shape=(1,),
            initializer=keras.initializers.Constant(self.bias_init),
            autocast=False,
            name="bias",
        )
        self.built = True

    def float32_logits(self, vision_embeddings, text_embeddings):
        """(vision_logits, text_logits) in float32 under any dtype policy."""
        zimg = l2_normalize(ops.cast(vision_embeddings, "float32"))
        ztxt = l2_normalize(ops.cast(text_embeddings, "float32"))
        logits = ops.matmul(zimg, ops.transpose(ztxt))
        temperature = ops.exp(ops.cast(self.log_temperature, "float32"))
        logits = logits * temperature + ops.cast(self.bias, "float32")
        return logits, ops.transpose(logits)

    def call(self, vision_embeddings, text_embeddings):
        logits = self.float32_logits(vision_embeddings, text_embeddings)
        return tuple(ops.cast(x, self.compute_dtype) for x in logits)

    def compute_output_shape(self, vision_embeddings_shape, text_embeddings_shape):
        v, t = vision_embeddings_shape[0], text_embeddings_shape[0]
        return (v, t), (t, v)
