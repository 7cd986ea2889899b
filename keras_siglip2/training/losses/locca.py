"""LocCa decoder loss (paper sec. 2.2; Wan et al. 2024, LocCa): token-level softmax
cross-entropy of the decoder's next-token logits against the target ids, counted only
where the loss weight is 1 (targets, not task prefixes or padding), averaged over the
counted tokens. Float32 whatever the logits' dtype."""

from keras import ops

from keras_siglip2.models.input_checks import concrete_value, dtype_name
from keras_siglip2.training.losses.checks import check_rank, check_same_dim


def token_cross_entropy(logits, targets):
    """(B, L) float32 -log softmax(logits)[target] (logsumexp minus the target logit;
    never forms a (B, L, V) one-hot)."""
    logits = ops.cast(logits, "float32")
    targets = ops.cast(targets, "int32")
    target_logits = ops.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return ops.logsumexp(logits, axis=-1) - target_logits


def locca_loss(logits, targets, weights):
    """sum(cross_entropy * weights) / max(sum(weights), 1), a float32 scalar.

    Args:
        logits: (B, L, V) decoder logits.
        targets: (B, L) int target ids in [0, V).
        weights: (B, L) float loss weights, 1 on target tokens and 0 on prefix and
            padding positions (`training/data/locca_targets.py` makes them).
    """
    logits_shape = check_rank("logits", logits, (3,), "(B, L, V)")
    targets_shape = check_rank("targets", targets, (2,), "(B, L)")
    weights_shape = check_rank("weights", weights, (2,), "(B, L)")
    for axis, what in ((0, "batch size B"), (1, "sequence length L")):
        check_same_dim("targets", targets_shape[axis], "logits", logits_shape[axis], what)
        check_same_dim("weights", weights_shape[axis], "logits", logits_shape[axis], what)
    dtype = dtype_name(targets)
    if "int" not in dtype:
        raise TypeError(f"`targets` must be integer token ids; got dtype {dtype}.")
    value = concrete_value(targets)
    vocabulary = logits_shape[-1]
    if value is not None and value.size and vocabulary is not None:
        lo, hi = int(value.min()), int(value.max())
        if lo < 0 or hi >= vocabulary:
            raise ValueError(
                f"`targets` contains id {hi if hi >= vocabulary else lo}, outside the "
                f"decoder vocabulary [0, {vocabulary})."
            )
    weights = ops.cast(weights, "float32")
    ce = token_cross_entropy(logits, targets)
    total = ops.sum(ops.where(ops.greater(weights, 0.0), ce * weights, 0.0))
    return total / ops.maximum(ops.sum(weights), 1.0)
