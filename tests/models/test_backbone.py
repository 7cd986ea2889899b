"""SigLIP2Backbone: keras-hub Backbone conventions (config round trip, presets, dtype
policies, registration) and clear errors for bad input."""

import keras
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


def _fixture_inputs(ref, naflex):
    if naflex:
        positions = np.stack([ref["in/yidx"], ref["in/xidx"]], -1).astype("int32")
        x = {"pixel_patches": ref["in/patches"], "patch_positions": positions,
             "patch_mask": ref["in/ptype"].astype("int32")}
    else:
        x = {"images": ref["in/images"]}
    return {**x, "token_ids": ref["in/token_ids"]}


# Bounds for (L2-normalized embeddings, logits / exp(t)) against big_vision's float32
# outputs. Measured over fixed_b / naflex_b (eager and jit): mixed_float16 6.9e-4 /
# 5.9e-4 (float16 keeps 11 significant bits, 2^-11 = 4.9e-4), mixed_bfloat16 5.7e-3 /
# 5.7e-3 (8 bits, 2^-8 = 3.9e-3; the bfloat16 logits near -10 step by 0.0625).
MIXED_BOUNDS = {"mixed_float16": (3e-3, 3e-3), "mixed_bfloat16": (2e-2, 2e-2)}


# Each tower under each policy; the default run keeps one policy per tower (about
# 9 s each), the other two with -m large.
@pytest.mark.parametrize("case, policy", [
    ("fixed_b", "mixed_bfloat16"), ("naflex_b", "mixed_float16"),
    pytest.param("fixed_b", "mixed_float16", marks=pytest.mark.large),
    pytest.param("naflex_b", "mixed_bfloat16", marks=pytest.mark.large),
])
def test_mixed_precision_close_to_big_vision(case, policy):
    """Both towers under mixed_float16 / mixed_bfloat16: float32 variables, reduced
    compute, logits computed in float32 inside the head and returned in the compute
    dtype (keras-hub's convention); eager and compiled outputs within the bounds above
    of big_vision's float32 reference (and not equal to it: the policy really ran)."""
    mixed = from_big_vision(fixture_path(case), dtype=policy)
    compute = policy.split("_")[1]
    block = mixed.vision_encoder.encoder_blocks[0].attention.qkv_dense
    assert block.compute_dtype == compute and block.kernel.dtype == "float32"
    assert mixed.logit_head.log_temperature.dtype == "float32"
    with np.load(fixture_path(case)) as ref:
        ref = {k: ref[k] for k in ref.files}
    x = _fixture_inputs(ref, naflex=case.startswith("naflex"))
    embed_bound, logit_bound = MIXED_BOUNDS[policy]
    for embed, expected in (("get_vision_embeddings", "out/zimg"), ("get_text_embeddings", "out/ztxt")):
        z = getattr(mixed, embed)(x if embed == "get_vision_embeddings" else x["token_ids"])
        assert str(z.dtype) == compute
        err = np.abs(np.asarray(l2_normalize(z), "float32") - ref[expected]).max()
        assert 0 < err <= embed_bound, (embed, err)
    scale = float(np.ravel(ref["out/t"])[0])
    for out in (mixed(x), mixed.predict_on_batch(x)):
        assert str(out["vision_logits"].dtype) == compute
        logits = np.asarray(out["vision_logits"], "float32")
        np.testing.assert_array_equal(np.asarray(out["text_logits"], "float32"), logits.T)
        err = np.abs(logits - ref["out/logits"]).max() / scale
        assert 0 < err <= logit_bound, err


def test_logit_head_computes_in_float32_inside():
    """Under mixed_float16 the head's float32 logits equal a float64 computation from
    the same (float16) embeddings to 1e-5 (measured 2e-6); the returned float16 logits
    are those rounded to float16 (within 2^-11 relative)."""
    mixed = tiny_backbone(dtype="mixed_float16")
    x = tiny_inputs()
    img = np.asarray(mixed.get_vision_embeddings(x), "float64")
    txt = np.asarray(mixed.get_text_embeddings(x["token_ids"]), "float64")
    norm = lambda z: z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)  # noqa: E731
    head = mixed.logit_head
    t = np.exp(np.asarray(head.log_temperature, "float64")[0])
    expected = norm(img) @ norm(txt).T * t + np.asarray(head.bias, "float64")[0]
    full, _ = head.float32_logits(img.astype("float16"), txt.astype("float16"))
    assert str(full.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(full), expected, atol=1e-5, rtol=0)
    out = np.asarray(mixed(x)["vision_logits"])
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype("float64"), expected, rtol=2.0**-11, atol=1e-5)


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
    """A float32 preset loaded with dtype="bfloat16": its weights, the logit head's
    temperature and bias included (keras-hub's harness requires every variable in the
    policy's variable dtype), are the float32 ones rounded to bfloat16, and its outputs
    stay close to the float32 model's on the same inputs."""
    backbone = tiny_backbone()
    backbone.save_to_preset(str(tmp_path / "preset"))
    loaded = SigLIP2Backbone.from_preset(str(tmp_path / "preset"), dtype="bfloat16")
    assert loaded.vision_encoder.encoder_blocks[0].mlp.fc1.kernel.dtype == "bfloat16"
    assert loaded.vision_encoder.encoder_blocks[0].mlp.fc1.compute_dtype == "bfloat16"
    for full, half in zip(backbone.weights, loaded.weights):
        assert full.path == half.path
        expected, got = np.asarray(full), np.asarray(half)
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


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="uses jax.grad")
def test_text_float32_embeddings_keep_float16_gradients_finite():
    """The text tower's `head` starts at zero (as in big_vision), so at init every text
    embedding is 0 and the L2 normalization's gradient is 1 / 1e-8: through the float16
    output it overflows (NaN in every text variable), through `get_float32_embeddings`
    (the projection in float32) it stays finite. Under float32 both give the same
    embeddings bit for bit."""
    import jax

    ids = tiny_inputs()["token_ids"]
    full = tiny_backbone().text_encoder
    np.testing.assert_array_equal(np.asarray(full.get_float32_embeddings(ids)), np.asarray(full(ids)))
    text = tiny_backbone(dtype="mixed_float16").text_encoder
    for v in text.head.weights:
        v.assign(np.zeros(v.shape, "float32"))
    values = [v.value for v in text.trainable_variables]

    def loss(values, embed):
        mapping = list(zip(text.trainable_variables, values))
        with keras.StatelessScope(state_mapping=mapping):
            z = embed(ids)
        return keras.ops.sum(l2_normalize(keras.ops.cast(z, "float32"))[:, 0])

    finite = lambda grads: all(np.isfinite(np.asarray(g)).all() for g in grads)  # noqa: E731
    grad = jax.jit(jax.grad(loss), static_argnums=1)  # compiled: eager dispatch took ~25 s
    assert not finite(grad(values, text))
    assert finite(grad(values, text.get_float32_embeddings))
