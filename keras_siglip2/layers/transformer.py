"""Pre-LayerNorm transformer encoder block shared by the SigLIP 2 image and text towers
(paper sec. 2; big_vision `Encoder1DBlock`): x + MHA(LN(x)), then x + MLP(LN(x))."""

import keras

from keras_siglip2.layers.attention import SigLIP2Attention
from keras_siglip2.layers.config import ConfigAttributes
from keras_siglip2.layers.mlp import SigLIP2MLP

LAYER_NORM_EPSILON = 1e-6


def layer_norm(name, dtype, epsilon=LAYER_NORM_EPSILON):
    """The LayerNorm used everywhere in SigLIP 2 (eps 1e-6, scale and bias)."""
    return keras.layers.LayerNormalization(epsilon=epsilon, dtype=dtype, name=name)


class SigLIP2BlockBase(ConfigAttributes, keras.layers.Layer):
    """What the pre-LN blocks share (encoder block, MAP head, LocCa decoder block):
    `hidden_dim`, `num_heads`, `intermediate_dim` (MLP) and `layer_norm_epsilon`."""

    CONFIG_KEYS = ("hidden_dim", "num_heads", "intermediate_dim", "layer_norm_epsilon")

    def __init__(
        self,
        hidden_dim,
        num_heads,
        intermediate_dim,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.layer_norm_epsilon = layer_norm_epsilon


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2EncoderBlock(SigLIP2BlockBase):
    """One pre-LN block: bidirectional self-attention, then the MLP."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        policy, eps = self.dtype_policy, self.layer_norm_epsilon
        self.norm1 = layer_norm("norm1", policy, eps)
        self.attention = SigLIP2Attention(
            self.hidden_dim, self.num_heads, dtype=policy, name="attention"
        )
        self.norm2 = layer_norm("norm2", policy, eps)
        self.mlp = SigLIP2MLP(self.hidden_dim, self.intermediate_dim, dtype=policy, name="mlp")

    def build(self, input_shape):
        for sublayer in (self.norm1, self.attention, self.norm2, self.mlp):
            sublayer.build(input_shape)
        self.built = True

    def call(self, x, key_mask=None):
        x = x + self.attention(self.norm1(x), key_mask=key_mask)
        return x + self.mlp(self.norm2(x))

    def compute_output_shape(self, input_shape):
        return input_shape
