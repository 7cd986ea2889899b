"""`SigLIP2Backbone.compile()` + `fit(x)` without targets (`models/fit_defaults.py`),
against keras-hub's `SigLIPBackbone` doing the same from the same weights (its own
loss and optimizer defaults), and against the sigmoid loss by hand in float64."""

import keras
import keras_hub
import numpy as np
import pytest

from keras_siglip2.convert.keras_hub import from_keras_hub

BATCH, SIZE, LENGTH, VOCAB = 6, 32, 8, 64


def _keras_hub_backbone():
    keras.utils.set_random_seed(0)
    vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=8, hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64,
        image_shape=(SIZE, SIZE, 3), name="vision_encoder")
    text = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=VOCAB, embedding_dim=32, hidden_dim=32, num_layers=2, num_heads=2,
        intermediate_dim=64, max_sequence_length=LENGTH, projection_dim=32,
        name="text_encoder")
    return keras_hub.models.SigLIPBackbone(vision, text)


def _batch(seed=0):
    rng = np.random.RandomState(seed)
    return {"images": rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 3)).astype("float32"),
            "token_ids": rng.randint(1, VOCAB, (BATCH, LENGTH)).astype("int32")}


def _sigmoid_loss(logits):
    logits = np.asarray(logits, np.float64)
    labels = 2 * np.eye(len(logits)) - 1
    return float(np.mean(np.sum(np.logaddexp(0, -labels * logits), axis=1)))


def test_fit_without_targets_matches_keras_hub_step_by_step():
    kh = _keras_hub_backbone()
    ours = from_keras_hub(kh)
    kh.compile()
    ours.compile()
    x = _batch()
    expected_first = _sigmoid_loss(ours.predict_on_batch(x)["vision_logits"])
    ours_losses = [float(ours.train_on_batch(x)) for _ in range(4)]
    kh_losses = [float(kh.train_on_batch(x)) for _ in range(4)]
    assert ours_losses[0] == pytest.approx(expected_first, rel=1e-5)
    np.testing.assert_allclose(ours_losses, kh_losses, rtol=1e-4)
    assert ours_losses[-1] < 0.9 * ours_losses[0], ours_losses  # it trains


def test_fit_on_a_dataset_of_inputs_only():
    ours = from_keras_hub(_keras_hub_backbone())
    ours.compile(optimizer=keras.optimizers.SGD(0.5))
    history = ours.fit(_batch(), batch_size=BATCH, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_an_explicit_loss_takes_the_given_targets():
    ours = from_keras_hub(_keras_hub_backbone())
    ours.compile(loss={"vision_logits": keras.losses.MeanSquaredError()})
    x = _batch()
    zeros = np.zeros((BATCH, BATCH), "float32")
    expected = float(np.mean(np.asarray(ours.predict_on_batch(x)["vision_logits"],
                                        np.float64) ** 2))
    assert float(ours.train_on_batch(x, {"vision_logits": zeros})) == pytest.approx(
        expected, rel=1e-5)
