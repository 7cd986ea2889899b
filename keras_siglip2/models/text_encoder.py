"""SigLIP 2 text tower (paper sec. 2; big_vision `text_transformer.py`): token embedding
(no sqrt(d) scaling) + learned position embedding, bidirectional pre-LN transformer with
no padding mask, final LayerNorm, last-position pooling and the `head` projection."""

import keras
from keras import initializers, ops

from keras_siglip2.layers import SigLIP2PositionEmbedding, token_embedding
from keras_siglip2.layers.config import ConfigAttributes
from keras_siglip2.layers.transformer import LAYER_NORM_EPSILON
from keras_siglip2.models.input_checks import check_token_ids
from keras_siglip2.models.tower import (
    NORM_AND_ATTENTION_KEYS,
    STACK_CONFIG_KEYS,
    SigLIP2Tower,
)


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2TextEncoder(ConfigAttributes, SigLIP2Tower):
    """Text transformer pooled at the last position, then projected.

    The pooled position is `x[:, -1]`, usually a `<pad>` token for short texts: that
    is how SigLIP 2 was trained and is kept as is. No padding mask is applied.

    Args:
        vocabulary_size: int (256,000 for the Gemma tokenizer).
        hidden_dim, num_layers, num_heads, intermediate_dim: tower sizes.
        projection_dim: int. Output width of `head`; defaults to `hidden_dim`. For
            g-opt it is the image width (1536) while the tower is So400m (1152).
        max_sequence_length: int, 64.
        layer_norm_epsilon: float, 1e-6.
        attention_implementation: "auto" (default), "flash" or "xla"
            (`layers/attention.py`).

    Input `{"token_ids": (B, L) int32}`, L <= max_sequence_length; output
    (B, projection_dim).
    """

    CONFIG_KEYS = (
        "vocabulary_size", *STACK_CONFIG_KEYS, "projection_dim", "max_sequence_length",
        *NORM_AND_ATTENTION_KEYS,
    )

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        projection_dim=None,
        max_sequence_length=64,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        attention_implementation="auto",
        dtype=None,
        name="text_encoder",
        **kwargs,
    ):
        projection_dim = projection_dim or hidden_dim
        self.token_embedding = token_embedding(vocabulary_size, hidden_dim, dtype)
        self.position_embedding = SigLIP2PositionEmbedding(
            max_sequence_length, hidden_dim, dtype=dtype, name="position_embedding"
        )
        self._build_encoder(
            hidden_dim, num_layers, num_heads, intermediate_dim, layer_norm_epsilon, dtype,
            attention_implementation=attention_implementation,
        )
        self.head = keras.layers.Dense(
            projection_dim,
            kernel_initializer=initializers.Zeros(),
            dtype=dtype,
            name="head",
        )

        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        with keras.name_scope(name):  # variable paths start with the tower's name
            pooled = self.head(self._tokens(token_ids)[:, -1, :])
        super().__init__(
            inputs={"token_ids": token_ids}, outputs=pooled, dtype=dtype, name=name, **kwargs
        )
        self.store_config(locals())

    def _tokens(self, token_ids):
        return self._run_encoder(self.position_embedding(self.token_embedding(token_ids)))

    def check_inputs(self, inputs):
        """{"token_ids": ...} (or the ids) validated; raises ValueError if bad."""
        token_ids = inputs["token_ids"] if isinstance(inputs, dict) else inputs
        check_token_ids(token_ids, self.vocabulary_size, self.max_sequence_length)
        return {"token_ids": token_ids}

    def __call__(self, inputs, *args, **kwargs):
        return super().__call__(self.check_inputs(inputs), *args, **kwargs)

    def get_tokens(self, inputs):
        """Token features after the final LayerNorm: (B, L, hidden_dim)."""
        return self._tokens(self.check_inputs(inputs)["token_ids"])

    def get_float32_embeddings(self, inputs):
        """The output embeddings (B, projection_dim) with the `head` projection
        computed in float32 from the tokens in the compute dtype: what the training
        losses use. Equal to the model's output in float32; under mixed_float16 it
        keeps the gradient finite at initialization, where `head` is zero, every
        embedding is 0 and the normalization's gradient (1 / 1e-8) overflows
        float16 (the backward pass through a float32 head is bounded by 1 / ||tokens||
        instead)."""
        pooled = ops.cast(self.get_tokens(inputs)[:, -1, :], "float32")
        kernel = ops.cast(self.head.kernel, "float32")
        return ops.matmul(pooled, kernel) + ops.cast(self.head.bias, "float32")
