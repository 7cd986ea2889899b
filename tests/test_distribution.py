"""keras_siglip2.distribution: mesh parsing, the layout map and data / model parallel
forward and fit steps on 8 simulated CPU devices (a subprocess, since the XLA host device
count must be set before JAX starts)."""

import re

import numpy as np
import pytest

from tests.conftest import run_in_backend

# A tiny backbone whose sharded sizes split over 8 devices: width 64, 8 heads, MLP 128,
# vocabulary 1000 (= 8 x 125).
VISION = dict(type="fixed", patch_size=8, hidden_dim=64, num_layers=1, num_heads=8,
              intermediate_dim=128, image_size=32)
TEXT = dict(vocabulary_size=1000, hidden_dim=64, num_layers=1, num_heads=8,
            intermediate_dim=128, projection_dim=64, max_sequence_length=16)

EIGHT_DEVICES = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import json
import numpy as np
import jax
import keras
from keras_siglip2 import distribution as D
from keras_siglip2.convert.common import build_backbone

VISION, TEXT = __SIZES__
FIT = __FIT__
BATCH = 8
assert len(jax.devices()) == 8, jax.devices()


def build():
    keras.utils.set_random_seed(0)
    return build_backbone(VISION, TEXT)


rng = np.random.RandomState(0)
inputs = {
    "images": rng.uniform(-1, 1, (BATCH, 32, 32, 3)).astype("float32"),
    "token_ids": rng.randint(0, 1000, (BATCH, 16)).astype("int32"),
}
labels = (2 * np.eye(BATCH) - 1).astype("float32")


def sigmoid_rows(y_true, y_pred):
    # per-image row sum of -log_sigmoid(labels * logits); the mean over images is the
    # SigLIP sigmoid loss.
    return keras.ops.sum(keras.ops.softplus(-y_true * y_pred), axis=-1)


def fit_step(model):
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss={"vision_logits": sigmoid_rows, "text_logits": None})
    history = model.fit(inputs, {"vision_logits": labels}, batch_size=BATCH, epochs=1,
                        shuffle=False, verbose=0)
    return float(history.history["loss"][0]), [np.asarray(v) for v in model.weights]


reference = build()
# The text head starts at zero; give it values so that outputs depend on every weight.
head = reference.text_encoder.head.kernel
head.assign(rng.normal(0, 0.05, head.shape).astype("float32"))
weights = [np.asarray(v) for v in reference.weights]
ref_out = reference.predict(inputs, batch_size=BATCH, verbose=0)["vision_logits"]
if FIT:
    ref_loss, ref_weights = fit_step(reference)

result = {"paths": [v.path for v in reference.weights]}
for name, mesh in (("data", "batch=8"), ("2x4", "batch=2,model=4"), ("1x8", "batch=1,model=8")):
    distribution = D.setup_distribution(mesh, batch_size=BATCH, backbone=reference,
                                        set_global=False)
    with distribution.scope():
        model = build()
        model.set_weights(weights)
        specs, device_bytes, total_bytes = {}, 0, 0
        for v in model.weights:
            sharding = v.value.sharding
            spec = tuple(getattr(sharding, "spec", ()))
            specs[v.path] = list(spec) + [None] * (len(v.shape) - len(spec))
            total_bytes += v.value.nbytes
            device_bytes += v.value.addressable_shards[0].data.nbytes
        out = model.predict(inputs, batch_size=BATCH, verbose=0)["vision_logits"]
        if FIT:
            loss, new_weights = fit_step(model)
    result[name] = {
        "type": type(distribution).__name__,
        "specs": specs,
        "device_bytes": int(device_bytes),
        "total_bytes": int(total_bytes),
        "forward_diff": float(np.abs(out - ref_out).max()),
    }
    if FIT:
        result[name].update(
            loss_diff=abs(loss - ref_loss),
            weight_diff=max(float(np.abs(a - b).max()) for a, b in zip(new_weights, ref_weights)),
            weights_moved=max(float(np.abs(a - b).max()) for a, b in zip(new_weights, weights)),
        )
keras.distribution.set_distribution(None)
print(json.dumps(result))
"""

# Path -> expected sharding over the model axis (None = replicated dimension).
EXPECTED_SPECS = {
    "vision_encoder/patch_embedding/dense/kernel": [None, "model"],
    "vision_encoder/position_embedding/embeddings": [None, None, "model"],
    "vision_encoder/encoder_block_0/attention/qkv/kernel": [None, "model"],
    "vision_encoder/encoder_block_0/attention/out/kernel": ["model", None],
    "vision_encoder/encoder_block_0/mlp/fc1/kernel": [None, "model"],
    "vision_encoder/encoder_block_0/mlp/fc2/kernel": ["model", None],
    "vision_encoder/map_head/probe": [None, None, "model"],
    "vision_encoder/map_head/attention/query/kernel": [None, "model"],
    "vision_encoder/map_head/attention/key_value/kernel": [None, "model"],
    "vision_encoder/map_head/attention/out/kernel": ["model", None],
    "vision_encoder/map_head/mlp/fc1/kernel": [None, "model"],
    "text_encoder/token_embedding/embeddings": [None, "model"],
    "text_encoder/position_embedding/embeddings": [None, None, "model"],
    "text_encoder/encoder_block_0/attention/qkv/kernel": [None, "model"],
    "text_encoder/head/kernel": [None, "model"],
    "vision_encoder/encoder_block_0/attention/qkv/bias": [None],
    "vision_encoder/encoder_norm/gamma": [None],
    "logit_head/log_temperature": [None],
}


def run_on_eight_devices(fit):
    code = EIGHT_DEVICES.replace("__SIZES__", repr((VISION, TEXT))).replace("__FIT__", str(fit))
    return run_in_backend("jax", code)


@pytest.fixture(scope="module")
def eight_devices():
    return run_on_eight_devices(fit=False)


def test_layout_specs_and_per_device_bytes(eight_devices):
    for mesh in ("2x4", "1x8"):
        specs = eight_devices[mesh]["specs"]
        for path, expected in EXPECTED_SPECS.items():
            assert specs[path] == expected, (mesh, path, specs[path])
    specs = eight_devices["1x8"]["specs"]
    # Every kernel / embedding (every variable that is not a bias, a LayerNorm or t, b)
    # is sharded.
    small = re.compile(r".*/(bias|gamma|beta|log_temperature)$")
    for path, spec in specs.items():
        if not small.match(path):
            assert "model" in spec, (path, spec)
    one = eight_devices["1x8"]
    assert one["device_bytes"] <= one["total_bytes"] / 4, one
    # Data parallel replicates everything.
    assert all(s == [None] * len(s) for s in eight_devices["data"]["specs"].values())
    assert eight_devices["data"]["device_bytes"] == eight_devices["data"]["total_bytes"]


@pytest.mark.parametrize("mesh", ["data", "2x4", "1x8"])
def test_forward_matches_one_device(eight_devices, mesh):
    result = eight_devices[mesh]
    expected_type = "SigLIP2DataParallel" if mesh == "data" else "SigLIP2ModelParallel"
    assert result["type"] == expected_type
    assert result["forward_diff"] <= 1e-5, result


@pytest.mark.large
def test_sigmoid_loss_fit_step_matches_one_device():
    """One SGD step of `fit` with the sigmoid loss on the backbone's logits: same loss
    and updated weights on every mesh as on one device (within 1e-5)."""
    results = run_on_eight_devices(fit=True)
    for mesh in ("data", "2x4", "1x8"):
        result = results[mesh]
        assert result["forward_diff"] <= 1e-5, (mesh, result["forward_diff"])
        assert result["loss_diff"] <= 1e-5, (mesh, result["loss_diff"])
        assert result["weight_diff"] <= 1e-5, (mesh, result["weight_diff"])
        assert result["weights_moved"] > 1e-4, (mesh, result["weights_moved"])  # a real step


def test_every_backbone_path_matches_at_most_one_rule(eight_devices):
    from keras_siglip2.distribution import LAYOUT_RULES

    for path in eight_devices["paths"]:
        hits = [p for p, _ in LAYOUT_RULES if re.fullmatch(p, path)]
        assert len(hits) <= 1, (path, hits)


# ----------------------------------------------------------------- in this process


def fake_mesh(shape, names=("batch", "model")):
    import keras

    return keras.distribution.DeviceMesh(shape, list(names), list(range(int(np.prod(shape)))))


def test_make_mesh_parses_and_infers():
    from keras_siglip2.distribution import make_mesh

    devices = list(range(8))
    assert tuple(make_mesh("batch=4,model=2", devices).shape) == (4, 2)
    assert tuple(make_mesh("model=2", devices).shape) == (4, 2)
    assert tuple(make_mesh("batch=-1,model=8", devices).shape) == (1, 8)
    assert tuple(make_mesh("batch=8", devices).shape) == (8, 1)
    assert list(make_mesh("batch=8", devices).axis_names) == ["batch", "model"]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("batch=3,model=2", "needs batch x model = 3 x 2 = 6 devices, but 8"),
        ("model=3", "8 devices cannot be split"),
        ("data=4,model=2", "unknown axis name 'data'"),
        ("batch=4,model=two", "must be a positive integer"),
        ("batch=0,model=8", "must be a positive integer"),
        ("batch4", "must be NAME=SIZE"),
        ("batch=2,batch=4", "given twice"),
    ],
)
def test_make_mesh_errors(spec, match):
    from keras_siglip2.distribution import make_mesh

    with pytest.raises(ValueError, match=re.escape(match)):
        make_mesh(spec, list(range(8)))


def test_layout_map_unknown_axis_names():
    from keras_siglip2 import SigLIP2Backbone

    mesh = fake_mesh((2, 4), ("data", "model"))
    with pytest.raises(ValueError, match="data_parallel_dim_name.*'batch' is not an axis"):
        SigLIP2Backbone.get_layout_map(mesh)
    with pytest.raises(ValueError, match="model_parallel_dim_name.*'mp' is not an axis"):
        SigLIP2Backbone.get_layout_map(mesh, model_parallel_dim_name="mp",
                                       data_parallel_dim_name="data")
    layout_map = SigLIP2Backbone.get_layout_map(mesh, data_parallel_dim_name="data")
    assert tuple(layout_map["vision_encoder/encoder_block_0/mlp/fc1/kernel"].axes) == (
        None, "model")


# Variable paths of SigLIP2Pretrainer's training-only parts (LocCa decoder, SILC / TIPS
# heads, EMA teacher) and the sharding each gets.
TRAINING_PART_SPECS = {
    "teacher_vision_encoder/encoder_block_3/attention/qkv/kernel": (None, "model"),
    "teacher_vision_encoder/map_head/mlp/fc2/kernel": ("model", None),
    "teacher_vision_encoder/patch_embedding/dense/kernel": (None, "model"),
    "teacher/vision_encoder/encoder_block_0/attention/out/kernel": ("model", None),
    "locca_decoder/token_embedding/embeddings": (None, "model"),
    "locca_decoder/position_embedding/embeddings": (None, None, "model"),
    "locca_decoder/decoder_block_0/self_attention/qkv/kernel": (None, "model"),
    "locca_decoder/decoder_block_0/cross_attention/query/kernel": (None, "model"),
    "locca_decoder/decoder_block_0/cross_attention/key_value/kernel": (None, "model"),
    "locca_decoder/decoder_block_0/cross_attention/out/kernel": ("model", None),
    "locca_decoder/decoder_block_1/mlp/fc1/kernel": (None, "model"),
    "locca_decoder/image_projection/kernel": (None, "model"),
    "locca_decoder/logits/kernel": (None, "model"),
    "silc_head/mlp_0/kernel": (None, "model"),
    "silc_head/last_kernel": (None, "model"),
    "teacher_tips_head/mlp_2/kernel": (None, "model"),
    "teacher_tips_head/last_kernel": (None, "model"),
}
REPLICATED = (
    "locca_decoder/decoder_block_0/mlp/fc1/bias",
    "locca_decoder/decoder_block_0/self_attention_norm/gamma",
    "locca_decoder/mask_embedding",
    "silc_head/mlp_0/bias",
    "sig_lip2_pretrainer/mask_token",
    "sig_lip2_pretrainer/silc_center",
    "teacher_vision_encoder/encoder_norm/gamma",
)


def test_layout_map_covers_teacher_decoder_and_heads():
    from keras_siglip2.distribution import get_layout_map

    layout_map = get_layout_map(fake_mesh((2, 4)))
    for path, spec in TRAINING_PART_SPECS.items():
        assert layout_map[path] is not None, path
        assert tuple(layout_map[path].axes) == spec, path
    for path in REPLICATED:
        assert layout_map[path] is None, path


def test_model_parallel_replicates_a_variable_it_cannot_shard():
    """A sharded dimension the model axis does not divide (the LocCa output kernel of a
    vocabulary 1801 = 777 tokens + 1024 location bins, on model=2) is replicated with
    one warning naming the variable; a divisible one stays sharded; a spec of the wrong
    rank is an error."""
    import warnings

    from keras_siglip2.distribution import SigLIP2ModelParallel, get_layout_map

    layout_map = get_layout_map(fake_mesh((4, 2)))
    distribution = SigLIP2ModelParallel(layout_map=layout_map, batch_dim_name="batch")

    class Variable:
        path = "locca_decoder/logits/kernel"
        shape = (64, 1801)
        _layout = None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tuple(distribution.get_variable_layout(Variable()).axes) == (None, None)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert "'locca_decoder/logits/kernel' of shape (64, 1801) is replicated" in messages[0]
    assert "1801 is not divisible by the 2 devices of axis 'model'" in messages[0]
    Variable.shape = (64, 1802)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tuple(distribution.get_variable_layout(Variable()).axes) == (None, "model")
    assert not caught
    Variable.shape = (1802,)
    with pytest.raises(ValueError, match="has rank 2, but the variable has shape"):
        distribution.get_variable_layout(Variable())


def test_divisibility_errors():
    from keras_siglip2.distribution import check_divisibility

    config = {"vision_encoder": {"config": dict(VISION)}, "text_encoder": {"config": dict(TEXT)}}
    check_divisibility(fake_mesh((1, 8)), 8, config)  # fits
    with pytest.raises(ValueError, match=r"global batch size 6 must be divisible by the 'batch' axis"):
        check_divisibility(fake_mesh((4, 2)), 6, config)
    heads6 = {**config, "vision_encoder": {"config": {**VISION, "num_heads": 6, "hidden_dim": 48}}}
    with pytest.raises(ValueError, match=r"must divide the attention heads of the vision_encoder \(num_heads=6\)"):
        check_divisibility(fake_mesh((2, 4)), 8, heads6)
    # A released preset by name (its architecture; nothing downloaded): B/16 has 12 heads.
    check_divisibility(fake_mesh((2, 4)), 8, "siglip2_base_patch16_224")
    with pytest.raises(ValueError, match=r"attention heads of the vision_encoder \(num_heads=12\)"):
        check_divisibility(fake_mesh((1, 8)), 8, "siglip2_base_patch16_224")
    mlp = {**config, "text_encoder": {"config": {**TEXT, "intermediate_dim": 100}}}
    with pytest.raises(ValueError, match=r"text_encoder \(intermediate_dim=100\)"):
        check_divisibility(fake_mesh((1, 8)), 8, mlp)
