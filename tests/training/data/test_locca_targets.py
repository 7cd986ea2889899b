"""LocCa targets (paper sec. 2.2): box quantization into the last ids of the decoder
vocabulary, the three task sequences (captioning, ARef, GCap) with prefixes excluded
from the loss, batched / single / tf.data use, and clear errors for bad boxes."""

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip2.training.data.locca_targets import (
    box_token_ids,
    boxes_from_token_ids,
    dequantize_boxes,
    make_locca_targets,
    quantize_boxes,
)

TEXT_VOCAB, BINS = 40, 10
VOCAB = TEXT_VOCAB + BINS
BOS, EOS = 2, 1


def _np(x):
    return {t: {k: v.numpy() for k, v in f.items()} for t, f in x.items()}


def test_quantize_boxes_and_token_ids():
    boxes = np.array([[0.0, 0.05, 0.5, 1.0], [0.099, 0.1, 0.999, 0.95]], "float32")
    expected = np.array([[0, 0, 5, 9], [0, 1, 9, 9]])
    np.testing.assert_array_equal(quantize_boxes(boxes, 10).numpy(), expected)
    np.testing.assert_array_equal(box_token_ids(boxes, 10, VOCAB).numpy(), expected + TEXT_VOCAB)
    assert box_token_ids(boxes, 10, VOCAB).numpy().min() >= TEXT_VOCAB  # the last ids
    centres = dequantize_boxes(expected, 10).numpy()
    np.testing.assert_allclose(centres, (expected + 0.5) / 10)
    # Round trip error is at most half a bin.
    rng = np.random.RandomState(0)
    corners = np.sort(rng.uniform(size=(50, 2, 2)), axis=1)
    random_boxes = np.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], -1)
    back = boxes_from_token_ids(box_token_ids(random_boxes, 1024, 2048), 1024, 2048).numpy()
    assert np.abs(back - random_boxes).max() <= 0.5 / 1024 + 1e-6
    # Text-token predictions are clipped into the location range.
    np.testing.assert_allclose(boxes_from_token_ids([[3, 45, 49, 60]], 10, VOCAB).numpy(), [[0.05, 0.55, 0.95, 0.95]])


def _example():
    # caption: 5 tokens + EOS; region caption: 2 tokens + EOS; padded with 0
    captions = np.array([[11, 12, 13, 14, 15, EOS, 0, 0], [21, EOS, 0, 0, 0, 0, 0, 0]], "int32")
    regions = np.array([[31, 32, EOS, 0, 0], [33, 34, 35, 36, EOS]], "int32")
    boxes = np.array([[0.1, 0.2, 0.55, 0.9], [0.0, 0.0, 1.0, 1.0]], "float32")
    return captions, regions, boxes


def test_three_tasks_sequences_and_weights():
    captions, regions, boxes = _example()
    out = _np(make_locca_targets(captions, regions, boxes, VOCAB, num_bins=BINS))
    length = max(8, 5 + 4)
    loc = TEXT_VOCAB + np.array([[1, 2, 5, 9], [0, 0, 9, 9]])
    expected = {
        "captioning": ([[], []], [[11, 12, 13, 14, 15, EOS], [21, EOS]]),
        "aref": ([[31, 32, EOS], [33, 34, 35, 36, EOS]], loc.tolist()),
        "gcap": (loc.tolist(), [[31, 32, EOS], [33, 34, 35, 36, EOS]]),
    }
    for task, (prefixes, targets) in expected.items():
        fields = out[task]
        for name in ("decoder_input_ids", "target_ids", "loss_weights", "prefix_mask"):
            assert fields[name].shape == (2, length), (task, name)
        for row in range(2):
            prefix, target = list(prefixes[row]), list(targets[row])
            sequence = prefix + target
            padded = sequence + [0] * (length - len(sequence))
            np.testing.assert_array_equal(fields["target_ids"][row], padded, err_msg=task)
            np.testing.assert_array_equal(fields["decoder_input_ids"][row], [BOS] + padded[:-1], err_msg=task)
            weights = [0.0] * len(prefix) + [1.0] * len(target) + [0.0] * (length - len(sequence))
            np.testing.assert_array_equal(fields["loss_weights"][row], weights, err_msg=task)
            prefix_mask = [0] + [1] * len(prefix) + [0] * (length - 1 - len(prefix))
            np.testing.assert_array_equal(fields["prefix_mask"][row], prefix_mask, err_msg=task)
        assert fields["decoder_input_ids"].dtype == np.int32 and fields["loss_weights"].dtype == np.float32


def test_single_examples_and_tf_data():
    captions, regions, boxes = _example()
    batched = _np(make_locca_targets(captions, regions, boxes, VOCAB, num_bins=BINS, sequence_length=12))
    single = _np(make_locca_targets(captions[1], regions[1], boxes[1], VOCAB, num_bins=BINS, sequence_length=12))
    for task in batched:
        for name, value in single[task].items():
            np.testing.assert_array_equal(value, batched[task][name][1])
    dataset = tf.data.Dataset.from_tensor_slices((captions, regions, boxes)).map(
        lambda c, r, b: make_locca_targets(c, r, b, VOCAB, num_bins=BINS, sequence_length=12)
    ).batch(2)
    from_data = next(iter(dataset))
    for task in batched:
        for name, value in from_data[task].items():
            np.testing.assert_array_equal(value.numpy(), batched[task][name])


def test_bad_input_errors():
    captions, regions, boxes = _example()
    for bad, match in (
        ([[0.1, 0.2, 1.2, 0.9], [0, 0, 1, 1]], r"\[0, 1\].*1.2"),
        ([[-0.1, 0.2, 0.5, 0.9], [0, 0, 1, 1]], r"\[0, 1\]"),
        ([[0.6, 0.2, 0.5, 0.9], [0, 0, 1, 1]], "ymin <= ymax.*0.6"),
        ([[0.1, 0.9, 0.5, 0.2], [0, 0, 1, 1]], "xmin <= xmax"),
        ([[np.nan, 0.2, 0.5, 0.9], [0, 0, 1, 1]], r"\[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=match):
            make_locca_targets(captions, regions, np.array(bad, "float32"), VOCAB, num_bins=BINS)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        quantize_boxes(np.zeros((2, 3), "float32"), 10)
    with pytest.raises(ValueError, match="floats"):
        quantize_boxes(np.zeros((2, 4), "int32"), 10)
    with pytest.raises(ValueError, match="num_bins"):
        quantize_boxes(boxes, 0)
    with pytest.raises(ValueError, match="vocabulary_size"):
        box_token_ids(boxes, 10, 10)
    with pytest.raises(ValueError, match="sequence_length.*>= 9"):
        make_locca_targets(captions, regions, boxes, VOCAB, num_bins=BINS, sequence_length=8)
    with pytest.raises(ValueError, match="outside the text vocabulary"):
        make_locca_targets(captions + TEXT_VOCAB, regions, boxes, VOCAB, num_bins=BINS)
    with pytest.raises(ValueError, match="same batch size"):
        make_locca_targets(captions, regions[:1], boxes, VOCAB, num_bins=BINS)
    with pytest.raises(ValueError, match="all be batched"):
        make_locca_targets(captions, regions[0], boxes, VOCAB, num_bins=BINS)
    # Inside a traced tf.data function bad boxes fail when the batch is read.
    dataset = tf.data.Dataset.from_tensor_slices((captions, regions, np.array([[0.6, 0.2, 0.5, 0.9]] * 2, "float32")))
    dataset = dataset.map(lambda c, r, b: make_locca_targets(c, r, b, VOCAB, num_bins=BINS))
    with pytest.raises(tf.errors.InvalidArgumentError, match="ymin <= ymax"):
        next(iter(dataset))
