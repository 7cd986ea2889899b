"""from_keras_hub: a keras-hub SigLIPBackbone converted to ours gives the same logits."""

import numpy as np
import pytest
import keras
import keras_hub

from keras_siglip2.convert import CheckpointError, from_keras_hub


def tiny_keras_hub_backbone():
    keras.utils.set_random_seed(0)
    vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=8, hidden_dim=32, num_layers=2, num_heads=4, intermediate_dim=64,
        image_shape=(16, 16, 3), name="vision_encoder",
    )
    text = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=100, embedding_dim=32, hidden_dim=32, num_layers=2, num_heads=4,
        intermediate_dim=64, max_sequence_length=8, projection_dim=32, name="text_encoder",
    )
    backbone = keras_hub.models.SigLIPBackbone(vision, text)
    rng = np.random.RandomState(0)
    for v in backbone.trainable_weights:  # move every weight off its init
        v.assign(np.asarray(v) + rng.normal(0, 0.1, v.shape).astype("float32"))
    return backbone


def test_same_logits_as_keras_hub(tmp_path):
    source = tiny_keras_hub_backbone()
    rng = np.random.RandomState(1)
    x = {
        "images": rng.uniform(-1, 1, (3, 16, 16, 3)).astype("float32"),
        "token_ids": rng.randint(0, 100, (2, 8)).astype("int32"),
    }
    expected = np.asarray(source(x)["vision_logits"])
    assert np.std(expected) > 1e-3  # the comparison is not between constants
    for converted in (from_keras_hub(source), _via_preset(source, tmp_path)):
        got = np.asarray(converted(x)["vision_logits"])
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def _via_preset(source, tmp_path):
    source.save_to_preset(str(tmp_path / "kh"))
    return from_keras_hub(str(tmp_path / "kh"))


def test_refuses_other_models():
    with pytest.raises(CheckpointError, match="Expected a keras_hub SigLIPBackbone"):
        from_keras_hub(keras.Sequential([keras.layers.Dense(2)]))


def test_bad_keras_hub_presets(tmp_path):
    """A missing directory, a preset without weights, truncated weights and a
    preset of another class: each one clear error."""
    import shutil

    with pytest.raises(FileNotFoundError, match="keras-hub preset '.*nowhere' not found"):
        from_keras_hub(str(tmp_path / "nowhere"))
    good = tmp_path / "kh"
    tiny_keras_hub_backbone().save_to_preset(str(good))
    no_weights = tmp_path / "no_weights"
    shutil.copytree(good, no_weights)
    (no_weights / "model.weights.h5").unlink()
    with pytest.raises(FileNotFoundError, match="has no weights: expected model.weights.h5"):
        from_keras_hub(no_weights)
    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    data = (good / "model.weights.h5").read_bytes()
    (truncated / "model.weights.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        from_keras_hub(str(truncated))
    from tests.conftest import tiny_backbone

    ours = tmp_path / "ours"
    tiny_backbone(image_size=16, vision_width=32, text_width=32).save_to_preset(str(ours))
    with pytest.raises(ValueError, match="SigLIP2Backbone"):
        from_keras_hub(str(ours))
