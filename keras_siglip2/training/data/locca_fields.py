"""The LocCa decoder fields of a batch (paper sec. 2.2): from the tokenized captions and
the records' boxes / box captions to the decoder inputs, targets and weights that
`SigLIP2Pretrainer` reads (`locca_targets.make_locca_targets` builds the sequences)."""

import tensorflow as tf

from keras_siglip2.training.data.locca_targets import DEFAULT_NUM_BINS, make_locca_targets



def locca_batch_fields(batch, tokenizer, seed, num_bins=None, sequence_length=None,
                       task_weights=(1.0, 1.0, 1.0)):
    """The LocCa fields `SigLIP2Pretrainer` reads (paper sec. 2.2), for one batch of
    captions with boxes, as `tf` ops (in a `tf.data` map or eagerly).

    One task per example is drawn, with `task_weights` for captioning / ARef / GCap,
    among those the example allows: ARef and GCap need a box with a box caption, and
    one such box is drawn uniformly; an example without one gets captioning.

    Args:
        batch: dict of batched tensors: "token_ids" (B, L) int (the tokenized
            captions), "boxes" (B, M, 4) float (ymin, xmin, ymax, xmax) in [0, 1],
            "box_texts" (B, M) string (a caption per box, "" for none) and
            "num_boxes" (B,) int (valid boxes per example).
        tokenizer: the `SigLIP2Tokenizer` that made "token_ids" (tokenizes the box
            captions; its vocabulary size offsets the location tokens).
        seed: a stateless seed, shape (2,) int (e.g. `tf.stack([seed, batch_index])`):
            the task and box draws are a function of it.
        num_bins: location bins per coordinate (default
            `locca_targets.DEFAULT_NUM_BINS`); the decoder vocabulary is the
            tokenizer's plus `num_bins`.
        sequence_length: decoder length (default: `make_locca_targets`').
        task_weights: 3 non-negative weights (captioning > 0).

    Returns:
        dict: "decoder_token_ids", "decoder_targets", "decoder_weights",
        "decoder_prefix_mask" (B, sequence_length) (see
        `locca_targets.make_locca_targets`) and "locca_task" (B,) int32 (0 =
        captioning, 1 = ARef, 2 = GCap).
    """
    num_bins = DEFAULT_NUM_BINS if num_bins is None else num_bins
    weights = [float(w) for w in task_weights]
    if len(weights) != 3 or min(weights) < 0 or weights[0] <= 0:
        raise ValueError(
            "`task_weights` must be 3 non-negative weights (captioning, ARef, GCap) with "
            f"captioning > 0; got {task_weights!r}."
        )
    caption_ids = batch["token_ids"]
    boxes = tf.pad(batch["boxes"], [[0, 0], [0, 1], [0, 0]])  # room for "no box"
    box_texts = tf.pad(batch["box_texts"], [[0, 0], [0, 1]])
    num_boxes = tf.cast(batch["num_boxes"], tf.int32)
    draws = tf.random.stateless_uniform([tf.shape(caption_ids)[0], 2], seed=seed)
    region = tf.minimum(tf.cast(draws[:, 0] * tf.cast(num_boxes, tf.float32), tf.int32),
                        tf.maximum(num_boxes - 1, 0))
    box = tf.gather(boxes, region, batch_dims=1)
    box_text = tf.gather(box_texts, region, batch_dims=1)
    has_region = tf.logical_and(num_boxes > 0, tf.strings.length(tf.strings.strip(box_text)) > 0)
    box = tf.where(has_region[:, None], box, 0.0)
    region_ids = tf.cast(tokenizer(box_text), tf.int32)
    targets = make_locca_targets(
        caption_ids, region_ids, box, tokenizer.vocabulary_size() + num_bins,
        num_bins=num_bins, sequence_length=sequence_length,
    )
    # Task: captioning (0), ARef (1) or GCap (2); without a region only captioning.
    allowed = tf.where(has_region[:, None], tf.constant([weights]),
                       tf.constant([[weights[0], 0.0, 0.0]]))
    cumulative = tf.cumsum(allowed / tf.reduce_sum(allowed, axis=1, keepdims=True), axis=1)
    task = tf.minimum(tf.reduce_sum(tf.cast(draws[:, 1:2] >= cumulative, tf.int32), axis=1), 2)
    names = {"decoder_token_ids": "decoder_input_ids", "decoder_targets": "target_ids",
             "decoder_weights": "loss_weights", "decoder_prefix_mask": "prefix_mask"}
    out = {}
    for field, key in names.items():
        stacked = tf.stack([targets[t][key] for t in ("captioning", "aref", "gcap")], axis=1)
        out[field] = tf.gather(stacked, task, batch_dims=1)
    out["locca_task"] = task
    return out
