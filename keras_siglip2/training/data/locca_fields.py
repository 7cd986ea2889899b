"""The LocCa decoder fields of a batch (paper sec. 2.2): from the tokenized captions and
the records' boxes / box captions to the decoder inputs, targets and weights that
`SigLIP2Pretrainer` reads (`locca_targets.make_locca_targets` builds the sequences)."""

import tensorflow as tf

from keras_siglip2.training.data.locca_targets import (
    DEFAULT_NUM_BINS,
    TASKS,
    make_locca_targets,
)

LOCCA_MODES = ("all", "sampled")


def _check_task_weights(task_weights, mode):
    weights = [float(w) for w in task_weights]
    if len(weights) != 3 or min(weights) < 0 or weights[0] <= 0:
        raise ValueError(
            "`task_weights` must be 3 non-negative weights (captioning, ARef, GCap) with "
            f"captioning > 0; got {task_weights!r}."
        )
    if mode not in LOCCA_MODES:
        raise ValueError(f"`tasks` must be one of {LOCCA_MODES}; got tasks={mode!r}.")
    return weights


def _regions(batch, tokenizer, draw):
    """(box (B, 4), region token ids (B, L), has_region (B,)) of one region per
    example: a box with a non-empty box caption, drawn uniformly among the example's
    regions with `draw` (B,) in [0, 1)."""
    boxes = tf.pad(batch["boxes"], [[0, 0], [0, 1], [0, 0]])  # room for "no box"
    box_texts = tf.pad(batch["box_texts"], [[0, 0], [0, 1]])
    num_boxes = tf.cast(batch["num_boxes"], tf.int32)
    valid = tf.logical_and(tf.range(tf.shape(box_texts)[1])[None, :] < num_boxes[:, None],
                           tf.strings.length(tf.strings.strip(box_texts)) > 0)
    num_valid = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
    k = tf.minimum(tf.cast(draw * tf.cast(num_valid, tf.float32), tf.int32),
                   tf.maximum(num_valid - 1, 0))
    rank = tf.cumsum(tf.cast(valid, tf.int32), axis=1) - 1
    region = tf.argmax(tf.cast(tf.logical_and(valid, rank == k[:, None]), tf.int32), axis=1,
                       output_type=tf.int32)
    has_region = num_valid > 0
    box = tf.where(has_region[:, None], tf.gather(boxes, region, batch_dims=1), 0.0)
    box_text = tf.where(has_region, tf.gather(box_texts, region, batch_dims=1), "")
    return box, tf.cast(tokenizer(box_text), tf.int32), has_region


_FIELDS = {"decoder_token_ids": "decoder_input_ids", "decoder_targets": "target_ids",
           "decoder_weights": "loss_weights", "decoder_prefix_mask": "prefix_mask"}


def _stacked(targets, field):
    """(B, 3, L) of one field over `locca_targets.TASKS`."""
    return tf.stack([targets[t][_FIELDS[field]] for t in TASKS], axis=1)


def locca_batch_fields(batch, tokenizer, seed, num_bins=None, sequence_length=None,
                       task_weights=(1.0, 1.0, 1.0), tasks="all"):
    """The LocCa fields `SigLIP2Pretrainer` reads (paper sec. 2.2), for one batch of
    captions with boxes, as `tf` ops (in a `tf.data` map or eagerly).

    LocCa trains captioning, ARef and GCap on every image (Wan et al. 2024; the paper:
    "captioning, referring expression prediction and grounded captioning"). ARef and
    GCap need a region: a box with a non-empty box caption; one region per example is
    drawn uniformly among its regions.

    `tasks="all"` (default): the three sequences of every example, stacked on a task
    axis (B, 3, L) in the order `locca_targets.TASKS` = (captioning, aref, gcap); an
    example without a region has `decoder_weights` 0 on its aref and gcap rows
    (captioning stays on), and a task whose `task_weights` entry is 0 has weight 0 on
    every row (turned off). The pretrainer weights the per-task losses
    (`locca_task_weights`); here the weights only switch tasks on and off.
    `tasks="sampled"` (the behaviour before issue 17): one task per example, drawn
    with `task_weights` among those the example allows, (B, L) fields plus
    "locca_task" (B,).

    Args:
        batch: dict of batched tensors: "token_ids" (B, L) int (the tokenized
            captions), "boxes" (B, M, 4) float (ymin, xmin, ymax, xmax) in [0, 1],
            "box_texts" (B, M) string (a caption per box, "" for none) and
            "num_boxes" (B,) int (valid boxes per example).
        tokenizer: the `SigLIP2Tokenizer` that made "token_ids" (tokenizes the box
            captions; its vocabulary size offsets the location tokens).
        seed: a stateless seed, shape (2,) int (e.g. `tf.stack([seed, batch_index])`):
            the box (and, sampled, task) draws are a function of it.
        num_bins: location bins per coordinate (default
            `locca_targets.DEFAULT_NUM_BINS`); the decoder vocabulary is the
            tokenizer's plus `num_bins`.
        sequence_length: decoder length (default: `make_locca_targets`').
        task_weights: 3 non-negative weights (captioning > 0).
        tasks: "all" or "sampled" (see above).

    Returns:
        dict: "decoder_token_ids", "decoder_targets", "decoder_weights",
        "decoder_prefix_mask" ((B, 3, L) with "all", (B, L) with "sampled"; see
        `locca_targets.make_locca_targets`) and "locca_regions" (B,) int32 (1 where
        the example has a region, i.e. ARef / GCap are trained on it); "sampled"
        adds "locca_task" (B,) int32 (0 = captioning, 1 = ARef, 2 = GCap).
    """
    weights = _check_task_weights(task_weights, tasks)
    num_bins = DEFAULT_NUM_BINS if num_bins is None else num_bins
    caption_ids = batch["token_ids"]
    draws = tf.random.stateless_uniform([tf.shape(caption_ids)[0], 2], seed=seed)
    box, region_ids, has_region = _regions(batch, tokenizer, draws[:, 0])
    targets = make_locca_targets(
        caption_ids, region_ids, box, tokenizer.vocabulary_size() + num_bins,
        num_bins=num_bins, sequence_length=sequence_length,
    )
    out = {"locca_regions": tf.cast(has_region, tf.int32)}
    if tasks == "all":
        on = tf.constant([[float(w > 0) for w in weights]])  # (1, 3)
        gate = tf.where(has_region[:, None], on, on * tf.constant([[1.0, 0.0, 0.0]]))
        for field in _FIELDS:
            out[field] = _stacked(targets, field)
        weights_dtype = out["decoder_weights"].dtype
        out["decoder_weights"] = out["decoder_weights"] * tf.cast(gate, weights_dtype)[:, :, None]
        return out
    # Sampled: captioning (0), ARef (1) or GCap (2); without a region only captioning.
    allowed = tf.where(has_region[:, None], tf.constant([weights]),
                       tf.constant([[weights[0], 0.0, 0.0]]))
    cumulative = tf.cumsum(allowed / tf.reduce_sum(allowed, axis=1, keepdims=True), axis=1)
    task = tf.minimum(tf.reduce_sum(tf.cast(draws[:, 1:2] >= cumulative, tf.int32), axis=1), 2)
    for field in _FIELDS:
        out[field] = tf.gather(_stacked(targets, field), task, batch_dims=1)
    out["locca_task"] = task
    return out
