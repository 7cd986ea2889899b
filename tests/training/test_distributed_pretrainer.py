"""`SigLIP2Pretrainer` under `keras.distribution` (JAX; paper sec. 2: data parallel over
the batch, parameters sharded over a model axis): one `fit` step with every loss on
(sigmoid, LocCa, SILC, TIPS; teacher initialized) under DataParallel over 8 devices and
ModelParallel meshes 2x4 and 1x8 equals the step on one device (loss terms, student,
teacher and optimizer variables within 1e-5); the layout map shards the towers, the
LocCa decoder, the SILC / TIPS heads and the teacher copies; with the batch split over
more than one device the sigmoid term is the ring loss of `losses.distributed`, with the
plain loss's value and gradients (1e-5); batches and models the mesh does not divide
raise a ValueError before any work; `siglip2 train --mesh` builds the pretrainer under
the distribution.

The 8 simulated CPU devices need XLA_FLAGS set before JAX starts, so everything on them
runs in one subprocess (`distributed_pretrainer_steps.py`) whose JSON report the tests
read. Compiling the whole train step takes tens of seconds on a small CPU (it is the
same size for a tiny model), so the tests comparing `fit` steps (4 compilations) and
running `siglip2 train` are `large`; the default run builds the pretrainer under each
layout (shardings, bytes), checks the sigmoid term's form, value and gradients, and the
errors. The step's random choices ("tips_mask", "locca_parallel") are given in the batch:
drawn from the seed generator, they would be the same on every layout too (the draws
do not depend on the sharding), but giving them keeps the comparison independent of it.
"""

import re

import pytest

from tests.conftest import run_in_backend

TOLERANCE = 1e-5
TERMS = ("sigmoid", "locca", "silc", "tips")

SUBPROCESS = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
from tests.training.distributed_pretrainer_steps import main
main({cache!r}, {workdir!r}, parts={parts!r}, fit_meshes={fit_meshes!r})
"""


def run_on_eight_devices(tmp_path, parts, fit_meshes=()):
    code = SUBPROCESS.format(cache=str(tmp_path / "jax_cache"), workdir=str(tmp_path),
                             parts=tuple(parts), fit_meshes=tuple(fit_meshes))
    return run_in_backend("jax", code)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Pretrainers built under each layout (no train step: each would cost a
    compilation of the whole step, see `fitted`)."""
    return run_on_eight_devices(tmp_path_factory.mktemp("layouts"), ["layouts"])["layouts"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """As `layouts`, plus one `fit` step on one device and under each layout."""
    return run_on_eight_devices(tmp_path_factory.mktemp("fitted"), ["layouts"],
                                fit_meshes=("data", "2x4", "1x8"))["layouts"]


# Sharding over the model axis of the pretrainer's training-only parts (and a few tower
# variables) as created under ModelParallel; optimizer slots follow their variable.
SHARDED = {
    "teacher_vision_encoder/encoder_block_0/attention/qkv/kernel": [None, "model"],
    "teacher_vision_encoder/encoder_block_0/mlp/fc2/kernel": ["model", None],
    "teacher_vision_encoder/map_head/probe": [None, None, "model"],
    "teacher_vision_encoder/patch_embedding/dense/kernel": [None, "model"],
    "teacher_vision_encoder/position_embedding/embeddings": [None, None, "model"],
    "locca_decoder/token_embedding/embeddings": [None, "model"],
    "locca_decoder/decoder_block_0/self_attention/qkv/kernel": [None, "model"],
    "locca_decoder/decoder_block_0/cross_attention/key_value/kernel": [None, "model"],
    "locca_decoder/decoder_block_0/cross_attention/out/kernel": ["model", None],
    "locca_decoder/decoder_block_0/mlp/fc1/kernel": [None, "model"],
    "locca_decoder/logits/kernel": [None, "model"],
    "silc_head/mlp_0/kernel": [None, "model"],
    "silc_head/last_kernel": [None, "model"],
    "tips_head/mlp_2/kernel": [None, "model"],
    "teacher_silc_head/mlp_1/kernel": [None, "model"],
    "teacher_tips_head/last_kernel": [None, "model"],
    "vision_encoder/encoder_block_0/attention/out/kernel": ["model", None],
    "text_encoder/head/kernel": [None, "model"],
}
SMALL = re.compile(
    r"(.*/)?(bias|gamma|beta|log_temperature|mask_embedding|mask_token|silc_center|"
    r"tips_center|self_distillation_active|vision_resolution)$"
)


@pytest.mark.large
@pytest.mark.parametrize("mesh", ["data", "2x4", "1x8"])
def test_fit_step_matches_one_device(fitted, mesh):
    """Loss terms, updated student, teacher (EMA after the step) and every other
    variable, and the optimizer state (step, Adam moments) within 1e-5; the step's
    sigmoid term was the ring where the batch is split (data, 2x4)."""
    layouts = fitted
    reference = layouts["reference"]["logs"]
    for term in TERMS:  # every loss on, SILC / TIPS switched on (weights 1, 0.25)
        assert reference[f"{term}_loss"] > 0.1, reference
    assert (reference["silc_weight"], reference["tips_weight"]) == (1.0, 0.25)
    result = layouts[mesh]
    assert result["type"] == ("SigLIP2DataParallel" if mesh == "data" else "SigLIP2ModelParallel")
    assert set(result["log_diffs"]) == set(reference)
    for key, diff in result["log_diffs"].items():
        assert diff <= TOLERANCE, (mesh, key, diff)
    for key in ("student_diff", "teacher_diff", "non_trainable_diff", "optimizer_diff"):
        assert result[key] <= TOLERANCE, (mesh, key, result[key])
    # A real step: Adam moves the student by ~lr = 1e-3, the EMA (momentum 0.9) the
    # teacher by a tenth of it.
    assert result["student_moved"] > 5e-4, result["student_moved"]
    assert result["teacher_moved"] > 5e-5, result["teacher_moved"]
    assert result["fit_sigmoid_mode"] == ("plain" if mesh == "1x8" else "distributed")


def test_layout_shards_teacher_decoder_and_heads(layouts):
    for mesh in ("2x4", "1x8"):
        specs, slots = layouts[mesh]["specs"], layouts[mesh]["optimizer_specs"]
        for path, expected in SHARDED.items():
            assert specs[path] == expected, (mesh, path, specs[path])
        # Adam's moments of each variable carry its sharding.
        for path, spec in specs.items():
            for slot in ("momentum", "velocity"):
                name = "siglip2_adamw/" + path.replace("/", "_") + "_" + slot
                if name in slots:
                    assert slots[name] == spec, (mesh, name, slots[name], spec)
        for path in SHARDED:  # (the slots are named after the variable path)
            if not path.startswith("teacher"):  # (the teacher has no optimizer slots)
                assert f"siglip2_adamw/{path.replace('/', '_')}_momentum" in slots, path
    specs = layouts["1x8"]["specs"]
    # Every variable that is not a bias / LayerNorm / small vector is sharded, whatever
    # part of the pretrainer it belongs to.
    for path, spec in specs.items():
        if not SMALL.match(path):
            assert "model" in spec, (path, spec)
    assert sum(p.startswith("teacher_") for p in specs) > 20
    one = layouts["1x8"]
    assert one["device_bytes"] <= one["total_bytes"] / 4, one
    data = layouts["data"]
    assert all(s == [None] * len(s) for s in data["specs"].values())
    assert data["device_bytes"] == data["total_bytes"]


@pytest.mark.parametrize("mesh", ["data", "2x4", "1x8"])
def test_sigmoid_term_uses_the_ring_when_the_batch_is_split(layouts, mesh):
    """The pretrainer's sigmoid term on the (pretrainer's) embeddings of a batch split
    over the batch axis: over 8 (data) or 2 (2x4) devices the ring loss (collective
    permutes in the program), with batch axis 1 (1x8) and on one device the plain
    loss. Value and gradients (zimg, ztxt, t, b) equal the plain one-device loss's
    within 1e-5. (`test_fit_step_matches_one_device` checks the fit step picks it.)"""
    result = layouts[mesh]
    expected = "plain" if mesh == "1x8" else "distributed"
    assert result["sigmoid_mode"] == expected, result
    if expected == "distributed":
        assert result["permutes"] > 0, result["permutes"]
    else:
        assert result["permutes"] == 0, result["permutes"]
    reference = layouts["reference"]
    assert reference["sigmoid_mode"] == "plain" and reference["permutes"] == 0
    assert reference["sigmoid_term"] > 1.0
    assert result["sigmoid_term_diff"] <= TOLERANCE, result["sigmoid_term_diff"]
    assert reference["sigmoid_grad_scale"] > 1e-2
    assert result["sigmoid_grad_diff"] <= TOLERANCE, result["sigmoid_grad_diff"]


def test_bad_meshes_fail_before_any_work(layouts):
    errors = layouts["errors"]
    assert "global batch size 6 must be divisible by the 'batch' axis of the mesh (4 devices)" \
        in errors["setup_batch"]
    assert "must divide the attention heads of the vision_encoder (num_heads=4)" \
        in errors["setup_heads"]
    for name, devices in (("fit_batch_data", 8), ("fit_batch_2x4", 4)):
        assert "global batch size 6 of an input of shape (6, " in errors[name], errors[name]
        assert f"'batch' axis of the mesh ({devices} devices)" in errors[name], errors[name]
        assert errors[name + "_traced"] is False  # the train step was never traced
    assert "`sigmoid_loss` must be one of" in errors["bad_mode"] and "'ring'" in errors["bad_mode"]


def test_vocabulary_the_model_axis_does_not_divide_is_replicated(layouts):
    """A LocCa vocabulary of 1020 on a model axis of 8 (as 1801 = 777 + 1024 bins on
    model=2): the output kernel is replicated (every device holds all of it) with one
    warning naming it, instead of failing."""
    odd = layouts["odd_vocabulary"]
    assert odd["shape"] == [64, 1020]
    assert odd["device_shape"] == [64, 1020]
    assert all(axis is None for axis in odd["spec"]), odd["spec"]
    assert len(odd["warnings"]) == 1, odd["warnings"]
    message = odd["warnings"][0]
    assert "'locca_decoder/logits/kernel' of shape (64, 1020) is replicated" in message
    assert "1020 is not divisible by the 8 devices of axis 'model'" in message


@pytest.mark.large
def test_train_command_builds_the_pretrainer_under_the_mesh(tmp_path):
    """`siglip2 train --mesh batch=4,model=2`, 2 steps of batch 8 on a tiny preset: the
    pretrainer is built and fit under SigLIP2ModelParallel (teacher, decoder and heads
    sharded), its sigmoid term is the ring, the 80 % curriculum switch happens under
    the distribution, and the run saves its preset."""
    result = run_on_eight_devices(tmp_path, ["train_command"])["train_command"]
    assert result["exit_code"] == 0
    summary = result["summary"]
    assert summary["steps"] == 2 and summary["mesh"] == "batch=4,model=2"
    assert summary["losses"] == list(TERMS)
    assert all(v is not None and v == v for v in summary["final_losses"].values())
    assert result["distribution"] == "SigLIP2ModelParallel"
    assert result["sigmoid_mode"] == "distributed"
    assert result["stage"] == 1.0  # SILC / TIPS switched on at 80 % of the steps
    specs = result["specs"]
    for path in ("teacher_vision_encoder/encoder_block_0/attention/qkv/kernel",
                 "locca_decoder/logits/kernel", "silc_head/last_kernel",
                 "teacher_tips_head/mlp_0/kernel", "text_encoder/head/kernel"):
        assert "model" in specs[path], (path, specs[path])
    assert (tmp_path / "run" / "preset" / "config.json").is_file()


# ----------------------------------------------------------------- in this process


def fake_distribution(shape, names=("batch", "model")):
    import keras
    import numpy as np

    names = list(names[: len(shape)])
    mesh = keras.distribution.DeviceMesh(shape, names, list(range(int(np.prod(shape)))))
    if len(shape) == 1:
        return keras.distribution.DataParallel(device_mesh=mesh)
    layout_map = keras.distribution.LayoutMap(mesh)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name=names[0])


def test_sigmoid_loss_form_follows_the_distribution():
    import keras

    from keras_siglip2.training.losses.distributed import (
        batch_axis_size,
        resolve_sigmoid_loss_mode,
    )

    assert batch_axis_size() == 1
    assert resolve_sigmoid_loss_mode("auto") == "plain"
    assert resolve_sigmoid_loss_mode("auto", chunk_size=4) == "chunked"
    jax = keras.backend.backend() == "jax"
    for shape, split in (((4,), True), ((2, 4), True), ((1, 8), False)):
        with fake_distribution(shape).scope():
            assert batch_axis_size() == shape[0]
            expected = "distributed" if split and jax else "plain"
            assert resolve_sigmoid_loss_mode("auto") == expected, shape
            assert resolve_sigmoid_loss_mode("plain") == "plain"
            assert resolve_sigmoid_loss_mode("chunked") == "chunked"
    assert resolve_sigmoid_loss_mode("distributed") == "distributed"
    with pytest.raises(ValueError, match=r"`sigmoid_loss` must be one of .*got 'ring'"):
        resolve_sigmoid_loss_mode("ring")


def test_pretrainer_sigmoid_loss_option_values_and_config():
    """On one device every form gives the plain loss's value and gradients; the option
    survives get_config / from_config; the pretrainer's call goes through it."""
    import keras
    import numpy as np

    from keras_siglip2.training.losses.sigmoid import sigmoid_loss
    from keras_siglip2.training.pretrainer import SigLIP2Pretrainer
    from tests.training.pretrainer_helpers import tiny_backbone, tiny_batch

    backbone = tiny_backbone()
    rng = np.random.RandomState(0)
    zimg, ztxt = rng.normal(size=(2, 6, 4)).astype("float32")
    args = (zimg, ztxt, np.float32(1.0), np.float32(-2.0))
    grad = None
    if keras.backend.backend() == "jax":
        import jax

        grad = lambda f: jax.grad(f, argnums=(0, 1, 2, 3))(*args)  # noqa: E731
    expected = float(sigmoid_loss(*args))
    for mode in ("auto", "plain", "chunked", "distributed"):
        p = SigLIP2Pretrainer(backbone, decoder=None, self_distillation=False,
                              masked_prediction=False, sigmoid_loss=mode,
                              chunk_size=4 if mode == "chunked" else None)
        assert p.get_config()["sigmoid_loss"] == mode
        fn = p.sigmoid_loss_fn
        assert abs(float(fn(*args)) - expected) <= 1e-6, mode
        assert fn.last_mode == ("plain" if mode == "auto" else mode)
        if grad is not None:
            for a, b in zip(grad(fn), grad(sigmoid_loss)):
                np.testing.assert_allclose(a, b, atol=1e-6, err_msg=mode)
    assert SigLIP2Pretrainer.from_config(p.get_config()).sigmoid_loss_fn.mode == "distributed"
    p.sigmoid_loss_fn.last_mode = None
    values = [[v.value for v in p.trainable_variables],
              [v.value for v in p.non_trainable_variables]]
    call = lambda *a: p.stateless_call(*a)[0]["sigmoid_loss"]  # noqa: E731
    if keras.backend.backend() == "jax":  # jitted: much faster than op by op
        call = jax.jit(call)
    value = call(*values, tiny_batch(locca=False, local=False))
    assert p.sigmoid_loss_fn.last_mode == "distributed" and float(value) > 0.1
