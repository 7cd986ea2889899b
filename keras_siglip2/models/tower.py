"""What the SigLIP 2 image and text towers share (paper sec. 2): a stack of pre-LN
encoder blocks followed by the final `encoder_norm` LayerNorm."""

from keras_hub.models import Backbone

from keras_siglip2.layers.attention import check_attention_implementation
from keras_siglip2.layers.transformer import block_stack

from keras_siglip2.layers import (
    SigLIP2EncoderBlock,
    SigLIP2MAPHead,
    SigLIP2PatchEmbedding,
    layer_norm,
)


# The configuration every transformer stack of the model (both towers, the LocCa
# decoder) shares; each class lists its own keys around these in its CONFIG_KEYS.
STACK_CONFIG_KEYS = ("hidden_dim", "num_layers", "num_heads", "intermediate_dim")
NORM_AND_ATTENTION_KEYS = ("layer_norm_epsilon", "attention_implementation")


class SigLIP2Tower(Backbone):
    """Base of the towers. Subclasses call `_build_encoder` (image towers first
    `_build_patch_embedding` and their position layer, then `_build_encoder` with
    `map_head=True`) before `super().__init__` and run their embedded tokens through
    `_run_encoder`."""

    def _build_patch_embedding(self, patch_size, hidden_dim, dtype):
        self.patch_embedding = SigLIP2PatchEmbedding(
            hidden_dim, patch_size, dtype=dtype, name="patch_embedding"
        )


    def _build_encoder(
        self, hidden_dim, num_layers, num_heads, intermediate_dim, eps, dtype, map_head=False,
        attention_implementation="auto",
    ):
        check_attention_implementation(attention_implementation)
        block = dict(
            layer_norm_epsilon=eps, attention_implementation=attention_implementation,
            dtype=dtype,
        )
        self.encoder_blocks = block_stack(
            SigLIP2EncoderBlock, num_layers, hidden_dim, num_heads, intermediate_dim,
            "encoder_block", **block,
        )
        self.encoder_norm = layer_norm("encoder_norm", dtype, eps)
        if map_head:  # the image towers' pooling
            self.head = SigLIP2MAPHead(
                hidden_dim, num_heads, intermediate_dim, name="map_head", **block
            )

    def _run_encoder(self, x, key_mask=None):
        for block in self.encoder_blocks:
            x = block(x, key_mask=key_mask)
        return self.encoder_norm(x)
