"""Building blocks of the SigLIP 2 towers: attention, MLP, encoder block, MAP head,
patch / position / token embeddings."""

from keras_siglip2.layers.attention import SigLIP2Attention
from keras_siglip2.layers.embeddings import (
    SigLIP2PatchEmbedding,
    SigLIP2PositionEmbedding,
    patchify,
    token_embedding,
)
from keras_siglip2.layers.map_head import SigLIP2MAPHead
from keras_siglip2.layers.mlp import SigLIP2MLP
from keras_siglip2.layers.fences import gradient_fence
from keras_siglip2.layers.transformer import SigLIP2EncoderBlock, layer_norm
from keras_siglip2.layers.logit_head import SigLIP2LogitHead, l2_normalize
