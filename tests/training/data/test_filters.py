"""Tests of the de-biasing filter hook (training/data/filters.py and `filter_fn` of
`image_text_dataset`): gendered-term detection and swapping, the rebalancing keep
probabilities, and the filter inside the pipeline (drops counted, rewrites applied)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip2.training.data import sources
from keras_siglip2.training.data.filters import (
    GenderedTermRebalancer,
    gender_mentions,
    swap_gendered_terms,
)
from keras_siglip2.training.data.pipeline import image_text_dataset
from tests.training.data.test_sources import SIZE

HOST = {"num_hosts": 1, "host_index": 0}


def example(text, record=0):
    return {"text": tf.constant(text), "language": tf.constant("en"),
            "boxes": tf.zeros([0, 4]), "box_texts": tf.zeros([0], tf.string),
            "source": tf.constant("test"), "record": tf.constant(record, tf.int64)}


def test_swap_gendered_terms():
    texts = ["A man walks his dog.", "She gave him her book", "THE KING and the queen",
             "a manual for the shepherd", "Two boys, one girl"]
    out = [t.decode() for t in swap_gendered_terms(texts).numpy()]
    assert out == ["A woman walks her dog.", "He gave her his book", "THE queen and the king",
                   "a manual for the shepherd", "Two girls, one boy"]


def test_gender_mentions():
    male, female = gender_mentions(["a man", "a woman", "a man and a woman", "a cat",
                                    "human beings"])
    assert male.numpy().tolist() == [True, False, True, False, False]
    assert female.numpy().tolist() == [False, True, True, False, False]


def test_drop_mode_balances_one_group_captions():
    texts = ["a man riding a horse"] * 80 + ["a woman riding a horse"] * 20 + ["a horse"] * 10
    debias = GenderedTermRebalancer.from_texts(texts, mode="drop", seed=0)
    assert debias.keep_probabilities == {"male": 0.25, "female": 1.0}
    kept = [bool(debias(example(t, i)).numpy()) for i, t in enumerate(texts)]
    male_kept = sum(kept[:80])
    # 80 Bernoulli(0.25) draws: mean 20, sd 3.9; 4 sd either way.
    assert 4 <= male_kept <= 36
    assert all(kept[80:])  # the rarer group and the neutral captions are all kept
    # Deterministic: the same example gets the same decision again.
    assert [bool(debias(example(t, i)).numpy()) for i, t in enumerate(texts)] == kept


def test_swap_mode_swaps_about_half():
    debias = GenderedTermRebalancer("swap", swap_probability=0.5, seed=1)
    swapped = 0
    for i in range(200):
        keep, fields = debias(example("a man and his son", i))
        assert bool(keep.numpy())
        text = fields["text"].numpy().decode()
        assert text in ("a man and his son", "a woman and her daughter")
        swapped += text != "a man and his son"
    assert 70 <= swapped <= 130  # Binomial(200, 0.5): mean 100, sd 7.1; about 4 sd


def test_rebalancer_argument_errors():
    with pytest.raises(ValueError, match="`mode`"):
        GenderedTermRebalancer("erase")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        GenderedTermRebalancer("drop", keep_probabilities={"male": 2.0})
    with pytest.raises(ValueError, match="'male' and 'female'"):
        GenderedTermRebalancer("drop", keep_probabilities={"men": 0.5})


def test_filter_in_pipeline_drops_and_rewrites(tmp_path):
    rng = np.random.default_rng(0)
    texts = ["a man cooking", "a woman cooking", "a dog", "a boy and his father",
             "a girl reading", "a cat"]
    examples = [(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), t) for t in texts]
    path = sources.write_tfrecord_shards(tmp_path / "f", examples, 1)

    def no_cats(ex):  # drops; also rewrites every kept caption
        keep = tf.logical_not(tf.strings.regex_full_match(ex["text"], ".*cat.*"))
        return keep, {"text": tf.strings.upper(ex["text"])}

    ds = image_text_dataset(path, batch_size=1, image_size=SIZE, num_epochs=1,
                            filter_fn=no_cats, shuffle=False, **HOST)
    out = [b["texts"][0].decode() for b in ds.as_numpy_iterator()]
    assert out == [t.upper() for t in texts if "cat" not in t]
    assert ds.report.as_dict()["filtered"] == {"filtered": 1}
    assert ds.report.num_skipped == 0

    swap_all = GenderedTermRebalancer("swap", swap_probability=1.0)
    ds = image_text_dataset(path, batch_size=1, image_size=SIZE, num_epochs=1,
                            filter_fn=swap_all, shuffle=False, **HOST)
    out = [b["texts"][0].decode() for b in ds.as_numpy_iterator()]
    assert out == ["a woman cooking", "a man cooking", "a dog", "a girl and her mother",
                   "a boy reading", "a cat"]


def test_bad_filter_outputs_raise(tmp_path):
    path = sources.write_tfrecord_shards(
        tmp_path / "b", [(np.zeros((SIZE, SIZE, 3), np.uint8), "x")], 1)
    cases = [
        (lambda ex: (True, {"image": ex["text"]}), ValueError, "may rewrite only"),
        (lambda ex: (True, {"record": ex["record"]}), ValueError, "may rewrite only"),
        (lambda ex: tf.constant(1.0), TypeError, "scalar bool"),
        (lambda ex: (True, "text"), TypeError, "dict part"),
    ]
    for fn, error, message in cases:
        with pytest.raises(error, match=message):
            image_text_dataset(path, batch_size=1, image_size=SIZE, filter_fn=fn, **HOST)
