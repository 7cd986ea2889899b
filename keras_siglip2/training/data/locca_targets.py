"""LocCa decoder targets (paper sec. 2.2; Wan et al. 2024, LocCa): box quantization into
location tokens and the three tasks per example.

- captioning: predict the caption;
- ARef (automatic referring expression): given a region caption, predict its box;
- GCap (grounded captioning): given a box, predict its region caption.

Location tokens. A box (ymin, xmin, ymax, xmax), each in [0, 1], becomes 4 bins
floor(v * num_bins) (1.0 goes to the last bin), and bin k becomes decoder token id
`vocabulary_size - num_bins + k`: the decoder's vocabulary is the text vocabulary
extended by `num_bins` location tokens at its end (decoder vocab = text vocab +
num_bins, as `models.locca_decoder_for` builds it), so location tokens never collide
with text tokens. 1024 bins by default (PaliGemma's number of location tokens; the
paper does not fix it), i.e. about one bin per pixel up to 1024 px.

Sequences. Each task's token sequence is `prefix + target` (ARef: region caption
including its EOS, then the 4 box tokens; GCap: the 4 box tokens, then the region caption
up to its EOS; captioning: no prefix, the caption up to its EOS), right-padded with
`pad_id` to L. For teacher forcing the decoder inputs are the sequence shifted right
behind a BOS token; the loss weights are 1 on target tokens and 0 on the prefix and
padding, so prefixes condition the prediction without being predicted.

Implementation: TensorFlow ops only (no Python loops over examples), so every function
runs eagerly on numpy / tf inputs and inside `tf.data` `map` (batched (B, ...) or single
examples). Bad boxes raise ValueError eagerly; inside a traced `tf.data` function they
fail with `tf.errors.InvalidArgumentError` carrying the same message when the batch is
read.
"""

import numpy as np
import tensorflow as tf

from keras_siglip2.checks import check_positive_int

DEFAULT_NUM_BINS = 1024
BOS_ID = 2  # Gemma <bos>; the SigLIP 2 text tower never sees it, the decoder starts with it
PAD_ID = 0  # Gemma <pad>
TASKS = ("captioning", "aref", "gcap")


def _check_bins(num_bins, vocabulary_size=None):
    check_positive_int("num_bins", num_bins)
    if vocabulary_size is not None and (
        isinstance(vocabulary_size, bool)
        or not isinstance(vocabulary_size, (int, np.integer))
        or vocabulary_size <= num_bins
    ):
        raise ValueError(
            f"`vocabulary_size` must be an integer > num_bins={num_bins} (the decoder "
            f"vocabulary: text vocabulary + num_bins location tokens); got {vocabulary_size!r}."
        )


def _check_boxes(boxes):
    """float32 boxes (..., 4) in [0, 1] with ymin <= ymax and xmin <= xmax."""
    boxes = tf.convert_to_tensor(boxes)
    if not boxes.dtype.is_floating:
        raise ValueError(f"`boxes` must be floats in [0, 1]; got dtype {boxes.dtype.name}.")
    boxes = tf.cast(boxes, tf.float32)
    if boxes.shape.rank is None or boxes.shape.rank < 1 or boxes.shape[-1] != 4:
        raise ValueError(
            f"`boxes` must have shape (..., 4) as (ymin, xmin, ymax, xmax); got shape "
            f"{tuple(boxes.shape)}."
        )
    range_message = "`boxes` must lie in [0, 1] (normalized (ymin, xmin, ymax, xmax))"
    order_message = "`boxes` must have ymin <= ymax and xmin <= xmax"
    if tf.executing_eagerly():
        value = boxes.numpy()
        inside = (value >= 0.0) & (value <= 1.0)
        if not inside.all():
            bad = value[~inside.all(axis=-1)][0] if value.ndim > 1 else value
            raise ValueError(f"{range_message}; got box {bad.tolist()}.")
        ordered = (value[..., 0] <= value[..., 2]) & (value[..., 1] <= value[..., 3])
        if not ordered.all():
            bad = value[~ordered][0] if value.ndim > 1 else value
            raise ValueError(f"{order_message}; got box {bad.tolist()}.")
        return boxes
    checks = [
        tf.debugging.assert_greater_equal(boxes, 0.0, message=range_message),
        tf.debugging.assert_less_equal(boxes, 1.0, message=range_message),
        tf.debugging.assert_less_equal(boxes[..., 0], boxes[..., 2], message=order_message),
        tf.debugging.assert_less_equal(boxes[..., 1], boxes[..., 3], message=order_message),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(boxes)


def quantize_boxes(boxes, num_bins=DEFAULT_NUM_BINS):
    """(..., 4) boxes in [0, 1] -> int32 bins floor(v * num_bins) in [0, num_bins)."""
    _check_bins(num_bins)
    boxes = _check_boxes(boxes)
    bins = tf.cast(tf.floor(boxes * float(num_bins)), tf.int32)
    return tf.minimum(bins, num_bins - 1)


def dequantize_boxes(bins, num_bins=DEFAULT_NUM_BINS):
    """int bins (..., 4) -> float32 box coordinates at the bin centres, (k + 0.5) / n."""
    _check_bins(num_bins)
    return (tf.cast(bins, tf.float32) + 0.5) / float(num_bins)


def box_token_ids(boxes, num_bins=DEFAULT_NUM_BINS, vocabulary_size=None):
    """(..., 4) boxes -> int32 location token ids, the last `num_bins` ids of the
    decoder vocabulary: vocabulary_size - num_bins + bin."""
    if vocabulary_size is None:
        raise ValueError("`vocabulary_size` (the decoder vocabulary size) is required.")
    _check_bins(num_bins, vocabulary_size)
    return quantize_boxes(boxes, num_bins) + (vocabulary_size - num_bins)


def boxes_from_token_ids(token_ids, num_bins=DEFAULT_NUM_BINS, vocabulary_size=None):
    """Inverse of `box_token_ids` up to quantization: (..., 4) location token ids ->
    float32 boxes at the bin centres. Ids outside the location range are clipped to it
    (a decoder may predict a text token where a coordinate was expected)."""
    if vocabulary_size is None:
        raise ValueError("`vocabulary_size` (the decoder vocabulary size) is required.")
    _check_bins(num_bins, vocabulary_size)
    bins = tf.clip_by_value(tf.cast(token_ids, tf.int32) - (vocabulary_size - num_bins), 0, num_bins - 1)
    return dequantize_boxes(bins, num_bins)


def _token_lengths(ids, pad_id):
    """Number of non-pad tokens per row of right-padded (B, L) ids."""
    return tf.reduce_sum(tf.cast(tf.not_equal(ids, pad_id), tf.int32), axis=1)


def _join(prefix, prefix_len, target, target_len, length, pad_id):
    """Per row: prefix[:prefix_len] + target[:target_len], right-padded to `length`.
    Returns the (B, length) ids and the bool mask of target positions."""
    positions = tf.range(length)[None, :]
    prefix_len, target_len = prefix_len[:, None], target_len[:, None]
    from_prefix = tf.gather(
        prefix, tf.clip_by_value(tf.broadcast_to(positions, [tf.shape(prefix)[0], length]), 0, tf.shape(prefix)[1] - 1),
        batch_dims=1,
    )
    target_index = tf.clip_by_value(positions - prefix_len, 0, tf.shape(target)[1] - 1)
    from_target = tf.gather(target, target_index, batch_dims=1)
    is_prefix = positions < prefix_len
    is_target = tf.logical_and(positions >= prefix_len, positions < prefix_len + target_len)
    ids = tf.where(is_prefix, from_prefix, tf.where(is_target, from_target, pad_id))
    return ids, is_target


def _task(prefix, prefix_len, target, target_len, length, bos_id, pad_id):
    ids, is_target = _join(prefix, prefix_len, target, target_len, length, pad_id)
    batch = tf.shape(ids)[0]
    inputs = tf.concat([tf.fill([batch, 1], tf.constant(bos_id, tf.int32)), ids[:, :-1]], axis=1)
    positions = tf.range(length)[None, :]
    # Input position q holds sequence token q - 1: prefix tokens sit at 1..prefix_len.
    prefix_inputs = tf.logical_and(positions >= 1, positions <= prefix_len[:, None])
    return {
        "decoder_input_ids": inputs,
        "target_ids": ids,
        "loss_weights": tf.cast(is_target, tf.float32),
        "prefix_mask": tf.cast(prefix_inputs, tf.int32),
    }


def _check_ids(name, ids, text_vocabulary_size):
    ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_integer:
        raise ValueError(f"`{name}` must be integer token ids; got dtype {ids.dtype.name}.")
    if ids.shape.rank not in (1, 2) or ids.shape[-1] is None:
        raise ValueError(
            f"`{name}` must have shape (B, L) or (L,) with a known length L; got shape "
            f"{tuple(ids.shape)}."
        )
    ids = tf.cast(ids, tf.int32)
    if tf.executing_eagerly():
        value = ids.numpy()
        if value.size and (value.min() < 0 or value.max() >= text_vocabulary_size):
            bad = value.min() if value.min() < 0 else value.max()
            raise ValueError(
                f"`{name}` contains id {bad}, outside the text vocabulary "
                f"[0, {text_vocabulary_size}) (ids from there on are location tokens)."
            )
    return ids


def make_locca_targets(
    caption_ids,
    box_caption_ids,
    boxes,
    vocabulary_size,
    num_bins=DEFAULT_NUM_BINS,
    sequence_length=None,
    bos_id=BOS_ID,
    pad_id=PAD_ID,
):
    """Decoder inputs, targets and loss weights of the three LocCa tasks.

    Args:
        caption_ids: (B, Lc) int image caption ids, right-padded with `pad_id`, EOS
            included (as `SigLIP2Tokenizer` makes them).
        box_caption_ids: (B, Lr) int ids of one region's caption, same format.
        boxes: (B, 4) float (ymin, xmin, ymax, xmax) in [0, 1] of that region.
        vocabulary_size: int. Decoder vocabulary size (text vocabulary + num_bins).
        num_bins: int. Location bins per coordinate (the last ids of the vocabulary).
        sequence_length: int L of the outputs; defaults to max(Lc, Lr + 4), the
            shortest that never cuts a target. Smaller values are refused.
        bos_id, pad_id: first decoder input and padding ids (Gemma: 2 and 0).

    Single examples ((Lc,), (Lr,), (4,)) are accepted too (inside `tf.data` before
    batching); the outputs then have no batch axis.

    Returns:
        {"captioning" | "aref" | "gcap": {"decoder_input_ids": (B, L) int32,
        "target_ids": (B, L) int32, "loss_weights": (B, L) float32 (1 on target
        tokens), "prefix_mask": (B, L) int32 (1 at the input positions holding the
        task prefix, for the decoder's parallel mode)}}.
    """
    _check_bins(num_bins, vocabulary_size)
    text_vocabulary = vocabulary_size - num_bins
    captions = _check_ids("caption_ids", caption_ids, text_vocabulary)
    regions = _check_ids("box_caption_ids", box_caption_ids, text_vocabulary)
    locations = box_token_ids(boxes, num_bins, vocabulary_size)
    single = captions.shape.rank == 1
    if regions.shape.rank != captions.shape.rank or locations.shape.rank != captions.shape.rank:
        raise ValueError(
            "`caption_ids`, `box_caption_ids` and `boxes` must all be batched ((B, L), "
            f"(B, L), (B, 4)) or all single examples; got shapes {tuple(captions.shape)}, "
            f"{tuple(regions.shape)}, {tuple(locations.shape)}."
        )
    if single:
        captions, regions, locations = captions[None], regions[None], locations[None]
    batch_sizes = {s for s in (captions.shape[0], regions.shape[0], locations.shape[0]) if s is not None}
    if len(batch_sizes) > 1:
        raise ValueError(
            "`caption_ids`, `box_caption_ids` and `boxes` must have the same batch size; got "
            f"shapes {tuple(captions.shape)}, {tuple(regions.shape)}, {tuple(locations.shape)}."
        )
    caption_len, region_len = captions.shape[1], regions.shape[1]
    needed = max(caption_len, region_len + 4)
    if sequence_length is None:
        sequence_length = needed
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < needed:
        raise ValueError(
            f"`sequence_length` must be an integer >= {needed} (max(caption length "
            f"{caption_len}, region caption length {region_len} + 4 box tokens)); got "
            f"{sequence_length!r}."
        )
    batch = tf.shape(captions)[0]
    no_tokens = tf.zeros([batch], tf.int32)
    four = tf.fill([batch], 4)
    n_caption = _token_lengths(captions, pad_id)
    n_region = _token_lengths(regions, pad_id)
    args = (sequence_length, bos_id, pad_id)
    out = {
        "captioning": _task(captions, no_tokens, captions, n_caption, *args),
        "aref": _task(regions, n_region, locations, four, *args),
        "gcap": _task(locations, four, regions, n_region, *args),
    }
    if single:
        out = {task: {k: v[0] for k, v in fields.items()} for task, fields in out.items()}
    return out
