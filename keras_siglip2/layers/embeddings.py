"""Input embeddings of the SigLIP 2 towers (paper sec. 2): the patch stem (one linear map
of flattened (py, px, c) patches, equal to big_vision's VALID conv for fixed resolution
and to the NaFlex Dense stem), the learned 1-D position embedding, and the text token
embedding (no sqrt(d) scaling)."""

import keras
from keras import ops

from keras_siglip2.layers.config import ConfigAttributes
from keras_siglip2.layers.initializers import embedding_init


def patchify(images, patch_size):
    """(B, H, W, C) -> (B, H//p * W//p, p*p*C) in row-major patch order, each patch
    flattened in (py, px, c) order. Trailing rows/columns that do not fill a patch are
    dropped, as a VALID convolution would."""
    shape = ops.shape(images)
    p = patch_size
    gh, gw, c = shape[1] // p, shape[2] // p, shape[3]
    images = images[:, : gh * p, : gw * p, :]
    x = ops.reshape(images, (shape[0], gh, p, gw, p, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (shape[0], gh * gw, p * p * c))


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2PatchEmbedding(ConfigAttributes, keras.layers.Layer):
    """Linear patch stem: (B, H, W, C) images (patchified here) or (B, N, p*p*C)
    flattened patches -> (B, N, d).

    The kernel is stored as (p*p*C, d); `conv_kernel` views it as the (p, p, C, d)
    convolution kernel of the fixed-resolution checkpoints.
    """

    CONFIG_KEYS = ("hidden_dim", "patch_size", "num_channels")

    def __init__(self, hidden_dim, patch_size, num_channels=3, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.dense = keras.layers.Dense(
            hidden_dim,
            kernel_initializer=keras.initializers.LecunNormal(),
            dtype=self.dtype_policy,
            name="dense",
        )

    def build(self, input_shape):
        patch_dim = self.patch_size * self.patch_size * self.num_channels
        self.dense.build((None, None, patch_dim))
        self.built = True

    def call(self, x):
        if len(x.shape) == 4:
            x = patchify(x, self.patch_size)
        return self.dense(x)

    @property
    def conv_kernel_shape(self):
        p = self.patch_size
        return (p, p, self.num_channels, self.hidden_dim)

    def compute_output_shape(self, input_shape):
        if len(input_shape) == 4:
            p = self.patch_size
            return (input_shape[0], (input_shape[1] // p) * (input_shape[2] // p), self.hidden_dim)
        return tuple(input_shape[:-1]) + (self.hidden_dim,)


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2PositionEmbedding(ConfigAttributes, keras.layers.Layer):
    """Learned additive position embedding of shape (1, sequence_length, d).

    Inputs shorter than `sequence_length` use its first positions.
    """

    CONFIG_KEYS = ("sequence_length", "hidden_dim")

    def __init__(self, sequence_length, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        self.hidden_dim = hidden_dim

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(1, self.sequence_length, self.hidden_dim),
            initializer=embedding_init(self.hidden_dim),
            name="embeddings",
        )
        self.built = True

    def call(self, x):
        length = ops.shape(x)[1]
        return x + ops.cast(self.embeddings[:, :length], x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def token_embedding(vocabulary_size, hidden_dim, dtype, name="token_embedding"):
    """Token embedding of the text tower, normal(0, 1/sqrt(d)) init as big_vision."""
    return keras.layers.Embedding(
        vocabulary_size,
        hidden_dim,
        embeddings_initializer=embedding_init(hidden_dim),
        dtype=dtype,
        name=name,
    )


__all__ = [
    "SigLIP2PatchEmbedding",
    "SigLIP2PositionEmbedding",
    "patchify",
    "token_embedding",
]
