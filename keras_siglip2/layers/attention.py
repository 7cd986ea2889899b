"""Multi-head dot-product attention for the SigLIP 2 towers (paper sec. 2, ViT / text
transformer blocks, MAP head and LocCa decoder cross-attention), through
`keras.ops.dot_product_attention` and, where the device has one, its fused kernel.

Self-attention uses one fused query/key/value projection (one matmul instead of three);
cross-attention projects the query from its own input and key/value jointly from the
context.

Which implementation runs is `attention_implementation` (every layer and tower takes it
and keeps it in `get_config`):
- "xla": the exact XLA / backend attention (`flash_attention=False`), everywhere.
- "flash": the fused kernel (`flash_attention=True`): cuDNN flash attention on GPU and
  the Pallas splash kernel on TPU under JAX, torch's flash SDPA under torch. Keras raises
  if the device or the shapes have none (CPU, TensorFlow).
- "auto" (default): the kernel where it is known to compute the same thing, else "xla".
  Under JAX that is a GPU with half-precision inputs whose shapes keras' cuDNN check
  accepts (`keras.src.backend.jax.nn._can_use_flash_attention`: Ampere or later, head
  dim a multiple of 8 and <= 128/256). Not on TPU: keras' splash path (3.15, and master
  of Aug 2026) runs a *causal* mask when it is given no mask and `is_causal=False`,
  keeps only batch element 0 of a per-example mask, and needs concrete masks, so "auto"
  keeps TPUs on XLA ("flash" passes it a concrete all-True mask, which it handles). On
  other backends "auto" leaves the choice to the backend (`flash_attention=None`).

Masks in kernel form. cuDNN takes a boolean mask only as an additive bias of the full
(B, 1, T, S) shape (a (B, 1, 1, S) key-padding mask is refused and keras falls back to
XLA), and under training a bias needs even T and S; splash takes no per-example mask at
all. So the key-padding mask (NaFlex, the MAP head over NaFlex tokens, LocCa
cross-attention) is folded into the attention inputs instead (`fold_key_mask`): one
more feature (the head dim padded to a multiple of 8), 1 for every query, 0 for a real
key and -30000 for a padding key. Real keys' logits are unchanged exactly (they gain
q * 0), padding keys' logits drop by >= 1875 after the 1/sqrt(head_dim) scale, so their
softmax weight is exactly 0 in float32 (and bfloat16 / float16). The kernel then runs
unmasked. A general per-query mask (the LocCa decoder's causal / parallel mask) is given
to cuDNN as a full (B, 1, T, S) mask, and only when T and S are even.

One exception on the XLA path: JAX's XLA attention does not compile for float16 inputs
on CPU (jax 0.10: "The precision 'F16_F16_F32' is not supported by dot_general on CPU",
under `jit` only), so there a float16 attention (mixed_float16) runs in float32 and is
rounded back to float16; CPUs have no float16 speed to lose.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_siglip2.layers.config import ConfigAttributes
from keras_siglip2.layers.initializers import dense_kernel_init

ATTENTION_IMPLEMENTATIONS = ("auto", "flash", "xla")
# Feature value of a padding key in `fold_key_mask`: within float16 range, and large
# enough that scale * 30000 >= 1875 for head dims <= 256.
PADDING_KEY_FEATURE = -30000.0


def check_attention_implementation(value):
    """`value` if it is one of ATTENTION_IMPLEMENTATIONS, else a ValueError naming it."""
    if value not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"`attention_implementation` must be one of {list(ATTENTION_IMPLEMENTATIONS)}; "
            f"got {value!r}."
        )
    return value


def _jax_platform():
    if keras.backend.backend() != "jax":
        return None
    import jax  # lazy: only on the JAX backend

    return jax.default_backend()


def _float16_on_jax_cpu(x):
    return _jax_platform() == "cpu" and keras.backend.standardize_dtype(x.dtype) == "float16"


def combined_mask(key_mask=None, attention_mask=None):
    """The boolean (B, 1, T|1, S) mask for `key_mask` (B, S) AND `attention_mask`
    ((B, T, S) or (T, S)), or None when neither is given."""
    mask = None
    if key_mask is not None:
        mask = ops.cast(key_mask, "bool")[:, None, None, :]
    if attention_mask is not None:
        allowed = ops.cast(attention_mask, "bool")
        allowed = allowed[:, None] if len(allowed.shape) == 3 else allowed[None, None]
        mask = allowed if mask is None else ops.logical_and(mask, allowed)
    return mask


def fold_key_mask(q, k, v, key_mask):
    """(q, k, v) with the key-padding mask folded in as extra features (see the module
    docstring): the head dim grows to the next multiple of 8 (by at least one); the
    extra query feature is 1, the extra key feature 0 for real keys (`key_mask` 1) and
    PADDING_KEY_FEATURE for padding keys, the extra value features 0. Attention over the
    result, with the original scale 1/sqrt(head_dim), sliced back to head_dim, equals
    the masked attention."""
    head_dim = q.shape[-1]
    extra = 8 - head_dim % 8

    def pad(x, first):
        zeros = ops.zeros_like(x[..., :1])
        parts = [x, ops.cast(first, x.dtype) + zeros] + [zeros] * (extra - 1)
        return ops.concatenate(parts, axis=-1)

    padding = ops.logical_not(ops.cast(key_mask, "bool"))[:, :, None, None]
    key_feature = ops.where(padding, PADDING_KEY_FEATURE, 0.0)
    return pad(q, 1.0), pad(k, key_feature), pad(v, 0.0)


def _kernel_arguments(q, k, v, key_mask, attention_mask):
    """Inputs for the fused kernel: (q, k, v, mask, scale, head_dim)."""
    head_dim = q.shape[-1]
    if key_mask is not None:
        q, k, v = fold_key_mask(q, k, v, key_mask)
    mask = None
    if attention_mask is not None:
        mask = combined_mask(attention_mask=attention_mask)
        shape = (ops.shape(q)[0], 1, ops.shape(q)[1], ops.shape(k)[1])
        mask = ops.broadcast_to(mask, shape)  # cuDNN wants the full (B, 1, T, S) bias
    elif _jax_platform() == "tpu":
        # keras' splash path runs a causal mask when given none; an all-True concrete
        # mask makes it run the full bidirectional one.
        mask = np.ones((q.shape[0], 1, q.shape[1], k.shape[1]), bool)
    return q, k, v, mask, 1.0 / math.sqrt(head_dim), head_dim


def kernel_attention(q, k, v, key_mask=None, attention_mask=None, flash_attention=True):
    """Attention with the masks in kernel form (`fold_key_mask`; a full (B, 1, T, S)
    mask for `attention_mask`), through `ops.dot_product_attention(...,
    flash_attention=flash_attention)`. `flash_attention=False` runs the same inputs on
    the XLA path (how the tests check the kernel form on CPU)."""
    q, k, v, mask, scale, head_dim = _kernel_arguments(q, k, v, key_mask, attention_mask)
    out = ops.dot_product_attention(
        q, k, v, mask=mask, scale=scale, flash_attention=flash_attention
    )
    return out[..., :head_dim]


def _jax_kernel_accepts(q, k, attention_mask):
    """Whether "auto" uses the kernel under JAX: a GPU, half precision, shapes keras'
    cuDNN check accepts, and even T and S when a general mask becomes a bias."""
    if _jax_platform() != "gpu":
        return False
    if keras.backend.standardize_dtype(q.dtype) not in ("float16", "bfloat16"):
        return False
    if attention_mask is not None and not (
        q.shape[1] % 2 == 0 and k.shape[1] % 2 == 0
    ):
        return False
    from keras.src.backend.jax.nn import _can_use_flash_attention  # lazy: JAX only

    # The kernel sees the folded inputs: the head dim padded to the next multiple of 8.
    # Zeros of those shapes (batch 1) stand in for them; under jit they are never built.
    _, t, heads, head_dim = q.shape
    width = head_dim + 8 - head_dim % 8
    query = ops.zeros((1, t, heads, width), q.dtype)
    key = ops.zeros((1, k.shape[1], heads, width), q.dtype)
    try:
        return bool(_can_use_flash_attention(query, key, key, None))
    except Exception:  # a private keras helper: any failure means "no kernel"
        return False


def attend(q, k, v, key_mask=None, attention_mask=None, implementation="auto"):
    """Scaled dot-product attention of q (B, T, N, H) over k, v (B, S, N, H) with the
    optional `key_mask` (B, S) and `attention_mask` ((B, T, S) or (T, S)), True where
    attending is allowed; -> (B, T, N, H). `implementation`: "auto", "flash" or "xla"
    (module docstring)."""
    if implementation == "flash" or (
        implementation == "auto" and _jax_kernel_accepts(q, k, attention_mask)
    ):
        return kernel_attention(q, k, v, key_mask, attention_mask, flash_attention=True)
    mask = combined_mask(key_mask, attention_mask)
    # "auto" off JAX: the backend picks (torch flash SDPA when it can).
    flash = None if implementation == "auto" and _jax_platform() is None else False
    if _float16_on_jax_cpu(q):
        q, k, v = (ops.cast(t, "float32") for t in (q, k, v))
        out = ops.dot_product_attention(q, k, v, mask=mask, flash_attention=False)
        return ops.cast(out, "float16")
    return ops.dot_product_attention(q, k, v, mask=mask, flash_attention=flash)


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2Attention(ConfigAttributes, keras.layers.Layer):
    """Multi-head attention with biases on q/k/v/out and scale 1/sqrt(head_dim).

    Args:
        hidden_dim: int. Model width (= num_heads * head_dim).
        num_heads: int. Number of heads; must divide `hidden_dim`.
        cross_attention: bool. If True, `call(x, context)` attends from `x` to
            `context` (queries from `x`, keys/values from `context`).
        attention_implementation: "auto" (default), "flash" or "xla": which
            attention runs (module docstring).
    """

    CONFIG_KEYS = ("hidden_dim", "num_heads", "cross_attention", "attention_implementation")

    def __init__(
        self, hidden_dim, num_heads, cross_attention=False, attention_implementation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(
                f"`num_heads`={num_heads} must divide `hidden_dim`={hidden_dim}."
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.cross_attention = cross_attention
        self.attention_implementation = check_attention_implementation(
            attention_implementation
        )
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
        """(B, T, parts * d) projections -> `parts` tensors (B, T, num_heads, head_dim).

        `ops.split` (not slicing): its gradient is one concatenate, where the
        gradient of each slice would be a zero-padded full-width copy, summed."""
        shape = ops.shape(x)
        heads = (shape[0], shape[1], self.num_heads, self.head_dim)
        parts = ops.split(x, parts, axis=-1) if parts > 1 else [x]
        return [ops.reshape(part, heads) for part in parts]

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
            (q,) = self._split_heads(self.query_dense(x), 1)
            k, v = self._split_heads(self.key_value_dense(context), 2)
        else:
            q, k, v = self._split_heads(self.qkv_dense(x), 3)
        out = attend(q, k, v, key_mask, attention_mask, self.attention_implementation)
        shape = ops.shape(out)
        out = ops.reshape(out, (shape[0], shape[1], self.hidden_dim))
        return self.output_dense(out)

    def compute_output_shape(self, input_shape, context_shape=None):
        return tuple(input_shape[:-1]) + (self.hidden_dim,)
