"""Pre-LayerNorm transformer encoder block shared by the SigLIP 2 image and text towers
(paper sec. 2; big_vision `Encoder1DBlock`): x + MHA(LN(x)), then x + MLP(LN(x))."""

import keras

from keras_siglip2.layers.attention import SigLIP2Attention, check_attention_implementation
from keras_siglip2.layers.config import ConfigAttributes
from keras_siglip2.layers.fences import gradient_fence
from keras_siglip2.layers.mlp import SigLIP2MLP

LAYER_NORM_EPSILON = 1e-6


def layer_norm(name, dtype, epsilon=LAYER_NORM_EPSILON):
    """The LayerNorm used everywhere in SigLIP 2 (eps 1e-6, scale and bias)."""
    return keras.layers.LayerNormalization(epsilon=epsilon, dtype=dtype, name=name)


class SigLIP2BlockBase(ConfigAttributes, keras.layers.Layer):
    """What the pre-LN blocks share (encoder block, MAP head, LocCa decoder block):
    `hidden_dim`, `num_heads`, `intermediate_dim` (MLP), `layer_norm_epsilon` and
    `attention_implementation` ("auto", "flash" or "xla"; `layers/attention.py`)."""

    CONFIG_KEYS = (
        "hidden_dim", "num_heads", "intermediate_dim", "layer_norm_epsilon",
        "attention_implementation",
    )

    def __init__(
        self,
        hidden_dim,
        num_heads,
        intermediate_dim,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        attention_implementation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.attention_implementation = check_attention_implementation(
            attention_implementation
        )

    def attention_layer(self, name, cross_attention=False):
        """A `SigLIP2Attention` of this block's width, heads, policy and implementation."""
        return SigLIP2Attention(
            self.hidden_dim, self.num_heads, cross_attention=cross_attention,
            attention_implementation=self.attention_implementation,
            dtype=self.dtype_policy, name=name,
        )


def block_stack(block_class, num_layers, hidden_dim, num_heads, intermediate_dim, prefix,
                **block_kwargs):
    """The `num_layers` blocks of a tower or decoder, named `{prefix}_{i}` (the weight
    paths of the checkpoints)."""
    return [
        block_class(hidden_dim, num_heads, intermediate_dim, name=f"{prefix}_{i}", **block_kwargs)
        for i in range(num_layers)
    ]


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2EncoderBlock(SigLIP2BlockBase):
    """One pre-LN block: bidirectional self-attention, then the MLP."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        policy, eps = self.dtype_policy, self.layer_norm_epsilon
        self.norm1 = layer_norm("norm1", policy, eps)
        self.attention = self.attention_layer("attention")
        self.norm2 = layer_norm("norm2", policy, eps)
        self.mlp = SigLIP2MLP(self.hidden_dim, self.intermediate_dim, dtype=policy, name="mlp")

    def build(self, input_shape):
        for sublayer in (self.norm1, self.attention, self.norm2, self.mlp):
            sublayer.build(input_shape)
        self.built = True

    def call(self, x, key_mask=None):
        # The fences: the residual stream's gradient written once (layers/fences.py).
        x = gradient_fence(x)
        x = gradient_fence(x + self.attention(self.norm1(x), key_mask=key_mask))
        return x + self.mlp(self.norm2(x))

    def compute_output_shape(self, input_shape):
        return input_shape
