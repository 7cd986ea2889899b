"""The SigLIP sigmoid loss (paper sec. 2.1, from SigLIP, Zhai et al. 2023).

For a batch of B image/text pairs with L2-normalized embeddings zimg, ztxt (B, D):

    logits = zimg @ ztxt^T * exp(t) + b          (B, B)
    labels = 2 * I - 1                           (+1 on the diagonal, -1 elsewhere)
    loss   = -sum_ij log_sigmoid(labels_ij * logits_ij) / B

i.e. a binary classification of every image/text pair, summed over texts and averaged
over images. `per_example_sigmoid_loss` gives the per-image row sums (used by ACID
curation, paper sec. 2.5).

`chunked_sigmoid_loss` computes the same value and gradients while holding only one
(B, chunk_size) block of logits at a time, in the forward pass and in the backward pass:
it loops over chunks of texts (`keras.ops.fori_loop`, so the blocks are computed one
after the other) and defines its gradient by hand (`keras.ops.custom_gradient`),
recomputing each block instead of keeping B x B activations for the backward pass.
Peak memory is O(B * chunk_size + B * D) instead of O(B^2). This is the single-device
form of the SigLIP paper's chunked scheme; across devices the same per-chunk terms are
summed while the text embeddings are passed around.

All computation is in float32 whatever the inputs' dtype (mixed precision): the sum of
B^2 small terms and the exponential of the temperature need it.
"""

import keras
from keras import ops

from keras_siglip2.training.losses.checks import (
    check_positive_int,
    check_rank,
    check_same_dim,
    float32_scalar,
)


def _prepare(zimg, ztxt, log_temperature, bias):
    """Checks shapes; returns float32 (B, D), (B, D) embeddings and scalar t, b."""
    img_shape = check_rank("zimg", zimg, (2,), "(B, D)")
    txt_shape = check_rank("ztxt", ztxt, (2,), "(B, D)")
    check_same_dim("zimg", img_shape[1], "ztxt", txt_shape[1], "embedding width D")
    if img_shape[0] is not None and txt_shape[0] is not None and img_shape[0] != txt_shape[0]:
        raise ValueError(
            "The sigmoid loss pairs image i with text i: `zimg` and `ztxt` must have the "
            f"same batch size B; got zimg {img_shape} and ztxt {txt_shape}."
        )
    return (
        ops.cast(zimg, "float32"),
        ops.cast(ztxt, "float32"),
        float32_scalar("log_temperature", log_temperature),
        float32_scalar("bias", bias),
    )


def sigmoid_logits(zimg, ztxt, log_temperature, bias):
    """(B, B) float32 logits zimg @ ztxt^T * exp(log_temperature) + bias."""
    zimg, ztxt, log_t, b = _prepare(zimg, ztxt, log_temperature, bias)
    return ops.matmul(zimg, ops.transpose(ztxt)) * ops.exp(log_t) + b


def pairwise_sigmoid_loss(zimg, ztxt, log_temperature, bias):
    """(B, B) loss of every (image i, text j) pair: -log_sigmoid(labels_ij * logits_ij),
    labels +1 on the diagonal and -1 elsewhere. The loss of any sub-batch S is the sum
    of this matrix over S x S divided by |S| (what joint example selection scores).

    Args:
        zimg, ztxt: (B, D) L2-normalized image and text embeddings; row i of each
            is a matching pair.
        log_temperature, bias: scalars (or one-element tensors/variables), the
            backbone's learned t and b.
    """
    logits = sigmoid_logits(zimg, ztxt, log_temperature, bias)
    labels = 2.0 * ops.eye(ops.shape(logits)[0], dtype="float32") - 1.0
    return -ops.log_sigmoid(labels * logits)


def per_example_sigmoid_loss(zimg, ztxt, log_temperature, bias):
    """Per-image loss (B,): -sum_j log_sigmoid(labels_ij * logits_ij), the row sums of
    `pairwise_sigmoid_loss`."""
    return ops.sum(pairwise_sigmoid_loss(zimg, ztxt, log_temperature, bias), axis=1)


def sigmoid_loss(zimg, ztxt, log_temperature, bias):
    """Scalar float32 sigmoid loss, -sum(log_sigmoid(labels * logits)) / B.

    Materializes the (B, B) logits; see `chunked_sigmoid_loss` for large B.
    """
    return ops.mean(per_example_sigmoid_loss(zimg, ztxt, log_temperature, bias))


def chunked_sigmoid_loss(zimg, ztxt, log_temperature, bias, chunk_size):
    """The sigmoid loss computed over text chunks of `chunk_size` columns.

    Same value and gradients as `sigmoid_loss` (up to float32 summation order) with
    only (B, chunk_size) logits alive at a time, forward and backward. `chunk_size`
    need not divide B: the last chunk is shifted back to end at B and its columns
    already counted are masked out. A `chunk_size` larger than B means one chunk.
    """
    check_positive_int("chunk_size", chunk_size)
    zimg, ztxt, log_t, b = _prepare(zimg, ztxt, log_temperature, bias)
    return _chunked_loss_fn(chunk_size)(zimg, ztxt, log_t, b)


def _chunked_loss_fn(chunk_size):
    """The chunked loss of float32 (B, D), (B, D), (), () tensors with its gradient."""

    @ops.custom_gradient
    def loss_fn(zimg, ztxt, log_t, bias):
        batch, dim = ops.shape(zimg)[0], ops.shape(zimg)[1]
        if isinstance(batch, int):  # static (always under JAX)
            chunk = min(chunk_size, batch)
            num_chunks = -(-batch // chunk)
        else:  # unknown batch size in a TF graph
            chunk = ops.minimum(chunk_size, batch)
            num_chunks = (batch + chunk - 1) // chunk
        temperature = ops.exp(log_t)
        rows = ops.arange(batch, dtype="int32")[:, None]

        def block(i):
            """Chunk i: its start, text rows, labels, fresh-column mask, cos, logits."""
            nominal = i * chunk
            start = ops.minimum(nominal, batch - chunk)
            ztxt_chunk = ops.slice(ztxt, (start, 0), (chunk, dim))
            cols = start + ops.arange(chunk, dtype="int32")[None, :]
            labels = ops.where(ops.equal(rows, cols), 1.0, -1.0)
            fresh = ops.greater_equal(cols, nominal)  # not counted by an earlier chunk
            cos = ops.matmul(zimg, ops.transpose(ztxt_chunk))
            return start, ztxt_chunk, labels, fresh, cos, cos * temperature + bias

        def forward_step(i, total):
            _, _, labels, fresh, _, logits = block(i)
            terms = ops.log_sigmoid(labels * logits)
            return total + ops.sum(ops.where(fresh, terms, 0.0))

        total = ops.fori_loop(0, num_chunks, forward_step, ops.zeros((), "float32"))
        batch_f = ops.cast(batch, "float32")
        loss = -total / batch_f

        def grad(*args, upstream=None):
            if upstream is None:  # JAX and TF pass the upstream gradient positionally
                (upstream,) = args
            scale = -ops.cast(upstream, "float32") / batch_f

            def backward_step(i, carry):
                d_img, d_txt, d_log_t, d_bias = carry
                start, ztxt_chunk, labels, fresh, cos, logits = block(i)
                # d log_sigmoid(y * l) / dl = y * sigmoid(-y * l)
                g = ops.where(fresh, labels * ops.sigmoid(-labels * logits), 0.0) * scale
                d_img = d_img + temperature * ops.matmul(g, ztxt_chunk)
                d_chunk = temperature * ops.matmul(ops.transpose(g), zimg)
                d_chunk = d_chunk + ops.slice(d_txt, (start, 0), (chunk, dim))
                d_txt = ops.slice_update(d_txt, (start, 0), d_chunk)
                d_log_t = d_log_t + temperature * ops.sum(g * cos)
                return d_img, d_txt, d_log_t, d_bias + ops.sum(g)

            init = (
                ops.zeros_like(zimg),
                ops.zeros_like(ztxt),
                ops.zeros((), "float32"),
                ops.zeros((), "float32"),
            )
            return ops.fori_loop(0, num_chunks, backward_step, init)

        return loss, grad

    return loss_fn


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIPLoss:
    """The SigLIP sigmoid loss as a configurable callable.

    `loss = SigLIPLoss(chunked=True, chunk_size=1024)`;
    `loss(zimg, ztxt, log_temperature, bias)` -> scalar float32.

    Args:
        chunked: bool. Use `chunked_sigmoid_loss` (O(B * chunk_size) memory, same
            value and gradients) instead of the plain (B, B) form.
        chunk_size: int. Text chunk width when `chunked`; defaults to 256. Ignored
            when `chunked` is False.
    """

    DEFAULT_CHUNK_SIZE = 256

    def __init__(self, chunked=False, chunk_size=None):
        if not isinstance(chunked, bool):
            raise TypeError(f"`chunked` must be True or False; got {chunked!r}.")
        if chunk_size is not None:
            check_positive_int("chunk_size", chunk_size)
        self.chunked = chunked
        self.chunk_size = chunk_size

    def __call__(self, zimg, ztxt, log_temperature, bias):
        if self.chunked:
            return chunked_sigmoid_loss(
                zimg, ztxt, log_temperature, bias, self.chunk_size or self.DEFAULT_CHUNK_SIZE
            )
        return sigmoid_loss(zimg, ztxt, log_temperature, bias)

    def per_example(self, zimg, ztxt, log_temperature, bias):
        """Per-image losses (B,) (the plain form; for curation, not for gradients)."""
        return per_example_sigmoid_loss(zimg, ztxt, log_temperature, bias)

    def get_config(self):
        return {"chunked": self.chunked, "chunk_size": self.chunk_size}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"SigLIPLoss(chunked={self.chunked}, chunk_size={self.chunk_size})"
