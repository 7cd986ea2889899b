"""Tests of `image_text_dataset` (training/data/pipeline.py) and its views
(training/data/augment.py): resumption (start_batch and iterator checkpoints), the
language mixture, bad-input skipping and strict errors, NaFlex sequence lengths per
batch, SILC crops / TIPS masks, LocCa targets, and argument errors."""

import io

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_siglip2.training.data import augment, sources
from keras_siglip2.training.data.pipeline import image_text_dataset, record_stream
from keras_siglip2.training.data.report import END_OF_EPOCH, DataReport
from tests.training.data.test_sources import SIZE, make_examples

HOST = {"num_hosts": 1, "host_index": 0}


def jpeg_bytes(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def undecodable_jpeg(image):
    """Starts with the JPEG signature and ends with EOI (passes the byte checks), but
    its quantization tables are destroyed, so decoding fails."""
    data = jpeg_bytes(image)
    return data[:20] + b"\x00" * 40 + data[60:]


def batches(ds):
    return list(ds.as_numpy_iterator())


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ------------------------------------------------------------------------ resumption
@pytest.fixture(scope="module")
def resume_data(tmp_path_factory):
    """23 examples over 3 TFRecord shards, two of them bad (skipped before decoding)."""
    folder = tmp_path_factory.mktemp("resume")
    examples = make_examples(23, seed=1)
    examples[5]["caption"] = "   "
    examples[14]["image"] = jpeg_bytes(examples[14]["image"])[:60]  # truncated
    return sources.write_tfrecord_shards(folder / "train", examples, num_shards=3)


RESUME_ARGS = dict(batch_size=4, image_size=SIZE, views=("image", "local", "masked"),
                   num_local_crops=2, local_crop_size=4, patch_size=4, num_epochs=2, seed=5,
                   extra_fields=("texts", "record"), **HOST)


@pytest.fixture(scope="module")
def full_run(resume_data):
    ds = image_text_dataset(resume_data, **RESUME_ARGS)
    return batches(ds), ds.report


def test_full_run_views_and_report(full_run):
    out, report = full_run
    assert len(out) == (2 * 21) // 4  # 21 good examples per epoch, last partial dropped
    first = out[0]
    assert first["images"].shape == (4, SIZE, SIZE, 3)
    assert first["local_images"].shape == (4, 2, 4, 4, 3)
    assert first["tips_mask"].shape == (4, 4) and (first["tips_mask"].sum(axis=1) == 2).all()
    for batch in out:
        for key in ("images", "local_images"):
            assert np.isfinite(batch[key]).all() and np.abs(batch[key]).max() <= 1.0
    # Masks are drawn per example (6 possible masks of 2 out of 4 patches).
    masks = {tuple(m) for b in out for m in b["tips_mask"]}
    assert len(masks) > 1
    d = report.as_dict()
    assert d["skipped"] == {"empty_caption": 2, "corrupt_image": 2}  # once per epoch
    assert d["delivered"] == 42 and d["epochs"] == {"all": 2}
    texts = [t for b in out[:5] for t in b["texts"]]  # epoch 1: 20 distinct examples
    assert len(set(texts)) == 20


@pytest.mark.parametrize("start_batch", [3, 6])  # 6 starts inside the second epoch
def test_start_batch_resumes_exactly(resume_data, full_run, start_batch):
    resumed = batches(image_text_dataset(resume_data, start_batch=start_batch, **RESUME_ARGS))
    assert_batches_equal(resumed, full_run[0][start_batch:])


def test_iterator_checkpoint_resumes_exactly(resume_data, full_run, tmp_path):
    ds = image_text_dataset(resume_data, **RESUME_ARGS)
    iterator = iter(ds)
    seen = [next(iterator) for _ in range(4)]
    checkpoint = tf.train.Checkpoint(iterator=iterator, report=ds.report)
    path = checkpoint.save(str(tmp_path / "data"))
    fresh = image_text_dataset(resume_data, **RESUME_ARGS)
    fresh_iterator = iter(fresh)
    tf.train.Checkpoint(iterator=fresh_iterator, report=fresh.report).restore(path)
    rest = [{k: v.numpy() for k, v in b.items()} for b in fresh_iterator]
    seen = [{k: v.numpy() for k, v in b.items()} for b in seen]
    assert_batches_equal(seen + rest, full_run[0])
    assert fresh.report.as_dict()["delivered"] == 42


@pytest.mark.parametrize("global_seed", [0, pytest.param(1234, marks=pytest.mark.large)])
def test_order_ignores_the_tf_global_seed(resume_data, full_run, global_seed):
    """Record shuffle and language mixture depend on `seed` alone: a process seeded
    with `keras.utils.set_random_seed` (0 once made tf.data's shuffle fail on a tensor
    seed) gets the same batches, so resumption works whatever the user seeded."""
    args = dict(RESUME_ARGS, language_weights={"en": 0.6, "other": 0.4})
    tf.random.set_seed(None)
    mixed = batches(image_text_dataset(resume_data, **args))
    try:
        keras.utils.set_random_seed(global_seed)
        assert_batches_equal(batches(image_text_dataset(resume_data, **RESUME_ARGS)),
                             full_run[0])
        assert_batches_equal(batches(image_text_dataset(resume_data, **args)), mixed)
    finally:
        tf.random.set_seed(None)


# ------------------------------------------------------------------------ mixture
@pytest.fixture(scope="module")
def mixture_csv(tmp_path_factory):
    """10,000 rows sharing one image: 3,000 en, 5,000 fr, 2,000 de."""
    folder = tmp_path_factory.mktemp("mixture")
    (folder / "x.png").write_bytes(sources.encode_image(np.zeros((2, 2, 3), np.uint8)))
    languages = ["en"] * 3000 + ["fr-FR"] * 5000 + ["DE"] * 2000
    lines = ["image_path,caption,language"] + [
        f"x.png,caption {i},{lang}" for i, lang in enumerate(languages)]
    path = folder / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_language_mixture_within_two_percent(mixture_csv):
    """The paper's 90 % English / 10 % other mixture from data that is 30 % English."""
    weights = {"en": 0.9, "other": 0.1}
    report = DataReport(tuple(weights))
    source = sources.open_source(mixture_csv)
    stream = record_stream(source, report, language_weights=weights, seed=1)
    stream = stream.filter(lambda r: r["status"] != END_OF_EPOCH).map(lambda r: r["bucket"])
    buckets = np.concatenate(list(stream.batch(1000).take(10).as_numpy_iterator()))
    assert buckets.size == 10_000
    for i, name in enumerate(weights):
        fraction = float(np.mean(buckets == i))
        assert abs(fraction - weights[name]) <= 0.02, (name, fraction)
    assert "language_excluded" not in report.as_dict()["filtered"]


def test_languages_outside_the_mixture_are_excluded_and_counted(tmp_path):
    (tmp_path / "x.png").write_bytes(sources.encode_image(np.zeros((2, 2, 3), np.uint8)))
    rows = ["image_path,caption,language"] + [
        f"x.png,caption {i},{lang}" for i, lang in enumerate(["en", "fr", "de", "en_GB"] * 5)]
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    weights = {"en": 1.0}
    report = DataReport(tuple(weights))
    stream = record_stream(sources.open_source(str(tmp_path / "rows.csv")), report,
                           language_weights=weights, num_epochs=1)
    records = list(stream.filter(lambda r: r["status"] != END_OF_EPOCH).as_numpy_iterator())
    languages = sorted({r["language"].decode() for r in records})
    assert languages == ["en", "en_GB"]  # "en_GB" is English
    assert len(records) == 10
    assert report.as_dict()["filtered"] == {"language_excluded": 10}  # fr and de


# ------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def bad_tfrecords(tmp_path_factory):
    """Shards with one example of each bad kind, plus a truncated shard, a junk record
    and a missing shard. Returns (paths, number of good examples)."""
    folder = tmp_path_factory.mktemp("bad")
    good = make_examples(6, seed=2)
    image = good[0]["image"]
    bad = [
        {"image": b"<html>404 not found</html>", "caption": "not an image"},
        {"image": jpeg_bytes(image)[:100], "caption": "truncated jpeg"},
        {"image": undecodable_jpeg(image), "caption": "broken jpeg header"},
        {"image": sources.encode_image(np.zeros((1, 1, 3), np.uint8)), "caption": "one pixel"},
        {"image": image, "caption": ""},
        {"image": image, "caption": b"caf\xe9 au lait"},
        {"image": image, "caption": "box outside", "boxes": [[0.1, 0.2, 1.5, 0.6]],
         "box_texts": ["x"]},
        {"image": image, "caption": "upside-down box", "boxes": [[0.8, 0.2, 0.1, 0.6]]},
        {"image": image, "caption": "box count", "boxes": [[0.1, 0.1, 0.2, 0.2]],
         "box_texts": ["a", "b"]},
        {"image": image, "caption": "nan box", "boxes": [[np.nan, 0.1, 0.2, 0.2]]},
    ]
    mixed = [x for pair in zip(good, bad) for x in pair] + bad[len(good):]
    paths = sources.write_tfrecord_shards(folder / "mixed", mixed, num_shards=1)
    # A shard whose last record is cut short, and one with a record that is no Example.
    cut = sources.write_tfrecord_shards(folder / "cut", make_examples(3, seed=3), 1)[0]
    data = open(cut, "rb").read()
    open(cut, "wb").write(data[:-10])
    junk = str(folder / "junk-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(junk) as writer:
        writer.write(b"\x07\x07 this is not a tf.train.Example")
    paths += [cut, junk, str(folder / "missing-00000-of-00001.tfrecord")]
    return paths, len(good) + 2  # the cut shard keeps 2 of its 3 records


def test_bad_examples_skipped_and_counted(bad_tfrecords):
    paths, num_good = bad_tfrecords
    ds = image_text_dataset(paths, batch_size=1, image_size=SIZE, num_epochs=1,
                            extra_fields=("texts",), **HOST)
    out = batches(ds)
    assert len(out) == num_good
    for batch in out:
        assert np.isfinite(batch["images"]).all()
    d = ds.report.as_dict()
    assert d["skipped"] == {
        "missing_shard": 1, "truncated_shard": 1, "unreadable_record": 1,
        "corrupt_image": 2, "undecodable_image": 1, "image_too_small": 1,
        "empty_caption": 1, "non_utf8_caption": 1, "bad_boxes": 4,
    }
    assert d["delivered"] == num_good
    assert "bad_boxes" in ds.report.summary()


def test_csv_missing_file_skipped_and_strict(tmp_path):
    path = sources.write_csv(tmp_path / "rows.csv", make_examples(4))
    with open(path, "a") as f:
        f.write("images/not-there.png,a row whose image is missing\n")
    ds = image_text_dataset(path, batch_size=1, image_size=SIZE, num_epochs=1, **HOST)
    assert len(batches(ds)) == 4
    assert ds.report.as_dict()["skipped"] == {"missing_image_file": 1}
    strict = image_text_dataset(path, batch_size=1, image_size=SIZE, num_epochs=1,
                                shuffle=False, strict=True, **HOST)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"rows\.csv record 5: missing_image_file"):
        batches(strict)


@pytest.mark.parametrize(
    "bad, reason",
    [({"caption": " "}, "empty_caption"),
     ({"image": "undecodable"}, "undecodable_image"),
     ({"boxes": [[0.5, 0.5, 0.4, 0.9]]}, "bad_boxes")],
)
def test_strict_raises_naming_shard_and_record(tmp_path, bad, reason):
    examples = make_examples(4, seed=4)
    bad = dict(bad)
    if bad.get("image") == "undecodable":
        bad["image"] = undecodable_jpeg(examples[2]["image"])
    examples[2].update(bad)
    if "boxes" in bad:
        examples[2]["box_texts"] = ["x"]
    path = sources.write_tfrecord_shards(tmp_path / "strict", examples, 1)[0]
    ds = image_text_dataset(path, batch_size=1, image_size=SIZE, num_epochs=1,
                            strict=True, **HOST)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"strict=True.*strict-00000-of-00001\.tfrecord record 2: {reason}"):
        batches(ds)


def test_no_usable_example_raises_instead_of_looping(tmp_path):
    path = sources.write_tfrecord_shards(
        tmp_path / "empty", [{"image": b"junk", "caption": "x"}], 1)
    ds = image_text_dataset(path, batch_size=1, image_size=SIZE, **HOST)  # repeats forever
    with pytest.raises(tf.errors.InvalidArgumentError, match="no usable example"):
        next(iter(ds))


# ------------------------------------------------------------------------ NaFlex
def test_naflex_sequence_length_sampled_per_batch(tmp_path):
    rng = np.random.default_rng(0)
    shapes = [(8, 12), (12, 8), (8, 8), (16, 4)]
    examples = [(rng.integers(0, 256, shapes[i % 4] + (3,), dtype=np.uint8), f"c{i}")
                for i in range(24)]
    path = sources.write_tfrecord_shards(tmp_path / "naflex", examples, 2)
    lengths = (4, 9, 16)
    args = dict(batch_size=2, views=("naflex",), patch_size=4, naflex_sequence_lengths=lengths,
                num_epochs=1, seed=3, **HOST)
    out = batches(image_text_dataset(path, **args))
    assert len(out) == 12
    seen = [b["pixel_patches"].shape[1] for b in out]
    assert set(seen) <= set(lengths) and len(set(seen)) > 1
    for b, n in zip(out, seen):
        assert b["pixel_patches"].shape == (2, n, 4 * 4 * 3)
        assert b["patch_positions"].shape == (2, n, 2) and b["patch_mask"].shape == (2, n)
        real = b["patch_mask"].sum(axis=1)
        assert (real >= 1).all() and (real <= n).all()
        assert np.abs(b["pixel_patches"]).max() <= 1.0
    again = [b["pixel_patches"].shape[1] for b in batches(image_text_dataset(path, **args))]
    assert again == seen


# ------------------------------------------------------------------------ LocCa
def test_locca_targets_in_batches(tmp_path):
    from keras_siglip2.preprocessing import SigLIP2Tokenizer
    from tests.preprocessing.conftest import train_sentencepiece

    examples = make_examples(12, seed=6)
    tokenizer = SigLIP2Tokenizer(
        proto=train_sentencepiece([e["caption"] for e in examples] + [
            t for e in examples for t in e["box_texts"]] + ["a photo"] * 4, vocab_size=300),
        sequence_length=10,
    )
    path = sources.write_tfrecord_shards(tmp_path / "locca", examples, 1)
    ds = image_text_dataset(path, batch_size=4, image_size=SIZE, tokenizer=tokenizer,
                            locca=True, locca_options={"num_bins": 16, "tasks": "sampled"},
                            num_epochs=1,
                            extra_fields=("boxes",), **HOST)
    out = batches(ds)
    assert len(out) == 3
    vocabulary = tokenizer.vocabulary_size() + 16
    tasks = []
    for b in out:
        assert b["token_ids"].shape == (4, 10) and "texts" not in b
        for key in ("decoder_token_ids", "decoder_targets", "decoder_weights"):
            assert b[key].shape == (4, 14)  # max(10, 10 + 4 box tokens)
        assert (b["decoder_token_ids"][:, 0] == 2).all()  # BOS
        assert b["decoder_targets"].max() < vocabulary
        assert (b["decoder_weights"].sum(axis=1) > 0).all()
        no_box = b["num_boxes"] == 0
        assert (b["locca_task"][no_box] == 0).all()  # captioning only
        tasks += list(b["locca_task"][~no_box])
        # ARef rows predict 4 location tokens, GCap rows start with them.
        for row in np.where(b["locca_task"] == 1)[0]:
            targets = b["decoder_targets"][row][b["decoder_weights"][row] > 0]
            assert len(targets) == 4 and (targets >= vocabulary - 16).all()
    assert {1, 2} <= set(tasks)


def test_locca_batch_fields_directly():
    """The public LocCa-fields function (used by the pipeline and the synthetic data):
    seeded draws, task weights respected, regions required for ARef / GCap."""
    from keras_siglip2.preprocessing import SigLIP2Tokenizer
    from keras_siglip2.training.data.pipeline import locca_batch_fields
    from tests.preprocessing.conftest import train_sentencepiece

    captions = ["a red circle and a blue square", "a green cross", "a photo", "a dog"] * 4
    tokenizer = SigLIP2Tokenizer(proto=train_sentencepiece(captions * 8, vocab_size=300),
                                 sequence_length=8)
    boxes = np.zeros((16, 2, 4), "float32")
    boxes[:, 0] = [0.1, 0.2, 0.5, 0.6]
    box_texts = np.array([["a red circle", ""]] * 16)
    num_boxes = np.array([1, 1, 0, 1] * 4, "int32")  # rows 2, 6, ...: no region
    batch = {"token_ids": tf.cast(tokenizer(captions), tf.int32), "boxes": boxes,
             "box_texts": box_texts, "num_boxes": num_boxes}
    seed = tf.constant([3, 4], tf.int64)
    sampled = dict(num_bins=8, tasks="sampled")  # one task per example (issue 17: opt-in)
    a = {k: v.numpy() for k, v in locca_batch_fields(batch, tokenizer, seed, **sampled).items()}
    b = {k: v.numpy() for k, v in locca_batch_fields(batch, tokenizer, seed, **sampled).items()}
    for key in ("decoder_token_ids", "decoder_targets", "decoder_weights",
                "decoder_prefix_mask", "locca_task"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert a[key].shape[0] == 16
    assert (a["locca_task"][num_boxes == 0] == 0).all()
    assert set(a["locca_task"][num_boxes == 1]) > {0}  # ARef / GCap drawn where possible
    only_gcap = locca_batch_fields(batch, tokenizer, seed, **sampled,
                                   task_weights=(1e-6, 0.0, 1.0))["locca_task"].numpy()
    np.testing.assert_array_equal(only_gcap, np.where(num_boxes == 1, 2, 0))
    with pytest.raises(ValueError, match="task_weights"):
        locca_batch_fields(batch, tokenizer, seed, task_weights=(0.0, 1.0, 1.0))


# ------------------------------------------------------------------------ augment
def test_image_integrity_status():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    jpeg, png = jpeg_bytes(image), sources.encode_image(image)
    assert augment.image_integrity_status(jpeg).numpy() == 0
    assert augment.image_integrity_status(png).numpy() == 0
    for data in (jpeg[: len(jpeg) // 2], png[:-20], b"GIF89a....", b"hello"):
        assert augment.image_integrity_status(data).numpy() == 6  # corrupt_image
    assert augment.image_integrity_status(b"").numpy() == 4  # missing_image


def test_local_crops_geometry():
    image = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    seed = tf.constant([1, 2], tf.int64)
    # A crop of the whole image (area fraction 1, square) at the same size is the image.
    full = augment.local_crops(image, seed, 3, (6, 6), (1.0, 1.0), (1.0, 1.0), flip=False).numpy()
    for crop in full:
        np.testing.assert_allclose(crop, image, atol=1e-3)
    flipped = augment.local_crops(image, seed, 8, (6, 6), (1.0, 1.0), (1.0, 1.0)).numpy()
    mirrored = [np.allclose(c, image[:, ::-1], atol=1e-3) for c in flipped]
    kept = [np.allclose(c, image, atol=1e-3) for c in flipped]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)
    boxes = augment.crop_boxes(seed, 50, 80, 64, scale=(0.05, 0.4)).numpy()
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 50).all() and (left + w <= 80).all()
    area = h * w / (50 * 80)
    assert area.min() >= 0.02 and area.max() <= 0.5  # (0.05, 0.4) up to rounding / clipping


def test_tips_mask_count_and_determinism():
    seed = tf.constant([3, 4], tf.int64)
    mask = augment.tips_mask(seed, 49, 0.5).numpy()
    assert mask.sum() == round(0.5 * 49) and set(np.unique(mask)) == {0, 1}
    np.testing.assert_array_equal(mask, augment.tips_mask(seed, 49, 0.5).numpy())
    other = augment.tips_mask(tf.constant([3, 5], tf.int64), 49, 0.5).numpy()
    assert not np.array_equal(mask, other)


# ------------------------------------------------------------------------ arguments
def test_argument_errors(tmp_path):
    path = sources.write_tfrecord_shards(tmp_path / "a", make_examples(2), 1)
    base = dict(batch_size=2, image_size=SIZE, **HOST)
    cases = [
        (dict(views=("image", "depth")), ValueError, "`views` must be"),
        (dict(views=("naflex", "local")), ValueError, "cannot combine 'naflex'"),
        (dict(views=("image", "masked")), ValueError, "needs `patch_size=`"),
        (dict(views=("masked",), patch_size=3), ValueError, "not a multiple"),
        (dict(language_weights={"en": -1}), ValueError, "positive finite"),
        (dict(language_weights=[0.9, 0.1]), ValueError, "non-empty dict"),
        (dict(filter_fn="drop men"), TypeError, "callable"),
        (dict(batch_size=0), ValueError, "`batch_size` must be an integer >= 1"),
        (dict(start_batch=-1), ValueError, "`start_batch`"),
        (dict(num_hosts=2), ValueError, "both `num_hosts` and `host_index`"),
        (dict(extra_fields=("pixels",)), ValueError, "`extra_fields`"),
        (dict(locca=True), ValueError, "needs a tokenizer"),
        (dict(locca_options={"num_bins": 8}), ValueError, "without `locca=True`"),
    ]
    for overrides, error, message in cases:
        kwargs = {**base, **overrides}
        if "num_hosts" in overrides:
            kwargs.pop("host_index")
        with pytest.raises(error, match=message):
            image_text_dataset(path, **kwargs)
    with pytest.raises(ValueError, match="needs the model resolution"):
        image_text_dataset(path, batch_size=2, **HOST)


# ------------------------------------------------------------------------ throughput
def test_measure_input_throughput_runs(tmp_path):
    from keras_siglip2.training.data.throughput import measure_input_throughput

    result = measure_input_throughput(
        num_images=8, image_size=16, source_shape=(24, 32), batch_size=4, num_batches=2,
        warmup_batches=1, num_local_crops=2, patch_size=8, workdir=str(tmp_path),
    )
    assert result["images"] == 8 and result["images_per_second"] > 0
    assert result["config"]["views"] == ("image", "local", "masked")
