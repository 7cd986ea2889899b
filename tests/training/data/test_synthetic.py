"""The synthetic coloured-shapes dataset of the demo: deterministic, multilingual with the
90 / 10 English mixture, boxes that frame their shapes, and batches with every field the
pretrainer's losses need (paper sec. 2: sigmoid, LocCa, SILC, TIPS)."""

import numpy as np
import pytest

from keras_siglip2.training.data import synthetic


@pytest.fixture(scope="module")
def examples():
    return synthetic.generate_examples(1500, image_size=32, seed=3)


@pytest.fixture(scope="module")
def tokenizer():
    from keras_siglip2.preprocessing import SigLIP2Tokenizer

    return SigLIP2Tokenizer(proto=synthetic.train_tokenizer(), sequence_length=16)


def test_deterministic_from_seed(examples):
    again = synthetic.generate_examples(1500, image_size=32, seed=3)
    for key in examples:
        np.testing.assert_array_equal(again[key], examples[key])
    other = synthetic.generate_examples(20, image_size=32, seed=4)
    assert not np.array_equal(other["images"], examples["images"][:20])


def test_language_mixture(examples):
    langs = examples["languages"]
    n = len(langs)
    english = np.mean(langs == "en")
    # 90 % English; binomial std for n = 1500 is 0.8 %: 4 sigma bounds.
    assert abs(english - 0.9) < 0.032
    for lang in ("fr", "de", "es"):
        share = np.mean(langs == lang)
        assert abs(share - 0.1 / 3) < 4 * np.sqrt(0.033 * 0.967 / n), lang


def test_captions_name_the_shapes_in_their_language(examples):
    for i in range(200):
        lang = examples["languages"][i]
        k = int(examples["num_objects"][i])
        regions = examples["region_captions"][i]
        for region in regions[:k]:  # the phrase without its article (French elides it)
            assert region.split(" ", 1)[1] in examples["captions"][i], (lang, region)
        assert all(r == "" for r in regions[k:])
    assert synthetic.object_phrase("red", "cross", "fr") == "une croix rouge"
    assert synthetic.object_phrase("white", "cross", "es") == "una cruz blanca"
    assert synthetic.object_phrase("green", "square", "de") == "ein grünes Quadrat"
    assert synthetic.object_phrase("green", "circle", "de") == "ein grüner Kreis"
    assert synthetic.caption([("blue", "circle")], "fr", 0) == "une photo d'un cercle bleu"


def test_boxes_frame_the_shape_of_the_right_colour(examples):
    size = examples["images"].shape[1]
    for i in range(100):
        box = examples["boxes"][i, 0]
        assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
        colour = examples["region_captions"][i, 0]
        cy = int((box[0] + box[2]) / 2 * size)
        cx = int((box[1] + box[3]) / 2 * size)
        label = examples["labels"][i]
        name = synthetic.COLOURS[label // len(synthetic.SHAPES)]
        rgb = np.asarray(synthetic._RGB[name], float)
        pixel = examples["images"][i, cy, cx].astype(float)
        # The box centre lies inside every shape (the cross's and triangle's too).
        assert np.abs(pixel - rgb).max() <= 40, (i, colour, pixel, rgb)


def test_prompts_and_classes():
    names = synthetic.class_names()
    assert len(names) == 24 and len(set(names)) == 24
    for lang in synthetic.LANGUAGES:
        prompts = synthetic.prompts(lang)
        assert len(prompts) == 24 and len(set(prompts)) == 24
    assert synthetic.prompts("de")[0] == "Foto: ein roter Kreis"
    with pytest.raises(ValueError, match="language"):
        synthetic.prompts("xx")


def test_tokenizer_covers_every_phrase(tokenizer):
    ids = tokenizer(synthetic.all_phrases())
    assert ids.shape[1] == 16
    assert (ids == 3).sum() == 0  # no <unk>
    # EOS present in every row: no phrase is longer than the sequence.
    assert np.all((ids == 1).sum(axis=1) == 1)


def test_dataset_batches(tokenizer):
    ds = synthetic.synthetic_dataset(
        tokenizer, 8, num_examples=32, image_size=24, seed=1, num_local_views=3, num_bins=16
    )
    batch = {k: v.numpy() for k, v in next(iter(ds)).items()}
    assert batch["images"].shape == (8, 24, 24, 3)
    assert batch["local_images"].shape == (8, 3, 24, 24, 3)
    for key in ("images", "local_images"):
        assert batch[key].dtype == np.float32
        assert -1.0 <= batch[key].min() and batch[key].max() <= 1.0
    assert batch["token_ids"].shape == (8, 16)
    vocab = tokenizer.vocabulary_size() + 16
    for key in ("decoder_token_ids", "decoder_targets", "decoder_weights",
                "decoder_prefix_mask"):
        assert batch[key].shape == (8, 3, 20)  # the three LocCa tasks of every example
    assert batch["decoder_targets"].max() < vocab
    # Every synthetic example has a region: all three rows train.
    assert np.all(batch["decoder_weights"].sum(axis=2) > 0)
    # Row 0 captioning (no box tokens), row 1 ARef (box tokens are targets), row 2
    # GCap (box tokens are the unweighted prefix), for every example.
    ds_many = synthetic.synthetic_dataset(tokenizer, 32, num_examples=64, image_size=24,
                                          seed=1, num_local_views=0, num_bins=16)
    many = {k: v.numpy() for k, v in next(iter(ds_many)).items()}
    is_box = many["decoder_targets"] >= tokenizer.vocabulary_size()
    weights = many["decoder_weights"]
    assert (~is_box[:, 0].any(axis=1)).all()
    assert (is_box[:, 1] & (weights[:, 1] > 0)).sum(axis=1).tolist() == [4] * 32
    assert ((is_box[:, 2] & (weights[:, 2] == 0)).sum(axis=1) == 4).all()
    assert not (is_box[:, 2] & (weights[:, 2] > 0)).any()
    sampled = next(iter(synthetic.synthetic_dataset(
        tokenizer, 8, num_examples=32, image_size=24, seed=1, num_local_views=0,
        num_bins=16, locca_tasks="sampled")))
    assert sampled["decoder_targets"].shape == (8, 20)
    assert "local_images" not in many
    again = {k: v.numpy() for k, v in next(iter(synthetic.synthetic_dataset(
        tokenizer, 8, num_examples=32, image_size=24, seed=1, num_local_views=3,
        num_bins=16))).items()}
    for key in batch:
        np.testing.assert_array_equal(again[key], batch[key])


def test_heldout_split():
    split = synthetic.heldout_split(30, image_size=24, seed=99)
    cls, ret = split["classification"], split["retrieval"]
    assert np.all(cls["num_objects"] == 1)
    assert np.all(cls["languages"] == "en")
    assert len(ret["captions"]) == 30
    contents = {frozenset(r[:k]) for r, k in zip(ret["region_captions"], ret["num_objects"])}
    assert len(contents) == 30  # one caption per distinct image content
    assert all(c.startswith("a photo of") for c in ret["captions"])


@pytest.mark.parametrize(
    "kwargs",
    [{"num_examples": 0}, {"num_examples": 4, "image_size": 8},
     {"num_examples": 4, "max_objects": 3}, {"num_examples": 4, "english_fraction": 1.5}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        synthetic.generate_examples(**kwargs)
