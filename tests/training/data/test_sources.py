"""Tests of the image-text sources (training/data/sources.py): each format written by its
writer and read back through `image_text_dataset` gives the same (image, caption, boxes,
box texts, language), in the same order for a fixed seed; file resolution, missing
shards and host sharding."""

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip2.training.data import sources
from keras_siglip2.training.data.pipeline import image_text_dataset
from keras_siglip2.training.data.report import DataReport

SIZE = 8  # images are written at the model resolution, so the resize is the identity


def make_examples(n=12, seed=0, size=SIZE):
    """n examples with distinct random images, captions, 0-2 boxes and languages."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        k = i % 3
        ys = np.sort(rng.uniform(0, 1, (k, 2)), axis=1)
        xs = np.sort(rng.uniform(0, 1, (k, 2)), axis=1)
        boxes = np.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], axis=-1).reshape(k, 4)
        examples.append({
            "image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "caption": f"caption number {i} é",
            "boxes": boxes.astype(np.float32),
            "box_texts": [f"region {i}.{j}" for j in range(k)],
            "language": ["en", "fr", "de"][i % 3],
        })
    return examples


def write(format, folder, examples, num_shards=3):
    if format == "tfrecord":
        return sources.write_tfrecord_shards(folder / "train", examples, num_shards=num_shards)
    if format == "webdataset":
        return sources.write_webdataset_shards(folder / "train", examples, num_shards=num_shards)
    return sources.write_csv(folder / f"train.{format}", examples)


def read_all(path, seed=0, shuffle=True, **kwargs):
    """All examples of one epoch as a list of dicts of numpy values."""
    ds = image_text_dataset(
        path, batch_size=5, image_size=SIZE, num_epochs=1, seed=seed, shuffle=shuffle,
        drop_remainder=False, num_hosts=1, host_index=0,
        extra_fields=("texts", "boxes", "box_texts", "language"), **kwargs,
    )
    out = []
    for batch in ds.as_numpy_iterator():
        for i in range(len(batch["texts"])):
            n = batch["num_boxes"][i]
            out.append({
                "image": batch["images"][i],
                "caption": batch["texts"][i].decode(),
                "boxes": batch["boxes"][i][:n],
                "box_texts": [t.decode() for t in batch["box_texts"][i][:n]],
                "language": batch["language"][i].decode(),
            })
    return out, ds.report


def check_same_examples(read, examples, with_boxes=True):
    originals = {e["caption"]: e for e in examples}
    assert sorted(r["caption"] for r in read) == sorted(originals)
    for r in read:
        original = originals[r["caption"]]
        # [-1, 1] back to the written pixels: (y + 1) * 127.5 within float rounding.
        pixels = np.round((r["image"] + 1.0) * 127.5)
        np.testing.assert_array_equal(pixels, original["image"])
        if with_boxes:
            np.testing.assert_allclose(r["boxes"], original["boxes"], atol=1e-6)
            assert r["box_texts"] == original["box_texts"]
            assert r["language"] == original["language"]


@pytest.mark.parametrize("format", ["tfrecord", "webdataset", "csv", "jsonl"])
def test_round_trip_each_format(tmp_path, format):
    examples = make_examples()
    path = write(format, tmp_path, examples)
    read, report = read_all(path, seed=3)
    # Every format keeps boxes and box texts (CSV: JSON arrays in the cells).
    check_same_examples(read, examples)
    assert report.as_dict()["delivered"] == len(examples)
    assert report.num_skipped == 0
    order = [r["caption"] for r in read]
    assert order != sorted(order, key=lambda c: int(c.split()[2]))  # it was shuffled
    if format == "tfrecord":
        # Same seed -> same order; another seed -> another order.
        again, _ = read_all(path, seed=3)
        assert [r["caption"] for r in again] == order
        other, _ = read_all(path, seed=4)
        assert [r["caption"] for r in other] != order


def test_unshuffled_single_shard_keeps_file_order(tmp_path):
    examples = make_examples(7)
    path = sources.write_tfrecord_shards(tmp_path / "one", examples, num_shards=1)
    read, _ = read_all(path, shuffle=False)
    assert [r["caption"] for r in read] == [e["caption"] for e in examples]


def test_resolve_files(tmp_path):
    paths = sources.write_tfrecord_shards(tmp_path / "d" / "train", make_examples(4), 2)
    fmt, files, missing = sources.resolve_files(str(tmp_path / "d"))
    assert (fmt, files, missing) == ("tfrecord", paths, [])
    fmt, files, missing = sources.resolve_files(str(tmp_path / "d" / "*.tfrecord"))
    assert files == paths
    fmt, files, missing = sources.resolve_files(paths + [str(tmp_path / "gone.tfrecord")])
    assert files == paths and missing == [str(tmp_path / "gone.tfrecord")]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        sources.resolve_files(str(tmp_path / "nothing-*.tfrecord"))
    with pytest.raises(ValueError, match="mixes formats"):
        sources.resolve_files([paths[0], str(tmp_path / "x.csv")])
    with pytest.raises(ValueError, match="Cannot tell the data format"):
        sources.resolve_files(str(tmp_path / "data.bin"))
    with pytest.raises(ValueError, match="`format` must be one of"):
        sources.resolve_files(paths, format="parquet")
    with pytest.raises(TypeError, match="path_or_pattern"):
        sources.resolve_files(42)


def test_missing_shard_counted_or_raised(tmp_path):
    paths = sources.write_tfrecord_shards(tmp_path / "train", make_examples(4), 2)
    gone = str(tmp_path / "gone-00000-of-00001.tfrecord")
    report = DataReport()
    source = sources.open_source(paths + [gone], report=report)
    assert source.files == paths
    assert report.as_dict()["skipped"] == {"missing_shard": 1}
    with pytest.raises(FileNotFoundError, match="gone-00000"):
        sources.open_source(paths + [gone], strict=True)
    with pytest.raises(FileNotFoundError, match="no file"):
        sources.open_source([gone])


def _captions(source, epoch=0, seed=0):
    records = source.epoch_records(tf.constant(epoch, tf.int64), seed=seed, shuffle=True,
                                   shuffle_buffer=100)
    return [r["text"].decode() for r in records.as_numpy_iterator()]


@pytest.mark.parametrize("num_shards", [4, 1])
def test_host_sharding_is_a_partition(tmp_path, num_shards):
    examples = make_examples(12)
    paths = sources.write_tfrecord_shards(tmp_path / "train", examples, num_shards)
    parts = [_captions(sources.open_source(paths, num_hosts=2, host_index=h)) for h in (0, 1)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(e["caption"] for e in examples)
    # Each epoch permutes again, still a partition.
    later = [_captions(sources.open_source(paths, num_hosts=2, host_index=h), epoch=1)
             for h in (0, 1)]
    assert sorted(later[0] + later[1]) == sorted(e["caption"] for e in examples)
    with pytest.raises(ValueError, match="host_index"):
        sources.open_source(paths, num_hosts=2, host_index=2)


def test_table_rows_sharded_across_hosts(tmp_path):
    examples = make_examples(9)
    path = sources.write_csv(tmp_path / "train.csv", examples)
    parts = [_captions(sources.open_source(path, num_hosts=3, host_index=h)) for h in range(3)]
    assert sorted(sum(parts, [])) == sorted(e["caption"] for e in examples)
    assert all(len(p) == 3 for p in parts)


def test_csv_header_required_and_writer_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,words\na.png,hello\n")
    with pytest.raises(ValueError, match="header naming the columns `image_path`"):
        sources.open_source(str(bad))
    with pytest.raises(ValueError, match="uint8 arrays"):
        sources.write_tfrecord_shards(tmp_path / "x", [(np.zeros((4, 4, 3), np.float32), "a")])
    with pytest.raises(ValueError, match=r"shape \(num_boxes, 4\)"):
        sources.write_csv(tmp_path / "x.jsonl", [(np.zeros((4, 4, 3), np.uint8), "a", [1, 2, 3])])
    with pytest.raises(TypeError, match="Each example"):
        sources.write_webdataset_shards(tmp_path / "x", ["just a string"])
    with pytest.raises(ValueError, match="num_shards"):
        sources.write_tfrecord_shards(tmp_path / "x", make_examples(2), num_shards=0)
