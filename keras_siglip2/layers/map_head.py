"""Multihead attention pooling (MAP) head of the SigLIP 2 image tower (paper sec. 2;
big_vision `MAPHead`): a learned probe attends to the patch tokens, then x + MLP(LN(x)).
The single query output is the image embedding (SigLIP 2 has no image projection)."""

import keras
from keras import ops

from keras_siglip2.layers.initializers import dense_kernel_init
from keras_siglip2.layers.mlp import SigLIP2MLP
from keras_siglip2.layers.transformer import SigLIP2BlockBase, layer_norm


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2MAPHead(SigLIP2BlockBase):
    """Pools (B, N, d) tokens to (B, d); `key_mask` (B, N) excludes padding tokens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        policy = self.dtype_policy
        self.attention = self.attention_layer("attention", cross_attention=True)
        self.norm = layer_norm("norm", policy, self.layer_norm_epsilon)
        self.mlp = SigLIP2MLP(self.hidden_dim, self.intermediate_dim, dtype=policy, name="mlp")

    def build(self, input_shape):
        self.probe = self.add_weight(
            shape=(1, 1, self.hidden_dim),
            initializer=dense_kernel_init(),
            name="probe",
        )
        probe_shape = (input_shape[0], 1, self.hidden_dim)
        self.attention.build(probe_shape, input_shape)
        self.norm.build(probe_shape)
        self.mlp.build(probe_shape)
        self.built = True

    def call(self, tokens, key_mask=None):
        batch = ops.shape(tokens)[0]
        probe = ops.cast(self.probe, tokens.dtype)
        probe = ops.broadcast_to(probe, (batch, 1, self.hidden_dim))
        x = self.attention(probe, context=tokens, key_mask=key_mask)
        x = x + self.mlp(self.norm(x))
        return x[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.hidden_dim)
