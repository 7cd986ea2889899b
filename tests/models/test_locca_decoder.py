"""LocCa decoder (paper sec. 2.2): causal rows never see future inputs, parallel rows
see no input tokens (only kept prefixes), padded image tokens are ignored, config round
trip, jax.jit, the text-tower-derived sizes, the attention mask of SigLIP2Attention,
and clear errors."""

from types import SimpleNamespace

import jax
import keras
import numpy as np
import pytest

from keras_siglip2.layers import SigLIP2Attention
from keras_siglip2.models import SigLIP2LocCaDecoder, SigLIP2TextEncoder, locca_decoder_for

VOCAB, WIDTH, IMAGE_DIM, LENGTH, NUM_IMAGE = 50, 32, 24, 8, 6


def _decoder(**kwargs):
    keras.utils.set_random_seed(0)
    config = dict(
        vocabulary_size=VOCAB, hidden_dim=WIDTH, num_layers=2, num_heads=4,
        intermediate_dim=64, max_sequence_length=LENGTH, image_dim=IMAGE_DIM,
    )
    config.update(kwargs)
    return SigLIP2LocCaDecoder(**config)


def _inputs(batch=3, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, VOCAB, (batch, LENGTH)).astype("int32")
    image = rng.normal(size=(batch, NUM_IMAGE, IMAGE_DIM)).astype("float32")
    return ids, image


def _changed(a, b):
    """Per position (B, L): whether the logits differ."""
    return np.abs(np.asarray(a) - np.asarray(b)).max(-1) > 1e-5


def test_output_shape_and_built_at_construction():
    decoder = _decoder()
    assert decoder.built and decoder.weights
    ids, image = _inputs()
    logits = decoder(ids, image)
    assert tuple(logits.shape) == (3, LENGTH, VOCAB)
    assert decoder.image_projection is not None
    paths = [v.path for v in decoder.weights]
    assert len(paths) == len(set(paths))


def test_causal_rows_do_not_see_future_tokens():
    decoder = _decoder()
    ids, image = _inputs()
    base = decoder(ids, image, parallel=np.zeros(3, bool))
    assert np.array_equal(np.asarray(base), np.asarray(decoder(ids, image)))  # None == all causal
    t = 4
    future = ids.copy()
    future[:, t:] = (future[:, t:] + 7) % VOCAB
    changed = _changed(base, decoder(future, image, parallel=np.zeros(3, bool)))
    assert not changed[:, :t].any()  # positions before t never saw the changed inputs
    assert changed[:, t:].all()


def test_parallel_rows_use_no_input_tokens_and_are_bidirectional():
    decoder = _decoder()
    ids, image = _inputs()
    parallel = np.array([True, False, True])
    base = decoder(ids, image, parallel=parallel)
    other = (ids + 13) % VOCAB
    changed = _changed(base, decoder(other, image, parallel=parallel))
    assert not changed[parallel].any()
    assert changed[~parallel].all()
    # Scalar `parallel` applies to every row.
    all_parallel = decoder(ids, image, parallel=True)
    assert not _changed(all_parallel, decoder(other, image, parallel=True)).any()
    # Parallel rows still read the image.
    assert _changed(base, decoder(ids, image * 2.0, parallel=parallel))[parallel].all()
    # Kept prefix tokens are visible to every position (no causal mask).
    prefix = np.zeros((3, LENGTH), "int32")
    prefix[:, 1:4] = 1
    with_prefix = decoder(ids, image, parallel=parallel, prefix_mask=prefix)
    new_prefix = ids.copy()
    new_prefix[:, 3] = (new_prefix[:, 3] + 5) % VOCAB
    changed = _changed(with_prefix, decoder(new_prefix, image, parallel=parallel, prefix_mask=prefix))
    assert changed[parallel].all()  # including positions 0..2, before the change
    assert not changed[~parallel][:, :3].any()  # causal rows: only from position 3 on
    targets_only = ids.copy()
    targets_only[:, 4:] = (targets_only[:, 4:] + 5) % VOCAB
    changed = _changed(with_prefix, decoder(targets_only, image, parallel=parallel, prefix_mask=prefix))
    assert not changed[parallel].any()


def test_image_key_mask_hides_padding_tokens():
    decoder = _decoder()
    ids, image = _inputs()
    key_mask = np.ones((3, NUM_IMAGE), "int32")
    key_mask[0, 4:] = 0
    key_mask[2, 1:] = 0
    base = decoder(ids, image, image_key_mask=key_mask)
    padded = image.copy()
    padded[key_mask == 0] = 100.0
    assert not _changed(base, decoder(ids, padded, image_key_mask=key_mask)).any()
    real = image.copy()
    real[key_mask == 1] += 1.0
    assert _changed(base, decoder(ids, real, image_key_mask=key_mask)).all()
    assert _changed(base, decoder(ids, padded)).any()  # without the mask they matter


def test_config_round_trip_and_jit():
    decoder = _decoder(num_layers=1, image_dim=None, max_sequence_length=LENGTH)
    assert decoder.image_projection is None and decoder.image_dim == WIDTH
    clone = SigLIP2LocCaDecoder.from_config(decoder.get_config())
    clone.set_weights(decoder.get_weights())
    assert clone.get_config() == decoder.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(decoder))
    assert isinstance(restored, SigLIP2LocCaDecoder)
    ids = np.random.RandomState(1).randint(0, VOCAB, (2, 5)).astype("int32")
    image = np.random.RandomState(2).normal(size=(2, NUM_IMAGE, WIDTH)).astype("float32")
    parallel = np.array([1, 0], "int32")
    eager = np.asarray(decoder(ids, image, parallel=parallel))
    np.testing.assert_array_equal(np.asarray(clone(ids, image, parallel=parallel)), eager)

    @jax.jit
    def forward(trainable, non_trainable, ids, image, parallel):
        return decoder.stateless_call(trainable, non_trainable, ids, image, parallel=parallel)[0]

    out = forward(
        [v.value for v in decoder.trainable_variables],
        [v.value for v in decoder.non_trainable_variables],
        ids, image, parallel,
    )
    np.testing.assert_allclose(np.asarray(out), eager, rtol=1e-5, atol=1e-5)


def test_mixed_precision():
    """mixed_bfloat16: bfloat16 compute, float32 weights; with the float32 decoder's
    weights its logits are within 6e-2 of the float32 decoder's (measured: 2.4e-2, the
    logits reaching 2.8 in magnitude; bfloat16 keeps 8 significant bits)."""
    decoder = _decoder(dtype="mixed_bfloat16", num_layers=1)
    reference = _decoder(num_layers=1)
    decoder.set_weights(reference.get_weights())
    assert decoder.blocks[0].self_attention.qkv_dense.compute_dtype == "bfloat16"
    assert decoder.blocks[0].self_attention.qkv_dense.kernel.dtype == "float32"
    ids, image = _inputs()
    parallel = np.array([1, 0, 1])
    logits = np.asarray(decoder(ids, image, parallel=parallel)).astype("float32")
    expected = np.asarray(reference(ids, image, parallel=parallel))
    err = np.abs(logits - expected).max()
    assert 0 < err <= 6e-2, err  # > 0: bfloat16 really ran


def test_locca_decoder_for_text_tower_and_backbone():
    text = SigLIP2TextEncoder(
        vocabulary_size=100, hidden_dim=32, num_layers=3, num_heads=4,
        intermediate_dim=64, max_sequence_length=12,
    )
    decoder = locca_decoder_for(text, num_location_bins=20)
    assert decoder.vocabulary_size == text.vocabulary_size + 20
    assert (decoder.hidden_dim, decoder.num_heads, decoder.intermediate_dim) == (
        text.hidden_dim, text.num_heads, text.intermediate_dim,
    )
    assert decoder.num_layers == 1  # half of the text tower's 3 layers, rounded down
    assert decoder.image_dim == text.hidden_dim
    assert decoder.max_sequence_length == text.max_sequence_length + 4
    # A backbone gives its image width (only the two tower attributes are read).
    backbone = SimpleNamespace(text_encoder=text, vision_encoder=SimpleNamespace(hidden_dim=48))
    from_backbone = locca_decoder_for(backbone, num_location_bins=20)
    assert from_backbone.image_dim == 48 and from_backbone.image_projection is not None
    assert locca_decoder_for(text, image_dim=48).vocabulary_size == text.vocabulary_size + 1024
    tokens = np.random.RandomState(0).normal(size=(2, 4, 48)).astype("float32")
    ids = np.zeros((2, 6), "int32")
    assert tuple(from_backbone(ids, tokens).shape) == (2, 6, 120)
    with pytest.raises(ValueError, match="num_location_bins"):
        locca_decoder_for(text, num_location_bins=0)


def test_attention_mask_matches_reference_and_default_is_unchanged():
    keras.utils.set_random_seed(0)
    attention = SigLIP2Attention(16, 2)
    attention.build((2, 5, 16))
    x = np.random.RandomState(0).normal(size=(2, 5, 16)).astype("float32")
    base = np.asarray(attention(x))
    np.testing.assert_array_equal(np.asarray(attention(x, attention_mask=np.ones((5, 5), bool))), base)
    causal = np.tril(np.ones((5, 5), bool))
    key_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 1, 1]], bool)
    got = np.asarray(attention(x, key_mask=key_mask, attention_mask=np.broadcast_to(causal, (2, 5, 5))))
    # numpy reference from the layer's weights
    w, b = (np.asarray(v, "float64") for v in attention.qkv_dense.weights)
    qkv = (x @ w + b).reshape(2, 5, 3, 2, 8)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(8)
    allowed = causal[None, None] & key_mask[:, None, None, :]
    scores = np.where(allowed, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshd->bthd", probs, v).reshape(2, 5, 16)
    wo, bo = (np.asarray(v, "float64") for v in attention.output_dense.weights)
    np.testing.assert_allclose(got, out @ wo + bo, rtol=1e-4, atol=1e-5)


def test_bad_input_errors():
    decoder = _decoder()
    ids, image = _inputs()
    with pytest.raises(ValueError, match="image_dim=24"):
        decoder(ids, image[..., :10])
    with pytest.raises(ValueError, match="`image_tokens` must have shape"):
        decoder(ids, image[0])
    with pytest.raises(ValueError, match="one batch size"):
        decoder(ids[:2], image)
    with pytest.raises(ValueError, match="one batch size"):
        decoder(ids, image, parallel=np.zeros(2, bool))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decoder(np.full_like(ids, VOCAB), image)
    with pytest.raises(ValueError, match="max_sequence_length"):
        decoder(np.zeros((3, LENGTH + 1), "int32"), image)
    with pytest.raises(ValueError, match="image_key_mask"):
        decoder(ids, image, image_key_mask=np.ones((3, NUM_IMAGE + 1)))
    with pytest.raises(ValueError, match="num_heads"):
        _decoder(num_heads=5)
    with pytest.raises(ValueError, match="num_layers"):
        _decoder(num_layers=0)
