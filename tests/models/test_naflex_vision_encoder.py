"""SigLIP2NaFlexVisionEncoder against big_vision's `naflex_vit` (shared fixture
naflex_b.npz), plus padding / batching / jit / backend properties and input checks."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_siglip2.models.naflex_vision_encoder import SigLIP2NaFlexVisionEncoder  # noqa: E402
from tests.conftest import fixture_path, run_in_backend  # noqa: E402
from tests.layers.test_position_grid import grid_positions, reference_resize  # noqa: E402

# big_vision config of the fixture: width 64, depth 2, heads 4, mlp 128, stem kernel
# (192, 64) => patch 8, learned 4 x 4 grid, 24 patches per image.
CONFIG = dict(
    patch_size=8,
    hidden_dim=64,
    num_layers=2,
    num_heads=4,
    intermediate_dim=128,
    position_grid_size=4,
    max_num_patches=24,
)
TOL = 1e-5


def load_big_vision_image_tower(model, npz):
    """Small local mapping big_vision `img/*` (scan layout) -> our variables."""
    p = {k[len("params/img/"):]: npz[k] for k in npz if k.startswith("params/img/")}

    def flat(kernel):  # (d, heads, head_dim) -> (d, heads * head_dim)
        return kernel.reshape(kernel.shape[0], -1)

    def layer_norm(layer, prefix, i=None):
        pick = (lambda a: a) if i is None else (lambda a: a[i])
        layer.gamma.assign(pick(p[f"{prefix}/scale"]))
        layer.beta.assign(pick(p[f"{prefix}/bias"]))

    def mlp(layer, prefix, i=None):
        pick = (lambda a: a) if i is None else (lambda a: a[i])
        layer.fc1.kernel.assign(pick(p[f"{prefix}/Dense_0/kernel"]))
        layer.fc1.bias.assign(pick(p[f"{prefix}/Dense_0/bias"]))
        layer.fc2.kernel.assign(pick(p[f"{prefix}/Dense_1/kernel"]))
        layer.fc2.bias.assign(pick(p[f"{prefix}/Dense_1/bias"]))

    def attention(layer, prefix, i=None):
        pick = (lambda a: a) if i is None else (lambda a: a[i])
        kernel = {n: flat(pick(p[f"{prefix}/{n}/kernel"])) for n in ("query", "key", "value")}
        bias = {n: pick(p[f"{prefix}/{n}/bias"]).reshape(-1) for n in ("query", "key", "value")}
        if layer.cross_attention:
            layer.query_dense.kernel.assign(kernel["query"])
            layer.query_dense.bias.assign(bias["query"])
            layer.key_value_dense.kernel.assign(np.concatenate([kernel["key"], kernel["value"]], -1))
            layer.key_value_dense.bias.assign(np.concatenate([bias["key"], bias["value"]]))
        else:
            order = ("query", "key", "value")
            layer.qkv_dense.kernel.assign(np.concatenate([kernel[n] for n in order], -1))
            layer.qkv_dense.bias.assign(np.concatenate([bias[n] for n in order]))
        out = pick(p[f"{prefix}/out/kernel"])
        layer.output_dense.kernel.assign(out.reshape(-1, out.shape[-1]))
        layer.output_dense.bias.assign(pick(p[f"{prefix}/out/bias"]))

    model.patch_embedding.dense.kernel.assign(p["embedding/kernel"])
    model.patch_embedding.dense.bias.assign(p["embedding/bias"])
    model.position_grid.grid.assign(p["pos_embedding"])
    block = "Transformer/encoderblock"
    for i, layer in enumerate(model.encoder_blocks):
        layer_norm(layer.norm1, f"{block}/LayerNorm_0", i)
        attention(layer.attention, f"{block}/MultiHeadDotProductAttention_0", i)
        layer_norm(layer.norm2, f"{block}/LayerNorm_1", i)
        mlp(layer.mlp, f"{block}/MlpBlock_0", i)
    layer_norm(model.encoder_norm, "Transformer/encoder_norm")
    model.head.probe.assign(p["MAPHead_0/probe"])
    attention(model.head.attention, "MAPHead_0/MultiHeadDotProductAttention_0")
    layer_norm(model.head.norm, "MAPHead_0/LayerNorm_0")
    mlp(model.head.mlp, "MAPHead_0/MlpBlock_0")


def normalize(z):
    z = np.asarray(z, np.float64)
    return z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)


@pytest.fixture(scope="module")
def fixture():
    with np.load(fixture_path("naflex_b")) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def inputs(fixture):
    return {
        "pixel_patches": fixture["in/patches"],
        "patch_positions": np.stack([fixture["in/yidx"], fixture["in/xidx"]], -1),
        "patch_mask": fixture["in/ptype"],
    }


@pytest.fixture(scope="module")
def model(fixture):
    model = SigLIP2NaFlexVisionEncoder(**CONFIG)
    load_big_vision_image_tower(model, fixture)
    return model


@pytest.fixture(scope="module")
def forward(model):
    """The pooled output under jax.jit (one compilation per input shape)."""
    return jax.jit(lambda x: model(x))


def test_matches_big_vision_fixture(model, fixture, inputs):
    pooled = np.asarray(model(inputs))
    zimg_diff = np.abs(normalize(pooled) - fixture["out/zimg"]).max()
    tokens = np.asarray(model.get_tokens(inputs))
    real = fixture["in/ptype"].astype(bool)
    token_diff = np.abs(tokens - fixture["out/img_tokens"])[real].max()
    print(f"naflex_b: max |zimg diff| = {zimg_diff:.2e}, max |token diff| = {token_diff:.2e}")
    assert zimg_diff < TOL
    assert token_diff < TOL


def test_converter_end_to_end(forward, fixture):
    from keras_siglip2.preprocessing.naflex_image_converter import SigLIP2NaFlexImageConverter

    converter = SigLIP2NaFlexImageConverter(patch_size=8, max_num_patches=24)
    x = converter([fixture[f"in/raw_image_{k}"] for k in range(5)])
    np.testing.assert_allclose(normalize(forward(x)), fixture["out/zimg"], atol=TOL)


def pad_inputs(x, length, rng=None):
    """Pads (N -> length) with garbage patches / positions at padding entries."""
    b, n = x["patch_mask"].shape
    extra = length - n
    rng = rng or np.random.default_rng(0)
    return {
        "pixel_patches": np.concatenate(
            [x["pixel_patches"], rng.uniform(-1, 1, (b, extra, x["pixel_patches"].shape[-1]))], 1
        ).astype("float32"),
        "patch_positions": np.concatenate(
            [x["patch_positions"], rng.integers(-3, 1000, (b, extra, 2))], 1
        ).astype("int32"),
        "patch_mask": np.concatenate([x["patch_mask"], np.zeros((b, extra), "int32")], 1),
    }


def select(x, index):
    return {k: v[index: index + 1] for k, v in x.items()}


def test_batch_of_aspect_ratios_matches_single_images(forward, inputs):
    batch = np.asarray(forward(inputs))
    for b in range(batch.shape[0]):
        alone = np.asarray(forward(select(inputs, b)))[0]  # same length, own padding
        np.testing.assert_allclose(alone, batch[b], atol=TOL)


def test_padding_invariance_and_one_trace_per_length(model, inputs):
    """The same images padded to 256 and to 1024 patches (garbage in the padding, padding
    in the middle of the sequence) give the same embeddings; jit traces (compiles) once
    per sequence length."""
    traces = []

    @jax.jit
    def embed(x):
        traces.append(x["patch_mask"].shape)
        return model(x)

    base = np.asarray(embed(inputs))
    padded_256 = np.asarray(embed(pad_inputs(inputs, 256)))
    other_256 = np.asarray(embed(pad_inputs(inputs, 256, np.random.default_rng(5))))
    long = pad_inputs(inputs, 1024, np.random.default_rng(1))
    perm = np.random.default_rng(2).permutation(1024)  # interleave real and padding
    padded_1024 = np.asarray(embed({k: v[:, perm] for k, v in long.items()}))
    np.testing.assert_allclose(padded_256, base, atol=TOL)
    np.testing.assert_allclose(other_256, base, atol=TOL)
    np.testing.assert_allclose(padded_1024, base, atol=TOL)
    assert traces == [(5, 24), (5, 256), (5, 1024)]


def test_80x12_grid_is_finite_and_exact(model, forward, fixture):
    """big_vision caps the resized grid at 64 per side (NaN beyond); we have no cap."""
    positions = grid_positions(80, 12)[None]
    mask = np.ones((1, 960), "int32")
    emb = np.asarray(jax.jit(model.position_grid.position_embeddings)(positions, mask))[0]
    ref = reference_resize(fixture["params/img/pos_embedding"], 80, 12).reshape(960, -1)
    np.testing.assert_allclose(emb, ref, atol=2e-6)
    patches = np.random.default_rng(3).uniform(-1, 1, (1, 960, 192)).astype("float32")
    out = np.asarray(forward({"pixel_patches": patches, "patch_positions": positions,
                              "patch_mask": mask}))
    assert np.isfinite(out).all()


def bad(inputs, **changes):
    return {**{k: np.array(v) for k, v in inputs.items()}, **changes}


def test_input_validation(model, inputs):
    x = inputs
    mask, pos = x["patch_mask"], x["patch_positions"]
    cases = [
        ({k: v for k, v in x.items() if k != "patch_mask"}, "missing"),
        (bad(x, pixel_patches=x["pixel_patches"][:, :20]), "sequence length N"),
        (bad(x, patch_mask=mask[:3]), "batch size B"),
        (bad(x, pixel_patches=x["pixel_patches"][..., :48]), r"\(B, N, 192\)"),
        (bad(x, patch_positions=pos[..., :1]), r"\(B, N, 2\)"),
        (bad(x, patch_mask=mask[..., None]), r"\(B, N\)"),
        (bad(x, pixel_patches=(x["pixel_patches"] * 127).astype("int32")), "floating point"),
        (bad(x, pixel_patches=x["pixel_patches"] * 200), r"\[-1.0, 1.0\]"),
        (bad(x, patch_positions=pos.astype("float32")), "integers"),
        (bad(x, patch_mask=mask * 2), "only 0"),
    ]
    no_real = np.array(mask)
    no_real[2] = 0
    cases.append((bad(x, patch_mask=no_real), "Image 2 has no real patch"))
    negative = np.array(pos)
    negative[1, 3] = (-1, 2)
    cases.append((bad(x, patch_positions=negative), r"patch_positions\[1, 3\]` = \[-1, 2\]"))
    duplicate = np.array(mask)
    duplicate[1, 16] = 1  # a padding entry (position (0, 0)) marked real
    cases.append((bad(x, patch_mask=duplicate), "Image 1 has 2 real patches at"))
    hole = np.array(mask)
    hole[0, 5] = 0  # a real patch marked as padding
    cases.append((bad(x, patch_mask=hole), "do not fill it"))
    far = np.array(pos)
    far[3, 0] = (50, 0)  # a real patch outside the image's grid
    cases.append((bad(x, patch_positions=far), "do not fill it"))
    for case, message in cases:
        with pytest.raises(ValueError, match=message):
            model(case)
    with pytest.raises(ValueError, match="dict"):
        model(x["pixel_patches"])
    with pytest.raises(ValueError, match="Image 2 has no real patch"):
        model.get_tokens(bad(x, patch_mask=no_real))
    with pytest.raises(ValueError, match="max_num_patches"):
        SigLIP2NaFlexVisionEncoder(**{**CONFIG, "max_num_patches": 0})


def test_config_round_trip(model, forward, inputs):
    config = model.get_config()
    for key, value in CONFIG.items():
        assert config[key] == value
    clone = SigLIP2NaFlexVisionEncoder.from_config(config)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(clone(inputs)), np.asarray(forward(inputs)), atol=TOL)
    serialized = keras.saving.serialize_keras_object(model)
    assert serialized["registered_name"] == "keras_siglip2>SigLIP2NaFlexVisionEncoder"
    assert model.hidden_dim == 64 and model.patch_size == 8 and model.max_num_patches == 24
    assert sorted(model.input) == ["patch_mask", "patch_positions", "pixel_patches"]


def test_in_backbone(model, inputs):
    from keras_siglip2.models import SigLIP2Backbone, SigLIP2TextEncoder

    text = SigLIP2TextEncoder(1000, 64, 1, 4, 128, max_sequence_length=16)
    backbone = SigLIP2Backbone(model, text)
    assert set(backbone.vision_input_names) == set(inputs)
    assert backbone.embedding_dim == 64
    np.testing.assert_allclose(
        np.asarray(backbone.get_vision_embeddings({**inputs, "token_ids": None})),
        np.asarray(model(inputs)),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="no real patch"):
        backbone.get_vision_embeddings({**inputs, "patch_mask": np.zeros((5, 24), "int32")})


TF_SCRIPT = """
import json, numpy as np, tensorflow as tf
from keras_siglip2.models.naflex_vision_encoder import SigLIP2NaFlexVisionEncoder
model = SigLIP2NaFlexVisionEncoder(**{config})
model.load_weights({weights!r})
data = np.load({inputs!r})
x = {{k: data[k] for k in data.files}}
eager = model(x).numpy()
graph = tf.function(lambda x: model(x))({{k: tf.constant(v) for k, v in x.items()}}).numpy()
print(json.dumps({{"eager": eager.tolist(), "graph": graph.tolist()}}))
"""


def test_tensorflow_backend_matches(model, forward, inputs, tmp_path):
    weights = str(tmp_path / "naflex.weights.h5")
    model.save_weights(weights)
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = TF_SCRIPT.format(config=CONFIG, weights=weights, inputs=str(tmp_path / "inputs.npz"))
    result = run_in_backend("tensorflow", script)
    expected = np.asarray(forward(inputs))
    np.testing.assert_allclose(np.array(result["eager"]), expected, atol=TOL)
    np.testing.assert_allclose(np.array(result["graph"]), expected, atol=TOL)
