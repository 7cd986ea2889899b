"""LocCa decoder loss (paper sec. 2.2; Wan et al. 2024, LocCa): token-level softmax
cross-entropy of the decoder's next-token logits against the target ids, counted only
where the loss weight is 1 (targets, not task prefixes or padding), averaged over the
counted tokens. Float32 whatever the logits' dtype.

`locca_loss` takes the (B, L, V) logits. `locca_loss_from_features` takes the decoder's
last hidden states (B, L, D) and its output projection instead and, on the JAX backend,
never forms the logits: with Gemma's 256k vocabulary (+ 1024 location bins) they are
the largest buffer of a training step (B x L x V float32: 256 MB per 1k tokens, twice
with their gradient). It walks the vocabulary in chunks with a running log-sum-exp and
has its own gradient (`jax.custom_vjp`) that recomputes each chunk's logits from the
saved log-sum-exp, so the forward and backward passes hold one (B*L, chunk) block at a
time: four matmuls per block instead of the plain form's three, over blocks that split
the vocabulary evenly. A vocabulary within one chunk takes the plain form (one block
holds all the logits anyway). Value and gradients equal the plain form to float32
rounding. Other backends compute the plain form (same value, no memory saving).
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from keras_siglip2.models.input_checks import concrete_value, dtype_name
from keras_siglip2.checks import check_positive_int
from keras_siglip2.training.losses.checks import check_rank, check_same_dim, static_shape


def token_cross_entropy(logits, targets):
    """(B, L) float32 -log softmax(logits)[target] (logsumexp minus the target logit;
    never forms a (B, L, V) one-hot)."""
    logits = ops.cast(logits, "float32")
    targets = ops.cast(targets, "int32")
    target_logits = ops.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return ops.logsumexp(logits, axis=-1) - target_logits


def _check_targets(targets, vocabulary):
    dtype = dtype_name(targets)
    if "int" not in dtype:
        raise TypeError(f"`targets` must be integer token ids; got dtype {dtype}.")
    value = concrete_value(targets)
    if value is not None and value.size and vocabulary is not None:
        lo, hi = int(value.min()), int(value.max())
        if lo < 0 or hi >= vocabulary:
            raise ValueError(
                f"`targets` contains id {hi if hi >= vocabulary else lo}, outside the "
                f"decoder vocabulary [0, {vocabulary})."
            )


def _weighted_mean(ce, weights):
    weights = ops.cast(weights, "float32")
    total = ops.sum(ops.where(ops.greater(weights, 0.0), ce * weights, 0.0))
    return total / ops.maximum(ops.sum(weights), 1.0)


def _check_batch_fields(name, shape, targets, weights):
    targets_shape = check_rank("targets", targets, (2,), "(B, L)")
    weights_shape = check_rank("weights", weights, (2,), "(B, L)")
    for axis, what in ((0, "batch size B"), (1, "sequence length L")):
        check_same_dim("targets", targets_shape[axis], name, shape[axis], what)
        check_same_dim("weights", weights_shape[axis], name, shape[axis], what)


def locca_loss(logits, targets, weights):
    """sum(cross_entropy * weights) / max(sum(weights), 1), a float32 scalar.

    Args:
        logits: (B, L, V) decoder logits.
        targets: (B, L) int target ids in [0, V).
        weights: (B, L) float loss weights, 1 on target tokens and 0 on prefix and
            padding positions (`training/data/locca_targets.py` makes them).
    """
    logits_shape = check_rank("logits", logits, (3,), "(B, L, V)")
    _check_batch_fields("logits", logits_shape, targets, weights)
    _check_targets(targets, logits_shape[-1])
    return _weighted_mean(token_cross_entropy(logits, targets), weights)


DEFAULT_VOCABULARY_CHUNK = 16384


def locca_loss_from_features(features, kernel, bias, targets, weights,
                             vocabulary_chunk=DEFAULT_VOCABULARY_CHUNK):
    """`locca_loss(features @ kernel + bias, targets, weights)` without the logits on
    the JAX backend (see the module docstring).

    Args:
        features: (B, L, D) the decoder's last hidden states (after its final norm).
        kernel: (D, V) output projection; bias: (V,) or None.
        targets, weights: as for `locca_loss`.
        vocabulary_chunk: vocabulary columns per block (>= 1; the whole vocabulary when
            larger). Memory: (B*L) x chunk float32 per block instead of (B*L) x V.
    """
    ce = token_cross_entropy_from_features(features, kernel, bias, targets,
                                           vocabulary_chunk=vocabulary_chunk)
    _check_batch_fields("features", static_shape(features), targets, weights)
    return _weighted_mean(ce, weights)


def weighted_token_mean(ce, weights):
    """sum(ce * weights) / max(sum(weights), 1): the LocCa reduction of per-token
    losses (B, L) (padding and prefix tokens carry weight 0)."""
    return _weighted_mean(ce, weights)


def token_cross_entropy_from_features(features, kernel, bias, targets,
                                      vocabulary_chunk=DEFAULT_VOCABULARY_CHUNK):
    """(B, L) float32 cross-entropy of `features @ kernel + bias` against `targets`,
    without the (B, L, V) logits on the JAX backend (arguments as for
    `locca_loss_from_features`)."""
    shape = check_rank("features", features, (3,), "(B, L, D)")
    kernel_shape = check_rank("kernel", kernel, (2,), "(D, V)")
    check_same_dim("kernel", kernel_shape[0], "features", shape[-1], "width D")
    if bias is not None:
        check_same_dim("bias", static_shape(bias)[-1], "kernel", kernel_shape[-1],
                       "vocabulary size V")
    check_positive_int("vocabulary_chunk", vocabulary_chunk)
    targets_shape = check_rank("targets", targets, (2,), "(B, L)")
    for axis, what in ((0, "batch size B"), (1, "sequence length L")):
        check_same_dim("targets", targets_shape[axis], "features", shape[axis], what)
    _check_targets(targets, kernel_shape[-1])
    batch, length = ops.shape(features)[0], ops.shape(features)[1]
    flat = ops.reshape(features, (-1, shape[-1]))
    flat_targets = ops.reshape(ops.cast(targets, "int32"), (-1,))
    kernel = ops.convert_to_tensor(kernel)
    bias = ops.zeros((kernel_shape[-1],), "float32") if bias is None else (
        ops.convert_to_tensor(bias))
    if keras.backend.backend() == "jax" and kernel_shape[-1] > vocabulary_chunk:
        ce = _chunked_cross_entropy_jax()(flat, kernel, bias, flat_targets,
                                          int(vocabulary_chunk))
    else:
        logits = ops.matmul(flat, ops.cast(kernel, flat.dtype)) + ops.cast(bias, flat.dtype)
        ce = token_cross_entropy(logits, flat_targets)
    return ops.reshape(ce, (batch, length))


def _chunked_cross_entropy_jax():
    """The JAX function ce(h (N, D), w (D, V), b (V,), targets (N,), chunk) -> (N,)
    float32, built once (it imports JAX)."""
    global _CHUNKED_CE
    if _CHUNKED_CE is None:
        _CHUNKED_CE = _build_chunked_cross_entropy_jax()
    return _CHUNKED_CE


_CHUNKED_CE = None


def _build_chunked_cross_entropy_jax():
    import jax  # lazy: the JAX backend only
    import jax.numpy as jnp  # lazy: the JAX backend only

    def blocks(vocabulary, chunk):
        """(n, c): n = ceil(V / chunk) blocks of c = ceil(V / n) <= chunk columns (the
        vocabulary split evenly: 33,024 -> 3 x 11,008, not 3 x 16,384); block i starts
        at min(i * c, V - c), so when n does not divide V the last one overlaps its
        neighbour by fewer than n columns, masked below i * c (none counted twice)."""
        count = math.ceil(vocabulary / min(chunk, vocabulary))
        return count, math.ceil(vocabulary / count)

    def block_logits(h, w, b, i, chunk):
        vocabulary = w.shape[1]
        start = jnp.minimum(i * chunk, vocabulary - chunk)
        w_i = jax.lax.dynamic_slice_in_dim(w, start, chunk, axis=1).astype(h.dtype)
        b_i = jax.lax.dynamic_slice_in_dim(b, start, chunk).astype(jnp.float32)
        logits = jnp.dot(h, w_i, preferred_element_type=jnp.float32) + b_i
        columns = start + jnp.arange(chunk)
        fresh = columns >= i * chunk
        return jnp.where(fresh[None], logits, -jnp.inf), columns, fresh, start

    def forward(h, w, b, targets, chunk):
        count, chunk = blocks(w.shape[1], chunk)

        def step(carry, i):
            running_max, running_sum, target_logit = carry
            logits, columns, fresh, _ = block_logits(h, w, b, i, chunk)
            new_max = jnp.maximum(running_max, jnp.max(logits, axis=1))
            running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
                jnp.exp(logits - new_max[:, None]), axis=1)
            hit = (columns[None] == targets[:, None]) & fresh[None]
            target_logit = target_logit + jnp.sum(jnp.where(hit, logits, 0.0), axis=1)
            return (new_max, running_sum, target_logit), None

        n = h.shape[0]
        init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32),
                jnp.zeros((n,), jnp.float32))
        (running_max, running_sum, target_logit), _ = jax.lax.scan(
            step, init, jnp.arange(count))
        lse = running_max + jnp.log(running_sum)
        return lse - target_logit, lse

    @functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
    def cross_entropy(h, w, b, targets, chunk):
        return forward(h, w, b, targets, chunk)[0]

    def cross_entropy_fwd(h, w, b, targets, chunk):
        ce, lse = forward(h, w, b, targets, chunk)
        return ce, (h, w, b, targets, lse)

    def cross_entropy_bwd(chunk, residuals, g):
        h, w, b, targets, lse = residuals
        count, chunk = blocks(w.shape[1], chunk)
        g = g.astype(jnp.float32)

        def step(carry, i):
            dh, dw, db = carry
            logits, columns, fresh, start = block_logits(h, w, b, i, chunk)
            probs = jnp.exp(logits - lse[:, None])  # 0 where masked (-inf)
            onehot = (columns[None] == targets[:, None]) & fresh[None]
            dlogits = (probs - onehot.astype(jnp.float32)) * g[:, None]
            w_i = jax.lax.dynamic_slice_in_dim(w, start, chunk, axis=1)
            dh = dh + jnp.dot(dlogits.astype(h.dtype), w_i.astype(h.dtype).T,
                              preferred_element_type=jnp.float32)
            dw_i = jnp.dot(h.T, dlogits.astype(h.dtype), preferred_element_type=jnp.float32)
            old = jax.lax.dynamic_slice_in_dim(dw, start, chunk, axis=1)
            dw = jax.lax.dynamic_update_slice_in_dim(dw, old + dw_i, start, axis=1)
            old_b = jax.lax.dynamic_slice_in_dim(db, start, chunk)
            db = jax.lax.dynamic_update_slice_in_dim(db, old_b + dlogits.sum(0), start, 0)
            return (dh, dw, db), None

        init = (jnp.zeros(h.shape, jnp.float32), jnp.zeros(w.shape, jnp.float32),
                jnp.zeros(b.shape, jnp.float32))
        (dh, dw, db), _ = jax.lax.scan(step, init, jnp.arange(count))
        no_gradient = np.zeros(targets.shape, jax.dtypes.float0)  # integer targets
        return dh.astype(h.dtype), dw.astype(w.dtype), db.astype(b.dtype), no_gradient

    cross_entropy.defvjp(cross_entropy_fwd, cross_entropy_bwd)
    return cross_entropy
