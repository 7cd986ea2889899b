"""SigLIP2NaFlexVisionEncoder against big_vision's `naflex_vit` (fixture
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
# (192, 64) => patch 8, learned 4 x 4 grid (its inputs hold 24 patches per image; the
# converted model keeps the default sequence length of the releases, 256).
CONFIG = dict(
    patch_size=8,
    hidden_dim=64,
    num_layers=2,
    num_heads=4,
    intermediate_dim=128,
    position_grid_size=4,
    max_num_patches=256,
)
TOL = 1e-5


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
def backbone():
    """The fixture's checkpoint through `from_big_vision` (whose own test,
    tests/convert/test_naflex.py, checks the whole backbone)."""
    from keras_siglip2.convert import from_big_vision

    return from_big_vision(fixture_path("naflex_b"))


@pytest.fixture(scope="module")
def model(backbone):
    return backbone.vision_encoder


@pytest.fixture(scope="module")
def forward(model):
    """The pooled output under jax.jit (one compilation per input shape)."""
    return jax.jit(lambda x: model(x))


def test_matches_big_vision_fixture(model, forward, fixture, inputs):
    pooled = np.asarray(forward(inputs))
    zimg_diff = np.abs(normalize(pooled) - fixture["out/zimg"]).max()
    tokens = np.asarray(jax.jit(model.get_tokens)(inputs))
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
        ({k: v[:, :0] for k, v in x.items()}, "N = 0"),
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


def test_bad_values_under_jit_never_give_nan(forward, inputs):
    """Under jit the values cannot be checked (no error is possible there), but bad
    positions / masks must still not produce NaN or inf; the images whose inputs are
    untouched keep their embeddings (within 1e-5)."""
    base = np.asarray(forward(inputs))
    mask, pos = inputs["patch_mask"], inputs["patch_positions"]
    negative = np.array(pos)
    negative[0, :3] = ((-5, 3), (-1, -1), (2, -7))  # image 0: positions outside the grid
    huge = np.array(pos)
    huge[4, 2] = (10**6, 3)  # image 4: a position far outside the grid
    no_real = np.array(mask)
    no_real[2] = 0  # image 2: no real patch at all
    disagree = np.array(mask)
    disagree[3, -1] = 1 - disagree[3, -1]  # image 3: mask disagrees with the positions
    nan_padding = np.array(inputs["pixel_patches"])
    nan_padding[1, mask[1] == 0] = np.nan  # image 1: NaN in its padding (ignored)
    cases = {
        "negative positions": (bad(inputs, patch_positions=negative), 0),
        "huge position": (bad(inputs, patch_positions=huge), 4),
        "all-padding image": (bad(inputs, patch_mask=no_real), 2),
        "mask vs positions": (bad(inputs, patch_mask=disagree), 3),
    }
    assert (mask[1] == 0).any()
    for name, (case, b) in cases.items():
        out = np.asarray(forward(case))
        assert np.isfinite(out).all(), name
        others = np.arange(len(out)) != b
        np.testing.assert_allclose(out[others], base[others], atol=TOL, err_msg=name)
    out = np.asarray(forward(bad(inputs, pixel_patches=nan_padding)))
    np.testing.assert_allclose(out, base, atol=TOL)


def test_config_round_trip(model, forward, inputs):
    config = model.get_config()
    for key, value in CONFIG.items():
        assert config[key] == value
    clone = SigLIP2NaFlexVisionEncoder.from_config(config)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(
        np.asarray(jax.jit(clone)(inputs)), np.asarray(forward(inputs)), atol=TOL
    )
    serialized = keras.saving.serialize_keras_object(model)
    assert serialized["registered_name"] == "keras_siglip2>SigLIP2NaFlexVisionEncoder"
    assert model.hidden_dim == 64 and model.patch_size == 8 and model.max_num_patches == 256
    assert sorted(model.input) == ["patch_mask", "patch_positions", "pixel_patches"]


def test_in_backbone(backbone, model, fixture, inputs):
    """The whole backbone on the NaFlex inputs (compiled here; the eager call runs on
    the TensorFlow backend below), and its input checks."""
    assert backbone.vision_encoder is model
    assert backbone.vision_input_names == ("pixel_patches", "patch_positions", "patch_mask")
    assert backbone.embedding_dim == 64
    x = {**inputs, "token_ids": fixture["in/token_ids"]}
    out = jax.jit(backbone)(x)
    np.testing.assert_allclose(np.asarray(out["vision_logits"]), fixture["out/logits"], atol=TOL)
    np.testing.assert_allclose(np.asarray(out["text_logits"]), fixture["out/logits"].T, atol=TOL)
    with pytest.raises(ValueError, match="no real patch"):
        backbone.get_vision_embeddings({**inputs, "patch_mask": np.zeros((5, 24), "int32")})
    with pytest.raises(ValueError, match="do not fill it"):
        far = np.array(inputs["patch_positions"])
        far[0, 0] = (30, 30)
        backbone({**x, "patch_positions": far})
    with pytest.raises(ValueError, match=r"missing.*patch_positions"):
        backbone({k: v for k, v in x.items() if k != "patch_positions"})


def test_preset_round_trip_is_bit_identical(backbone, inputs, fixture, tmp_path):
    import keras_hub

    from keras_siglip2.models import SigLIP2Backbone

    preset = str(tmp_path / "naflex_preset")
    backbone.save_to_preset(preset)
    x = {**inputs, "token_ids": fixture["in/token_ids"]}
    loaded = [SigLIP2Backbone.from_preset(preset), keras_hub.models.Backbone.from_preset(preset)]
    for restored in loaded:
        assert type(restored) is SigLIP2Backbone
        assert isinstance(restored.vision_encoder, SigLIP2NaFlexVisionEncoder)
        assert restored.vision_encoder.get_config() == backbone.vision_encoder.get_config()
        assert restored.text_encoder.get_config() == backbone.text_encoder.get_config()
        for a, b in zip(backbone.weights, restored.weights, strict=True):
            assert a.path == b.path
            np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value), err_msg=a.path)
    # Same program, same weights: the same bits.
    expected, got = jax.jit(backbone)(x), jax.jit(loaded[1])(x)
    for key in expected:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]))
    # The NaFlex image converter travels with the preset.
    from keras_siglip2.preprocessing import SigLIP2NaFlexImageConverter

    SigLIP2NaFlexImageConverter(patch_size=8, max_num_patches=24).save_to_preset(preset)
    for cls in (SigLIP2NaFlexImageConverter, keras_hub.layers.ImageConverter):
        converter = cls.from_preset(preset)
        assert type(converter) is SigLIP2NaFlexImageConverter
        assert (converter.patch_size, converter.max_num_patches) == (8, 24)


def test_mixed_bfloat16(backbone, fixture, inputs):
    """Under mixed_bfloat16 the variables (position grid included) stay float32, the
    towers compute in bfloat16, the logits in float32 inside the head and come out in
    bfloat16 (keras-hub's convention); the result is finite and
    close to float32 (bfloat16 keeps 8 significant bits, relative step 2^-8 = 0.004:
    measured |diff| 0.003 on the unit-norm embedding and 0.03 on the logits (exp(t) =
    10); bounds 0.01 and 0.1)."""
    from keras_siglip2.models import SigLIP2Backbone

    config = backbone.get_config()
    mixed = SigLIP2Backbone.from_config({**config, "dtype": "mixed_bfloat16"})
    mixed.set_weights(backbone.get_weights())
    encoder = mixed.vision_encoder
    assert encoder.position_grid.grid.dtype == "float32"
    assert encoder.position_grid.compute_dtype == "bfloat16"
    assert encoder.patch_embedding.compute_dtype == "bfloat16"
    x = {**inputs, "token_ids": fixture["in/token_ids"]}
    run = jax.jit(lambda x: (mixed(x), mixed.get_vision_embeddings(x)))
    out, pooled = run(x)
    assert pooled.dtype == "bfloat16" and out["vision_logits"].dtype == "bfloat16"
    zimg = normalize(np.asarray(pooled, "float32"))
    print(
        "mixed_bfloat16: max |zimg diff| = %.3g, max |logit diff| = %.3g"
        % (np.abs(zimg - fixture["out/zimg"]).max(),
           np.abs(np.asarray(out["vision_logits"], "float32") - fixture["out/logits"]).max())
    )
    assert np.isfinite(zimg).all()
    np.testing.assert_allclose(zimg, fixture["out/zimg"], atol=0.01, rtol=0)
    np.testing.assert_allclose(
        np.asarray(out["vision_logits"], "float32"), fixture["out/logits"], atol=0.1, rtol=0
    )


def test_backbone_compiles_once_per_sequence_length(backbone):
    """Images of any shapes at one sequence length share one XLA program."""
    from keras_siglip2.preprocessing import SigLIP2NaFlexImageConverter

    traces = []

    @jax.jit
    def logits(x):
        traces.append(x["patch_mask"].shape)
        return backbone(x)["vision_logits"]

    rng = np.random.default_rng(7)
    token_ids = rng.integers(0, 1000, (2, 16)).astype("int32")
    converter = SigLIP2NaFlexImageConverter(patch_size=8, max_num_patches=24)
    batches = [[(40, 90), (64, 64)], [(200, 20), (17, 33)], [(8, 300), (300, 8)]]
    grids = set()
    for shapes in batches:
        images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in shapes]
        x = converter(images)
        grids |= {tuple(g) for g in np.asarray(x["patch_positions"]).max(1) + 1}
        assert np.isfinite(np.asarray(logits({**x, "token_ids": token_ids}))).all()
    assert len(grids) >= 5  # many different patch grids ...
    assert traces == [(2, 24)]  # ... one program
    x = converter(images, max_num_patches=40)
    logits({**x, "token_ids": token_ids})
    assert traces == [(2, 24), (2, 40)]


TF_SCRIPT = """
import json, numpy as np, tensorflow as tf
from keras_siglip2.convert import from_big_vision
backbone = from_big_vision({path!r})
data = np.load({path!r})
x = {{
    "pixel_patches": data["in/patches"],
    "patch_positions": np.stack([data["in/yidx"], data["in/xidx"]], -1),
    "patch_mask": data["in/ptype"],
    "token_ids": data["in/token_ids"],
}}
eager = backbone(x)  # eager, input checks included
graph = tf.function(backbone)({{k: tf.constant(v) for k, v in x.items()}})
pooled = tf.function(backbone.get_vision_embeddings)({{k: tf.constant(v) for k, v in x.items()}})
print(json.dumps({{
    "eager": eager["vision_logits"].numpy().tolist(),
    "graph": graph["vision_logits"].numpy().tolist(),
    "pooled": pooled.numpy().tolist(),
}}))
"""


def test_tensorflow_backend_matches(fixture):
    """Eager and tf.function backbone on the TensorFlow backend."""
    result = run_in_backend("tensorflow", TF_SCRIPT.format(path=str(fixture_path("naflex_b"))))
    np.testing.assert_allclose(np.array(result["eager"]), fixture["out/logits"], atol=TOL)
    np.testing.assert_allclose(np.array(result["graph"]), fixture["out/logits"], atol=TOL)
    np.testing.assert_allclose(normalize(result["pooled"]), fixture["out/zimg"], atol=TOL)
