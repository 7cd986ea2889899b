"""SigLIP2Tokenizer: lowercasing, no BOS, sticky EOS, padding, multilingual text,
Python vs tf.data agreement, presets and error messages."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip2.preprocessing import SigLIP2Tokenizer

from .conftest import CORPUS, SEQUENCE_LENGTH, train_sentencepiece

PAD, EOS, BOS, UNK = 0, 1, 2, 3

MIXED_TEXTS = [
    "A Photo of a CAT sitting on the Grass.",
    "L'ÉCOLE Française est à CÔTÉ de la Forêt",
    "一只猫坐在草地上。",
    "एक बिल्ली घास पर बैठी है।",
    "Two DOGS, one Ball!",
    "",
]


def real_tokens(row):
    """The ids before the first EOS."""
    row = list(np.asarray(row))
    return row[: row.index(EOS)]


def test_output_shape_dtype_and_padding(tokenizer, spm_processor):
    batch = np.asarray(tokenizer(["a cat", "a photo of a dog"]))
    assert batch.shape == (2, SEQUENCE_LENGTH)
    assert batch.dtype == np.int32
    single = np.asarray(tokenizer("a cat"))
    assert single.shape == (SEQUENCE_LENGTH,)
    np.testing.assert_array_equal(single, batch[0])

    ids = spm_processor.encode("a cat")
    n = len(ids)
    assert n + 1 < SEQUENCE_LENGTH
    np.testing.assert_array_equal(single[:n], ids)
    assert single[n] == EOS  # EOS right after the real tokens...
    assert np.all(single[n + 1 :] == PAD)  # ...then <pad> up to the length.


def test_lowercases_input(tokenizer):
    lowered = [t.lower() for t in MIXED_TEXTS]
    np.testing.assert_array_equal(
        np.asarray(tokenizer(MIXED_TEXTS)), np.asarray(tokenizer(lowered))
    )
    # Without lowercasing the capitals give other ids: the check above is not vacuous.
    cased = SigLIP2Tokenizer(proto=tokenizer.proto, sequence_length=SEQUENCE_LENGTH, lowercase=False)
    assert not np.array_equal(np.asarray(cased(MIXED_TEXTS)), np.asarray(tokenizer(lowered)))


def test_unicode_lowercasing(tokenizer):
    np.testing.assert_array_equal(
        np.asarray(tokenizer("ÉCOLE À CÔTÉ")), np.asarray(tokenizer("école à côté"))
    )
    assert tokenizer.detokenize(tokenizer("ÉCOLE")) == "école"
    # "ascii" reproduces big_vision's byte-wise tf.strings.lower: É stays capital.
    ascii_tok = SigLIP2Tokenizer(proto=tokenizer.proto, sequence_length=SEQUENCE_LENGTH, lowercase="ascii")
    assert ascii_tok.detokenize(ascii_tok("ÉCOLE")) == "École"
    ds = tf.data.Dataset.from_tensors(["ÉCOLE"]).map(ascii_tok)
    np.testing.assert_array_equal(next(iter(ds)).numpy()[0], np.asarray(ascii_tok("ÉCOLE")))


def test_no_bos(tokenizer):
    ids = np.asarray(tokenizer(CORPUS + MIXED_TEXTS))
    assert not np.any(ids == BOS)
    for row, text in zip(ids, CORPUS):
        assert row[0] != BOS and row[0] != EOS or text == ""


def test_sticky_eos_on_truncation(tokenizer, spm_processor):
    text = " ".join(CORPUS[:4])
    full = spm_processor.encode(text.lower())
    assert len(full) > 2 * SEQUENCE_LENGTH
    ids = np.asarray(tokenizer(text))
    assert ids.shape == (SEQUENCE_LENGTH,)
    assert ids[-1] == EOS  # Truncated, yet EOS is kept last.
    np.testing.assert_array_equal(ids[:-1], full[: SEQUENCE_LENGTH - 1])
    assert not np.any(ids == PAD)
    # Exactly L - 1 real tokens: no truncation, EOS lands on the last position.
    exact = spm_processor.decode(full[: SEQUENCE_LENGTH - 1])
    if len(spm_processor.encode(exact)) == SEQUENCE_LENGTH - 1:
        assert np.asarray(tokenizer(exact))[-1] == EOS


def test_sequence_length_override_and_ragged(tokenizer, spm_processor):
    ids = np.asarray(tokenizer("a photo of a cat", sequence_length=4))
    assert ids.shape == (4,) and ids[-1] == EOS
    ragged = SigLIP2Tokenizer(proto=tokenizer.proto, sequence_length=None)
    out = ragged(["a cat", "a photo of a dog"])
    assert [list(r) for r in out] == [
        spm_processor.encode("a cat") + [EOS],
        spm_processor.encode("a photo of a dog") + [EOS],
    ]
    ds = tf.data.Dataset.from_tensors(["a cat", "a photo of a dog"]).map(ragged)
    assert next(iter(ds)).to_list() == [list(r) for r in out]


def test_multilingual_text_is_known_and_round_trips(tokenizer):
    texts = [
        "L'École Française à Noël",
        "我们在公园里玩红色的球",
        "हम पार्क में लाल गेंद से खेल रहे हैं",
    ]
    ids = np.asarray(tokenizer(texts, sequence_length=64))
    for row in ids:
        tokens = real_tokens(row)
        assert tokens and UNK not in tokens
    decoded = tokenizer.detokenize(ids)
    assert list(decoded) == [t.lower() for t in texts]


def test_ids_equal_sentencepiece_on_every_script(tokenizer, spm_processor):
    """Accented Latin, CJK, Devanagari, mixed case, empty and over-long texts: each
    row is SentencePiece's ids of the lowercased text, cut to L - 1, then EOS, then
    <pad> (the reference computed here with the sentencepiece library itself)."""
    texts = CORPUS + MIXED_TEXTS + [" ".join(CORPUS[8:])]
    got = np.asarray(tokenizer(texts))
    for text, row in zip(texts, got):
        ids = spm_processor.encode(text.lower())[: SEQUENCE_LENGTH - 1] + [EOS]
        expected = ids + [PAD] * (SEQUENCE_LENGTH - len(ids))
        np.testing.assert_array_equal(row, expected, err_msg=text)
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(4).map(tokenizer)
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in ds]), got)


def test_punctuation_is_kept(tokenizer):
    with_punct = np.asarray(tokenizer("a cat, on the grass!"))
    without = np.asarray(tokenizer("a cat on the grass"))
    assert not np.array_equal(with_punct, without)
    assert tokenizer.detokenize(with_punct) == "a cat, on the grass!"


def test_input_types(tokenizer):
    expected = np.asarray(tokenizer(["a cat", "a dog"]))
    for inputs in (
        ("a cat", "a dog"),
        np.array(["a cat", "a dog"]),
        np.array([b"a cat", b"a dog"], dtype=object),
        tf.constant(["a cat", "a dog"]),
    ):
        np.testing.assert_array_equal(np.asarray(tokenizer(inputs)), expected)
    nested = np.asarray(tokenizer([["a cat", "a dog"], ["a dog", "a cat"]]))
    assert nested.shape == (2, 2, SEQUENCE_LENGTH)
    np.testing.assert_array_equal(nested[1, 0], expected[1])
    assert np.asarray(tokenizer([])).shape == (0, SEQUENCE_LENGTH)


def test_python_and_tf_data_paths_agree(tokenizer):
    texts = CORPUS + MIXED_TEXTS + [" ".join(CORPUS), "ΟΔΟΣ straße İstanbul ǅ"]
    eager = np.asarray(tokenizer(texts))
    batched = tf.data.Dataset.from_tensor_slices(texts).batch(5).map(tokenizer)
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in batched]), eager)
    single = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer)
    elements = [e.numpy() for e in single]
    assert elements[0].shape == (SEQUENCE_LENGTH,)
    np.testing.assert_array_equal(np.stack(elements), eager)
    # The TensorFlow path run eagerly, too.
    tf_eager = SigLIP2Tokenizer(
        proto=tokenizer.proto, sequence_length=SEQUENCE_LENGTH, _allow_python_workflow=False
    )
    np.testing.assert_array_equal(np.asarray(tf_eager(texts)), eager)


def test_tokenizer_survives_a_tf_reseed(tokenizer):
    """`keras.utils.set_random_seed` after the tokenizer was used (it resets TF's kernel
    cache, deleting SentencePiece op resources: tensorflow/text#570): tf.data pipelines
    built afterwards and eager calls still tokenize, to the same ids."""
    import keras

    texts = ["a photo of a cat", "Une photo d'un chat"]

    def through_tf_data():
        ds = tf.data.Dataset.from_tensor_slices(texts).batch(2).map(tokenizer)
        return np.concatenate(list(ds.as_numpy_iterator()))

    before = through_tf_data()
    eager = np.asarray(keras.ops.convert_to_numpy(tokenizer(texts)))
    np.testing.assert_array_equal(eager, before)
    try:
        keras.utils.set_random_seed(0)
        np.testing.assert_array_equal(through_tf_data(), before)
        np.testing.assert_array_equal(
            np.asarray(keras.ops.convert_to_numpy(tokenizer(texts))), before)
    finally:
        tf.random.set_seed(None)


def test_special_tokens(tokenizer):
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == PAD
    assert tokenizer.end_token == "<eos>" and tokenizer.end_token_id == EOS
    assert tokenizer.start_token_id == BOS and tokenizer.unknown_token_id == UNK
    assert sorted(tokenizer.special_token_ids) == [PAD, EOS, BOS, UNK]


def test_get_config_round_trip(tokenizer):
    tok = SigLIP2Tokenizer(proto=tokenizer.proto, sequence_length=7, lowercase="ascii")
    config = tok.get_config()
    assert config["sequence_length"] == 7 and config["lowercase"] == "ascii"
    assert "add_bos" not in config and config["proto"] is None
    restored = SigLIP2Tokenizer.from_config(config)
    assert restored.get_config() == config
    restored.set_proto(tokenizer.proto)
    np.testing.assert_array_equal(np.asarray(restored(MIXED_TEXTS)), np.asarray(tok(MIXED_TEXTS)))


def test_preset_round_trip(tokenizer, tmp_path):
    preset = str(tmp_path / "preset")
    tok = SigLIP2Tokenizer(proto=tokenizer.proto, sequence_length=12)
    tok.save_to_preset(preset)
    assert os.path.isfile(os.path.join(preset, "tokenizer.json"))
    spm_path = os.path.join(preset, "assets", "tokenizer", "vocabulary.spm")
    with open(spm_path, "rb") as f:
        assert f.read() == tokenizer.proto
    with open(os.path.join(preset, "tokenizer.json")) as f:
        assert json.load(f)["registered_name"] == "keras_siglip2>SigLIP2Tokenizer"
    restored = SigLIP2Tokenizer.from_preset(preset)
    assert isinstance(restored, SigLIP2Tokenizer)
    assert restored.sequence_length == 12
    texts = CORPUS + MIXED_TEXTS
    np.testing.assert_array_equal(np.asarray(restored(texts)), np.asarray(tok(texts)))


def test_full_preset_through_keras_hub(tokenizer, backbone_preset):
    import keras_hub

    preset = backbone_preset
    tokenizer.save_to_preset(preset)
    restored = keras_hub.tokenizers.Tokenizer.from_preset(preset)
    assert isinstance(restored, SigLIP2Tokenizer)
    np.testing.assert_array_equal(np.asarray(restored(CORPUS)), np.asarray(tokenizer(CORPUS)))
    restored = SigLIP2Tokenizer.from_preset(preset, sequence_length=5)
    assert np.asarray(restored("a cat")).shape == (5,)


def test_proto_errors(tmp_path):
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        SigLIP2Tokenizer(proto=b"definitely not a model")
    with pytest.raises(FileNotFoundError, match="missing.model"):
        SigLIP2Tokenizer(proto=str(tmp_path / "missing.model"))
    # T5 / LLaMA-style ids (<unk>=0, <s>=1, </s>=2): refused, saying what was expected.
    wrong = train_sentencepiece(CORPUS, pad_id=-1, unk_id=0, bos_id=1, eos_id=2, pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>")
    with pytest.raises(ValueError, match=r"id 0 is the padding piece '<pad>'.*id 0 = '<unk>'"):
        SigLIP2Tokenizer(proto=wrong)


def test_preset_without_vocabulary(tokenizer, tmp_path):
    preset = tmp_path / "preset"
    tokenizer.save_to_preset(str(preset))
    os.remove(preset / "assets" / "tokenizer" / "vocabulary.spm")
    with pytest.raises(FileNotFoundError, match="vocabulary.spm"):
        SigLIP2Tokenizer.from_preset(str(preset))


def test_argument_errors(tokenizer):
    with pytest.raises(ValueError, match="add_bos"):
        SigLIP2Tokenizer(proto=tokenizer.proto, add_bos=True)
    with pytest.raises(ValueError, match="sequence_length"):
        SigLIP2Tokenizer(proto=tokenizer.proto, sequence_length=0)
    with pytest.raises(ValueError, match="lowercase"):
        SigLIP2Tokenizer(proto=tokenizer.proto, lowercase="title")
    with pytest.raises(ValueError, match="dtype"):
        SigLIP2Tokenizer(proto=tokenizer.proto, dtype="float32")
    with pytest.raises(ValueError, match="strings"):
        tokenizer(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="No vocabulary"):
        SigLIP2Tokenizer()("a cat")
