"""Multi-head dot-product attention for the SigLIP 2 towers (paper sec. 2, ViT / text
transformer blocks, MAP head and LocCa decoder cross-attention).

Self-attention uses one fused query/key/value projection (one matmul instead of three);
cross-attention projects the query from its own input and key/value jointly from the
context. The attention itself goes through `keras.ops.dot_product_attention`, so each
backend may pick its fused kernel (cuDNN / flash on GPU, splash on TPU). One exception:
JAX's XLA attention does not compile for float16 inputs on CPU (jax 0.10: "The precision
'F16_F16_F32' is not supported by dot_general on CPU", under `jit` only), so there a
float16 attention (the mixed_float16 policy) runs in float32 and is rounded back to
float16; CPUs have no float16 speed to lose. Every other case is unchanged.
"""

import keras
from keras import ops

from keras_siglip2.layers.config import ConfigAttributes
from keras_siglip2.layers.initializers import dense_kernel_init


def _float16_on_jax_cpu(x):
    if keras.backend.backend() != "jax" or keras.backend.standardize_dtype(x.dtype) != "float16":
        return False
    import jax

    return jax.default_backend() == "cpu"


def attend(q, k, v, mask=None):
    """`ops.dot_product_attention(q, k, v, mask=mask)`, in float32 for float16 inputs
    on JAX's CPU backend (see the module docstring)."""
    if _float16_on_jax_cpu(q):
        q, k, v = (ops.cast(t, "float32") for t in (q, k, v))
        return ops.cast(ops.dot_product_attention(q, k, v, mask=mask), "float16")
    return ops.dot_product_attention(q, k, v, mask=mask)


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2Attention(ConfigAttributes, keras.layers.Layer):
    """Multi-head attention with biases on q/k/v/out and scale 1/sqrt(head_dim).

    Args:
        hidden_dim: int. Model width (= num_heads * head_dim).
        num_heads: int. Number of heads; must divide `hidden_dim`.
        cross_attention: bool. If True, `call(x, context)` attends from `x` to
            `context` (queries from `x`, keys/values from `context`).
    """

    CONFIG_KEYS = ("hidden_dim", "num_heads", "cross_attention")

    def __init__(self, hidden_dim, num_heads, cross_attention=False, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(
                f"`num_heads`={num_heads} must divide `hidden_dim`={hidden_dim}."
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.cross_attention = cross_attention
        dense = lambda units, name: keras.layers.Dense(  # noqa: E731
            units,
            kernel_initializer=dense_kernel_init(),
            dtype=self.dtype_policy,
            name=name,
        )
        if cross_attention:
            self.query_dense = dense(hidden_dim, "query")
            self.key_value_dense = dense(2 * hidden_dim, "key_value")
        else:
            self.qkv_dense = dense(3 * hidden_dim, "qkv")
        self.output_dense = dense(hidden_dim, "out")

    def build(self, input_shape, context_shape=None):
        if self.cross_attention:
            self.query_dense.build(input_shape)
            self.key_value_dense.build(context_shape or input_shape)
        else:
            self.qkv_dense.build(input_shape)
        self.output_dense.build(tuple(input_shape[:-1]) + (self.hidden_dim,))
        self.built = True

    def _split_heads(self, x, parts):
        shape = ops.shape(x)
        return ops.reshape(
            x, (shape[0], shape[1], parts, self.num_heads, self.head_dim)
        )

    def call(self, x, context=None, key_mask=None, attention_mask=None):
        """Attends from `x` (B, T, d) to `context` (B, S, d), or to `x` itself.

        `key_mask`: optional (B, S) bool/int, True = a real token that may be
        attended to; padding keys get no weight.
        `attention_mask`: optional (B, T, S) or (T, S) bool/int, True where query t
        may attend to key s (e.g. a causal mask); combined with `key_mask` by AND.
        Every query must keep at least one key.
        """
        if self.cross_attention:
            context = x if context is None else context
            q = self._split_heads(self.query_dense(x), 1)[:, :, 0]
            kv = self._split_heads(self.key_value_dense(context), 2)
            k, v = kv[:, :, 0], kv[:, :, 1]
        else:
            qkv = self._split_heads(self.qkv_dense(x), 3)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        mask = None
        if key_mask is not None:
            mask = ops.cast(key_mask, "bool")[:, None, None, :]
        if attention_mask is not None:
            allowed = ops.cast(attention_mask, "bool")
            allowed = allowed[:, None] if len(allowed.shape) == 3 else allowed[None, None]
            mask = allowed if mask is None else ops.logical_and(mask, allowed)
        out = attend(q, k, v, mask=mask)
        shape = ops.shape(out)
        out = ops.reshape(out, (shape[0], shape[1], self.hidden_dim))
        return self.output_dense(out)

    def compute_output_shape(self, input_shape, context_shape=None):
        return tuple(input_shape[:-1]) + (self.hidden_dim,)
