"""SigLIP2Backbone: keras-hub Backbone conventions (config round trip, presets, dtype
policies, registration) and clear errors for bad input."""

import numpy as np
import pytest
import keras_hub

import keras_siglip2
from keras_siglip2 import SigLIP2Backbone, SigLIP2TextEncoder, SigLIP2VisionEncoder
from keras_siglip2.convert import CheckpointError, from_big_vision
from keras_siglip2.layers import l2_normalize
from tests.conftest import fixture_path, tiny_backbone, tiny_inputs


def _logits(model, x):
    return np.asarray(model(x)["vision_logits"])


def test_output_shapes_and_registration():
    backbone = tiny_backbone()
    x = tiny_inputs(batch=3)
    out = backbone(x)
    assert out["vision_logits"].shape == (3, 4) and out["text_logits"].shape == (4, 3)
    np.testing.assert_array_equal(np.asarray(out["text_logits"]), np.asarray(out["vision_logits"]).T)
    assert keras_hub.models.SigLIP2Backbone is SigLIP2Backbone
    assert keras_hub.models.SigLIP2VisionEncoder is SigLIP2VisionEncoder
    # keras-hub's own classes are untouched.
    assert keras_hub.models.SigLIPBackbone.__module__.startswith("keras_hub")
    # Variable paths are unique and name their tower.
    paths = [v.path for v in backbone.weights]
    assert len(paths) == len(set(paths))
    assert all(p.startswith(("vision_encoder/", "text_encoder/", "logit_head/")) for p in paths)


def test_config_round_trip():
    backbone = tiny_backbone()
    clone = SigLIP2Backbone.from_config(backbone.get_config())
    clone.set_weights(backbone.get_weights())
    x = tiny_inputs()
    np.testing.assert_array_equal(_logits(clone, x), _logits(backbone, x))
    assert clone.get_config() == backbone.get_config()


def test_initial_temperature_and_bias():
    backbone = tiny_backbone()
    np.testing.assert_allclose(np.exp(np.asarray(backbone.logit_head.log_temperature)), [10.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(backbone.logit_head.bias), [-10.0])


def test_mixed_bfloat16_close_to_float32():
    backbone = from_big_vision(fixture_path("fixed_b"))
    mixed = from_big_vision(fixture_path("fixed_b"), dtype="mixed_bfloat16")
    assert mixed.vision_encoder.encoder_blocks[0].attention.qkv_dense.compute_dtype == "bfloat16"
    assert mixed.vision_encoder.encoder_blocks[0].attention.qkv_dense.kernel.dtype == "float32"
    with np.load(fixture_path("fixed_b")) as ref:
        x = {"images": ref["in/images"], "token_ids": ref["in/token_ids"]}
    full, half = _logits(backbone, x), _logits(mixed, x)
    assert half.dtype == np.float32
    # The towers' outputs (L2-normalized embeddings) within 2e-2 (measured: 3e-3).
    for embed, inputs in (("get_vision_embeddings", x["images"]), ("get_text_embeddings", x["token_ids"])):
        z32 = np.asarray(l2_normalize(getattr(backbone, embed)(inputs)))
        z16 = np.asarray(l2_normalize(getattr(mixed, embed)(inputs))).astype("float32")
        err = np.abs(z32 - z16).max()
        assert 0 < err <= 2e-2, (embed, err)  # > 0: bfloat16 really ran
    # Logits are exp(t) * cos + b: the cosines within 2e-2 (measured: 2.8e-3).
    scale = float(np.exp(np.asarray(backbone.logit_head.log_temperature))[0])
    err = np.abs(full - half).max() / scale
    assert 0 < err <= 2e-2, err


def test_preset_round_trip_bit_identical(tmp_path):
    backbone = tiny_backbone()
    x = tiny_inputs()
    expected = _logits(backbone, x)
    backbone.save_to_preset(str(tmp_path / "preset"))
    for cls in (SigLIP2Backbone, keras_hub.models.Backbone, keras_hub.models.SigLIP2Backbone):
        loaded = cls.from_preset(str(tmp_path / "preset"))
        assert type(loaded) is SigLIP2Backbone
        np.testing.assert_array_equal(_logits(loaded, x), expected)


def test_from_preset_bfloat16(tmp_path):
    """A float32 preset loaded with dtype="bfloat16": its weights are the float32 ones
    rounded to bfloat16 (the logit head's temperature and bias stay float32), and its
    outputs stay close to the float32 model's on the same inputs."""
    backbone = tiny_backbone()
    backbone.save_to_preset(str(tmp_path / "preset"))
    loaded = SigLIP2Backbone.from_preset(str(tmp_path / "preset"), dtype="bfloat16")
    assert loaded.vision_encoder.encoder_blocks[0].mlp.fc1.kernel.dtype == "bfloat16"
    assert loaded.vision_encoder.encoder_blocks[0].mlp.fc1.compute_dtype == "bfloat16"
    for full, half in zip(backbone.weights, loaded.weights):
        assert full.path == half.path
        expected, got = np.asarray(full), np.asarray(half)
        if full.path.startswith("logit_head/"):
            assert got.dtype == np.float32, full.path
        else:
            assert str(got.dtype) == "bfloat16", full.path
        # numpy's own float32 -> bfloat16 rounding of the saved float32 weight.
        np.testing.assert_array_equal(got, expected.astype(got.dtype), err_msg=full.path)
    # Logits are exp(t) * cos + b, cos the cosine of the towers' embeddings: the cosines
    # of the bfloat16 model (its jit-compiled predict step) within 2e-2 of the float32
    # model's (measured: 2.2e-3; bfloat16 keeps 8 significant bits, 2^-8 = 3.9e-3).
    x = tiny_inputs()
    scale = float(np.exp(np.asarray(backbone.logit_head.log_temperature))[0])
    half = np.asarray(loaded.predict_on_batch(x)["vision_logits"]).astype("float32")
    err = np.abs(_logits(backbone, x) - half).max() / scale
    assert 0 < err <= 2e-2, err  # > 0: bfloat16 really ran


def test_embedding_methods_match_logits():
    backbone = tiny_backbone()
    x = tiny_inputs()
    img = np.asarray(backbone.get_vision_embeddings(x))  # extra keys are ignored
    txt = np.asarray(backbone.get_text_embeddings(x["token_ids"]))
    norm = lambda z: z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)  # noqa: E731
    t = float(np.exp(np.asarray(backbone.logit_head.log_temperature))[0])
    b = float(np.asarray(backbone.logit_head.bias)[0])
    np.testing.assert_allclose(_logits(backbone, x), norm(img) @ norm(txt).T * t + b, atol=1e-5)


def test_shorter_text_is_accepted_and_longer_refused():
    backbone = tiny_backbone()
    ids = np.ones((2, 8), "int32")
    assert backbone.get_text_embeddings(ids).shape == (2, 64)
    with pytest.raises(ValueError, match="max_sequence_length`=16"):
        backbone.get_text_embeddings(np.ones((2, 17), "int32"))


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((32, 32, 3), "float32"), "rank-4"),
        (np.zeros((2, 32, 32, 1), "float32"), "3 channels"),
        (np.zeros((2, 32, 32, 4), "float32"), "3 channels"),
        (np.zeros((2, 32, 32, 3), "uint8"), "floating point in \\[-1, 1\\]; got dtype uint8"),
        (np.full((2, 32, 32, 3), 200.0, "float32"), "must lie in \\[-1.0, 1.0\\]"),
        (np.zeros((2, 48, 48, 3), "float32"), "must be 32x32"),
        (np.full((2, 32, 32, 3), np.nan, "float32"), "NaN"),
    ],
)
def test_bad_images(images, message):
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match=message):
        backbone({"images": images, "token_ids": np.ones((2, 16), "int32")})


@pytest.mark.parametrize(
    "token_ids, message",
    [
        (np.full((2, 16), 1000, "int32"), "id 1000, outside the vocabulary \\[0, 1000\\)"),
        (np.full((2, 16), -1, "int32"), "id -1"),
        (np.ones((2, 16), "float32"), "must be integers"),
        (np.ones((16,), "int32"), "rank-2"),
    ],
)
def test_bad_token_ids(token_ids, message):
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match=message):
        backbone.get_text_embeddings(token_ids)


def test_mismatched_tower_widths_refused():
    vision = SigLIP2VisionEncoder(8, 64, 1, 4, 128, image_size=16)
    text = SigLIP2TextEncoder(100, 32, 1, 4, 64, projection_dim=48, max_sequence_length=8)
    with pytest.raises(ValueError, match="projection_dim=48"):
        SigLIP2Backbone(vision, text)


def test_missing_or_corrupt_weights_file(tmp_path):
    tiny_backbone().save_to_preset(str(tmp_path / "preset"))
    weights = tmp_path / "preset" / "model.weights.h5"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"preset .*preset \(truncated or corrupt model.weights.h5"):
        SigLIP2Backbone.from_preset(str(tmp_path / "preset"))
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="has no weights: expected model.weights.h5"):
        SigLIP2Backbone.from_preset(str(tmp_path / "preset"))


def test_version():
    """`keras_siglip2.__version__` is the version the package is built with: the one
    pyproject.toml declares (read here with tomllib), in PEP 440's release form."""
    import re
    import tomllib
    from pathlib import Path

    from tests.conftest import ROOT

    with open(Path(ROOT) / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["version"]
    assert keras_siglip2.__version__ == declared
    assert re.fullmatch(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", declared), declared
