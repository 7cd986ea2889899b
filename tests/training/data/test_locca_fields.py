"""Tests of the LocCa batch fields (training/data/locca_fields.py) and their data side
in the pipeline (issue 17 item 1): the three tasks of every example on a task axis
(B, 3, L) in the order locca_targets.TASKS, regions from "boxes" / "box_texts" in every
format (CSV: JSON in the cells), the rows of examples without a region switched off,
the LocCa tasks a dataset trains named on `dataset.info`, and bad boxes named and
counted. References are hand-derived (location tokens, token ids of the captions)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip2.training.data import sources
from keras_siglip2.training.data.locca_fields import locca_batch_fields
from keras_siglip2.training.data.locca_targets import TASKS
from keras_siglip2.training.data.pipeline import image_text_dataset
from tests.training.data.test_sources import SIZE, make_examples

HOST = {"num_hosts": 1, "host_index": 0}
NUM_BINS = 8


# csv and tfrecord in the default run, jsonl and webdataset with -m large (all four
# readers' round trips stay in the default run: test_sources.py).
FORMATS = ["csv", pytest.param("jsonl", marks=pytest.mark.large), "tfrecord",
           pytest.param("webdataset", marks=pytest.mark.large)]


@pytest.fixture(scope="module")
def tokenizer():
    from keras_siglip2.preprocessing import SigLIP2Tokenizer
    from tests.preprocessing.conftest import train_sentencepiece

    words = ["a red circle and a blue square", "a green cross", "a photo", "a dog",
             "caption number region"] * 8
    return SigLIP2Tokenizer(proto=train_sentencepiece(words, vocab_size=300),
                            sequence_length=8)


def _weighted(batch, example, task):
    row = batch["decoder_targets"][example, TASKS.index(task)]
    return row[batch["decoder_weights"][example, TASKS.index(task)] > 0]


def _ids(tokenizer, text):
    ids = np.asarray(tokenizer([text]))[0]
    return ids[: list(ids).index(1) + 1]  # up to and with EOS (id 1)


def test_three_tasks_on_every_example(tokenizer):
    captions = ["a red circle and a blue square", "a green cross", "a photo", "a dog"]
    boxes = np.zeros((4, 2, 4), "float32")
    boxes[0, 0] = [0.1, 0.2, 0.5, 0.6]
    boxes[1, 1] = [0.0, 0.5, 1.0, 0.75]
    boxes[2, 0] = [0.2, 0.2, 0.3, 0.3]
    box_texts = np.array([["a red circle", ""], ["", "a green cross"], ["", ""], ["", ""]])
    num_boxes = np.array([1, 2, 1, 0], "int32")  # 2: a box without caption; 3: none
    batch = {"token_ids": tf.cast(tokenizer(captions), tf.int32), "boxes": boxes,
             "box_texts": box_texts, "num_boxes": num_boxes}
    out = {k: v.numpy() for k, v in locca_batch_fields(
        batch, tokenizer, tf.constant([1, 2], tf.int64), num_bins=NUM_BINS).items()}
    for key in ("decoder_token_ids", "decoder_targets", "decoder_weights",
                "decoder_prefix_mask"):
        assert out[key].shape == (4, 3, 12), key  # max(8, 8 + 4 box tokens)
    assert "locca_task" not in out
    np.testing.assert_array_equal(out["locca_regions"], [1, 1, 0, 0])
    vocabulary = tokenizer.vocabulary_size() + NUM_BINS
    # Location tokens by hand: vocabulary - num_bins + floor(v * num_bins), 1.0 -> last.
    box_tokens = {0: [vocabulary - 8 + b for b in (0, 1, 4, 4)],
                  1: [vocabulary - 8 + b for b in (0, 4, 7, 6)]}
    region_text = {0: "a red circle", 1: "a green cross"}
    for i in range(4):
        np.testing.assert_array_equal(_weighted(out, i, "captioning"),
                                      _ids(tokenizer, captions[i]))
        if i in box_tokens:
            np.testing.assert_array_equal(_weighted(out, i, "aref"), box_tokens[i])
            np.testing.assert_array_equal(_weighted(out, i, "gcap"),
                                          _ids(tokenizer, region_text[i]))
            # GCap conditions on the box: its unweighted prefix is the 4 box tokens.
            np.testing.assert_array_equal(out["decoder_targets"][i, 2, :4], box_tokens[i])
        else:  # no region: ARef / GCap rows off, captioning on
            assert out["decoder_weights"][i, 1:].sum() == 0
    # A task with weight 0 is off on every row.
    off = locca_batch_fields(batch, tokenizer, tf.constant([1, 2], tf.int64),
                             num_bins=NUM_BINS, task_weights=(1.0, 0.0, 2.0))
    weights = off["decoder_weights"].numpy()
    assert weights[:, 1].sum() == 0 and weights[:2, 2].sum() > 0
    with pytest.raises(ValueError, match="`tasks` must be one of"):
        locca_batch_fields(batch, tokenizer, tf.constant([1, 2], tf.int64), tasks="one")


@pytest.mark.parametrize("format", FORMATS)
def test_pipeline_trains_three_tasks_from_record_boxes(tmp_path, tokenizer, format):
    examples = make_examples(6, seed=4)  # examples 1, 2, 4, 5 have boxes
    for e in examples:
        e["caption"] = "a photo"
        e["box_texts"] = ["a dog"] * len(e["box_texts"])
    if format in ("csv", "jsonl"):
        path = sources.write_csv(tmp_path / f"rows.{format}", examples)
    elif format == "tfrecord":
        path = sources.write_tfrecord_shards(tmp_path / "s", examples, 1)
    else:
        path = sources.write_webdataset_shards(tmp_path / "s", examples, 1)
    ds = image_text_dataset(path, batch_size=6, image_size=SIZE, tokenizer=tokenizer,
                            locca=True, locca_options={"num_bins": NUM_BINS}, num_epochs=1,
                            shuffle=False, extra_fields=("boxes",), **HOST)
    assert ds.info.locca_tasks() == ("captioning",)  # nothing delivered yet
    (batch,) = list(ds.as_numpy_iterator())
    assert batch["decoder_weights"].shape == (6, 3, 12)
    has_box = batch["num_boxes"] > 0
    assert has_box.tolist() == [False, True, True, False, True, True]
    per_task = batch["decoder_weights"].sum(axis=2)  # (B, 3)
    assert (per_task[:, 0] > 0).all()
    assert (per_task[has_box, 1] == 4).all() and (per_task[has_box, 2] > 0).all()
    assert (per_task[~has_box, 1:] == 0).all()
    assert ds.info.locca_tasks() == TASKS and ds.info.examples_with_regions == 4


def test_dataset_without_boxes_names_captioning_only(tmp_path, tokenizer):
    examples = [{"image": e["image"], "caption": "a photo"} for e in make_examples(4)]
    path = sources.write_csv(tmp_path / "plain.csv", examples)
    ds = image_text_dataset(path, batch_size=4, image_size=SIZE, tokenizer=tokenizer,
                            locca=True, locca_options={"num_bins": NUM_BINS}, num_epochs=1,
                            **HOST)
    (batch,) = list(ds.as_numpy_iterator())
    assert batch["decoder_weights"][:, 1:].sum() == 0
    assert ds.info.locca_tasks() == ("captioning",) and not ds.info.boxes_seen
    assert ds.info.as_dict()["locca_tasks"] == ["captioning"]


BAD_BOXES = [[0.1, 0.2, 1.5, 0.4]], [[0.6, 0.1, 0.2, 0.3]]  # outside [0, 1]; ymin > ymax


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("bad", BAD_BOXES)
def test_bad_boxes_are_named_skipped_and_counted(tmp_path, format, bad):
    examples = make_examples(5, seed=8)
    examples[2]["boxes"] = np.array(bad, "float32")
    examples[2]["box_texts"] = ["a box"]
    if format in ("csv", "jsonl"):
        path = sources.write_csv(tmp_path / f"rows.{format}", examples)
        where = f"rows.{format} record 3"  # data row / line 3 (1-based)
    elif format == "tfrecord":
        path = sources.write_tfrecord_shards(tmp_path / "s", examples, 1)
        where = "s-00000-of-00001.tfrecord record 2"  # index 2 in the shard (0-based)
    else:
        path = sources.write_webdataset_shards(tmp_path / "s", examples, 1)
        where = "s-00000-of-00001.tar record 2"
    ds = image_text_dataset(path, batch_size=1, image_size=SIZE, num_epochs=1,
                            drop_remainder=False, **HOST)
    delivered = list(ds.as_numpy_iterator())
    report = ds.report.as_dict()
    assert len(delivered) == 4 and report["skipped"] == {"bad_boxes": 1}
    assert report["first_bad"]["bad_boxes"].endswith(where)
    assert where in ds.report.summary()


def test_csv_box_cells_are_json(tmp_path):
    """The CSV encoding: `boxes` / `box_texts` cells hold JSON arrays; a cell that is
    not JSON makes the row a bad_boxes record."""
    image = sources.encode_image(np.zeros((SIZE, SIZE, 3), np.uint8))
    (tmp_path / "x.png").write_bytes(image)
    rows = [["image_path", "caption", "boxes", "box_texts"],
            ["x.png", "one", json.dumps([[0.1, 0.2, 0.3, 0.4]]), json.dumps(["a box"])],
            ["x.png", "two", "", ""],
            ["x.png", "three", "[[0.1, 0.2", "[]"]]
    import csv

    with open(tmp_path / "rows.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    ds = image_text_dataset(str(tmp_path / "rows.csv"), batch_size=2, image_size=SIZE,
                            num_epochs=1, shuffle=False, extra_fields=("boxes", "box_texts"),
                            **HOST)
    (batch,) = list(ds.as_numpy_iterator())
    np.testing.assert_array_equal(batch["num_boxes"], [1, 0])
    np.testing.assert_allclose(batch["boxes"][0, 0], [0.1, 0.2, 0.3, 0.4])
    assert batch["box_texts"][0, 0] == b"a box"
    assert ds.report.as_dict()["skipped"] == {"bad_boxes": 1}
    assert ds.report.as_dict()["first_bad"]["bad_boxes"].endswith("rows.csv record 3")
