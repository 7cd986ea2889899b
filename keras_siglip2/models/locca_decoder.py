"""LocCa decoder of the SigLIP 2 recipe (paper sec. 2.2; Wan et al. 2024, LocCa; parallel
prediction from Tschannen et al. 2023, CapPa).

A transformer decoder attached to the image tower during pretraining only (it never
enters the exported model). It reads the un-pooled image tokens through
cross-attention and predicts three kinds of targets (`training/data/locca_targets.py`):
captions, referring-expression boxes (ARef) and grounded captions (GCap).

Architecture: token embedding + learned position embedding, `num_layers` pre-LN blocks
of [self-attention, cross-attention to the image tokens, MLP], each as
`x + sublayer(LN(x))`, a final LayerNorm and a Dense to the vocabulary. The paper uses
the text tower's widths with half its depth (`locca_decoder_for`). The vocabulary is the
text vocabulary extended by the location tokens of the quantized box coordinates.

Two decoding modes, chosen per example by `parallel` (probability 0.5 in the paper):
- autoregressive (teacher forcing): the inputs are the targets shifted right and the
  self-attention is causal, so position t sees inputs 0..t only;
- parallel prediction: every input token is replaced by one learned mask embedding
  and the self-attention is bidirectional, so all targets are predicted at once from
  the image alone. Task prefixes (the region caption of ARef, the box of GCap) can be
  kept visible with `prefix_mask`.
Image tokens from a NaFlex tower carry padding: pass `image_key_mask`.
"""

import keras
from keras import ops

from keras_siglip2.layers import (
    SigLIP2MLP,
    SigLIP2PositionEmbedding,
    layer_norm,
    token_embedding,
)
from keras_siglip2.layers.config import ConfigAttributes
from keras_siglip2.layers.initializers import dense_kernel_init, embedding_init
from keras_siglip2.checks import check_positive_int
from keras_siglip2.layers.attention import check_attention_implementation
from keras_siglip2.layers.fences import gradient_fence
from keras_siglip2.layers.transformer import (
    LAYER_NORM_EPSILON,
    SigLIP2BlockBase,
    block_stack,
)
from keras_siglip2.models.input_checks import check_token_ids
from keras_siglip2.models.tower import NORM_AND_ATTENTION_KEYS, STACK_CONFIG_KEYS


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2LocCaDecoderBlock(SigLIP2BlockBase):
    """Pre-LN decoder block: self-attention, cross-attention to the image, MLP."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        policy, eps = self.dtype_policy, self.layer_norm_epsilon
        width = self.hidden_dim
        self.self_attention_norm = layer_norm("self_attention_norm", policy, eps)
        self.self_attention = self.attention_layer("self_attention")
        self.cross_attention_norm = layer_norm("cross_attention_norm", policy, eps)
        self.cross_attention = self.attention_layer("cross_attention", cross_attention=True)
        self.mlp_norm = layer_norm("mlp_norm", policy, eps)
        self.mlp = SigLIP2MLP(width, self.intermediate_dim, dtype=policy, name="mlp")

    def build(self, input_shape, image_shape=None):
        image_shape = image_shape or input_shape
        self.self_attention_norm.build(input_shape)
        self.self_attention.build(input_shape)
        self.cross_attention_norm.build(input_shape)
        self.cross_attention.build(input_shape, image_shape)
        self.mlp_norm.build(input_shape)
        self.mlp.build(input_shape)
        self.built = True

    def call(self, x, image_tokens, self_attention_mask=None, image_key_mask=None):
        # The fences: the residual stream's gradient written once (layers/fences.py).
        x = gradient_fence(x)
        x = gradient_fence(x + self.self_attention(
            self.self_attention_norm(x), attention_mask=self_attention_mask
        ))
        x = gradient_fence(x + self.cross_attention(
            self.cross_attention_norm(x), context=image_tokens, key_mask=image_key_mask
        ))
        return x + self.mlp(self.mlp_norm(x))

    def compute_output_shape(self, input_shape, image_shape=None):
        return input_shape


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2LocCaDecoder(ConfigAttributes, keras.layers.Layer):
    """LocCa transformer decoder cross-attending to image tokens.

    Args:
        vocabulary_size: int. Decoder vocabulary (text vocabulary + location bins).
        hidden_dim, num_layers, num_heads, intermediate_dim: decoder sizes.
        max_sequence_length: int. Longest decoder sequence (learned positions).
        image_dim: int. Width of the image tokens; when it differs from `hidden_dim`
            they go through a Dense projection first. Defaults to `hidden_dim`.
        layer_norm_epsilon: float, 1e-6.
        attention_implementation: "auto" (default), "flash" or "xla"
            (`layers/attention.py`).
        dtype: dtype policy (e.g. "mixed_bfloat16"); logits come out in its compute
            dtype (`locca_loss` computes in float32).

    Built at construction. `call(decoder_token_ids, image_tokens, parallel=None,
    image_key_mask=None, prefix_mask=None)` -> (B, L, vocabulary_size) logits.
    """

    CONFIG_KEYS = (
        "vocabulary_size", *STACK_CONFIG_KEYS, "max_sequence_length", "image_dim",
        *NORM_AND_ATTENTION_KEYS,
    )

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        max_sequence_length=64,
        image_dim=None,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        attention_implementation="auto",
        dtype=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "locca_decoder")
        super().__init__(dtype=dtype, **kwargs)
        for name, value in (
            ("vocabulary_size", vocabulary_size),
            ("hidden_dim", hidden_dim),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("intermediate_dim", intermediate_dim),
            ("max_sequence_length", max_sequence_length),
            ("image_dim", hidden_dim if image_dim is None else image_dim),
        ):
            check_positive_int(name, value)
        image_dim = hidden_dim if image_dim is None else image_dim
        check_attention_implementation(attention_implementation)
        self.store_config(locals())

        policy = self.dtype_policy
        self.token_embedding = token_embedding(vocabulary_size, hidden_dim, policy)
        self.position_embedding = SigLIP2PositionEmbedding(
            max_sequence_length, hidden_dim, dtype=policy, name="position_embedding"
        )
        self.image_projection = None
        if self.image_dim != hidden_dim:
            self.image_projection = keras.layers.Dense(
                hidden_dim,
                kernel_initializer=dense_kernel_init(),
                dtype=policy,
                name="image_projection",
            )
        self.blocks = block_stack(
            SigLIP2LocCaDecoderBlock, num_layers, hidden_dim, num_heads, intermediate_dim,
            "decoder_block", layer_norm_epsilon=layer_norm_epsilon,
            attention_implementation=attention_implementation, dtype=policy,
        )
        self.final_norm = layer_norm("final_norm", policy, layer_norm_epsilon)
        self.logits_dense = keras.layers.Dense(
            vocabulary_size,
            kernel_initializer=dense_kernel_init(),
            dtype=policy,
            name="logits",
        )
        self.build()

    def build(self, *args, **kwargs):
        if self.built:
            return
        tokens = (None, self.max_sequence_length, self.hidden_dim)
        self.token_embedding.build((None, self.max_sequence_length))
        self.position_embedding.build(tokens)
        if self.image_projection is not None:
            self.image_projection.build((None, None, self.image_dim))
        image = (None, None, self.hidden_dim)
        for block in self.blocks:
            block.build(tokens, image)
        self.final_norm.build(tokens)
        self.logits_dense.build(tokens)
        self.mask_embedding = self.add_weight(
            shape=(self.hidden_dim,),
            initializer=embedding_init(self.hidden_dim),
            name="mask_embedding",
        )
        self.built = True

    def _check_inputs(self, decoder_token_ids, image_tokens, parallel, image_key_mask, prefix_mask):
        check_token_ids(decoder_token_ids, self.vocabulary_size, self.max_sequence_length)
        ids_shape = tuple(decoder_token_ids.shape)
        image_shape = tuple(image_tokens.shape)
        if len(image_shape) != 3:
            raise ValueError(
                f"`image_tokens` must have shape (B, N, {self.image_dim}) (the image "
                f"tower's un-pooled tokens); got shape {image_shape}."
            )
        if image_shape[-1] is not None and image_shape[-1] != self.image_dim:
            raise ValueError(
                f"`image_tokens` must have width image_dim={self.image_dim}; got shape "
                f"{image_shape}. Build the decoder with `image_dim={image_shape[-1]}`."
            )
        batches = [("decoder_token_ids", ids_shape[0]), ("image_tokens", image_shape[0])]
        if parallel is not None and len(getattr(parallel, "shape", ())) > 0:
            if len(parallel.shape) != 1:
                raise ValueError(
                    f"`parallel` must be a scalar or have shape (B,); got shape "
                    f"{tuple(parallel.shape)}."
                )
            batches.append(("parallel", parallel.shape[0]))
        for name, mask, length in (
            ("image_key_mask", image_key_mask, image_shape[1]),
            ("prefix_mask", prefix_mask, ids_shape[1]),
        ):
            if mask is None:
                continue
            shape = tuple(mask.shape)
            if len(shape) != 2 or None not in (shape[1], length) and shape[1] != length:
                raise ValueError(
                    f"`{name}` must have shape (B, {length}); got shape {shape}."
                )
            batches.append((name, shape[0]))
        known = {size for _, size in batches if size is not None}
        if len(known) > 1:
            sizes = ", ".join(f"{name} {size}" for name, size in batches)
            raise ValueError(f"The decoder inputs must share one batch size; got {sizes}.")

    def call(
        self,
        decoder_token_ids,
        image_tokens,
        parallel=None,
        image_key_mask=None,
        prefix_mask=None,
        return_features=False,
    ):
        """Next-token logits (B, L, vocabulary_size), or with `return_features` the
        last hidden states (B, L, hidden_dim) that `logits_dense` maps to them (the
        training loss then never forms the logits; see
        `training.losses.locca_loss_from_features`).

        Args:
            decoder_token_ids: (B, L) int decoder inputs (targets shifted right,
                starting with BOS), L <= max_sequence_length.
            image_tokens: (B, N, image_dim) un-pooled image tokens.
            parallel: None (all autoregressive), a scalar, or (B,) bool/0-1: rows
                using parallel prediction (mask-token inputs, no causal mask).
            image_key_mask: optional (B, N), 1 = real image token, 0 = padding.
            prefix_mask: optional (B, L), 1 at input positions holding a task prefix
                that parallel rows keep visible (ignored for autoregressive rows).
        """
        self._check_inputs(decoder_token_ids, image_tokens, parallel, image_key_mask, prefix_mask)
        x = self.token_embedding(decoder_token_ids)
        length = ops.shape(x)[1]
        causal = ops.tril(ops.ones((length, length), dtype="bool"))
        self_mask = causal
        if parallel is not None:
            parallel = ops.cast(parallel, "bool")
            if len(parallel.shape) == 0:
                parallel = ops.broadcast_to(parallel, (ops.shape(x)[0],))
            hidden = parallel[:, None]  # (B, 1): every input replaced ...
            if prefix_mask is not None:  # ... except kept task prefixes
                hidden = ops.logical_and(
                    hidden, ops.logical_not(ops.cast(prefix_mask, "bool"))
                )
            mask_embedding = ops.cast(self.mask_embedding, x.dtype)
            x = ops.where(hidden[..., None], mask_embedding, x)
            self_mask = ops.logical_or(causal[None], parallel[:, None, None])
        x = self.position_embedding(x)
        if self.image_projection is not None:
            image_tokens = self.image_projection(image_tokens)
        image_tokens = ops.cast(image_tokens, x.dtype)
        for block in self.blocks:
            x = block(
                x,
                image_tokens,
                self_attention_mask=self_mask,
                image_key_mask=image_key_mask,
            )
        features = self.final_norm(x)
        return features if return_features else self.logits_dense(features)

    def compute_output_shape(self, decoder_token_ids_shape, *args, **kwargs):
        return tuple(decoder_token_ids_shape) + (self.vocabulary_size,)


def locca_decoder_for(
    text_encoder,
    image_dim=None,
    num_location_bins=1024,
    max_sequence_length=None,
    dtype=None,
    **kwargs,
):
    """The paper's LocCa decoder for a text tower (or a `SigLIP2Backbone`).

    Text tower widths (hidden, heads, MLP), half its depth (at least 1 layer), the
    text vocabulary extended by `num_location_bins` location tokens (the last ids;
    see `training/data/locca_targets.py`), and room for a task prefix plus a box:
    `max_sequence_length` defaults to the text length + 4. `image_dim` defaults to
    the backbone's image width when a backbone is given, else to the text width.
    """
    backbone = None
    if hasattr(text_encoder, "text_encoder"):
        backbone, text_encoder = text_encoder, text_encoder.text_encoder
    if image_dim is None:
        image_dim = backbone.vision_encoder.hidden_dim if backbone is not None else None
    check_positive_int("num_location_bins", num_location_bins)
    if dtype is None:
        dtype = text_encoder.dtype_policy.name
    return SigLIP2LocCaDecoder(
        vocabulary_size=text_encoder.vocabulary_size + num_location_bins,
        hidden_dim=text_encoder.hidden_dim,
        num_layers=max(1, text_encoder.num_layers // 2),
        num_heads=text_encoder.num_heads,
        intermediate_dim=text_encoder.intermediate_dim,
        max_sequence_length=max_sequence_length or text_encoder.max_sequence_length + 4,
        image_dim=image_dim,
        layer_norm_epsilon=text_encoder.layer_norm_epsilon,
        attention_implementation=kwargs.pop(
            "attention_implementation", text_encoder.attention_implementation
        ),
        dtype=dtype,
        **kwargs,
    )
