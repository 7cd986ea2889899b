"""The ring (chunked, all-device) sigmoid loss: same value and gradients as the plain
loss on one device, and no device holds more than (B_local, B_local) logits. Runs on 8
simulated CPU devices in a subprocess (the device count is fixed when JAX starts)."""

import numpy as np
import pytest

from tests.conftest import run_in_backend

EIGHT_DEVICES = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import json
import re
import numpy as np
import jax
import keras
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from keras_siglip2.training.losses.distributed import distributed_sigmoid_loss
from keras_siglip2.training.losses.sigmoid import sigmoid_loss

B, D = 512, 16  # B_local = 64 (1-D mesh) or 256 (2 x 4 mesh); D < B_local
rng = np.random.RandomState(0)


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


zimg = unit(rng.normal(size=(B, D)))
ztxt = unit(0.6 * zimg + 0.4 * unit(rng.normal(size=(B, D))))  # pairs are similar
t, b = np.float32(np.log(10.0)), np.float32(-5.0)
ARGNUMS = (0, 1, 2, 3)


def largest_f32_array(compiled):
    # Elements of the largest float32 array in the per-device (SPMD-partitioned) program.
    shapes = re.findall(r"f32\[([\d,]*)\]", compiled.as_text())
    return max(int(np.prod([int(d) for d in s.split(",") if d])) for s in shapes)


reference = jax.jit(jax.value_and_grad(sigmoid_loss, argnums=ARGNUMS))
ref_loss, ref_grads = reference(zimg, ztxt, t, b)
result = {}
for name, shape, axes in (("1x8", (8,), ("batch",)), ("2x4", (2, 4), ("batch", "model"))):
    mesh = Mesh(np.array(jax.devices()).reshape(shape), axes)
    sharded = NamedSharding(mesh, P("batch"))
    args = (jax.device_put(zimg, sharded), jax.device_put(ztxt, sharded), t, b)
    ring = jax.jit(jax.value_and_grad(
        lambda *a: distributed_sigmoid_loss(*a, mesh=mesh, axis_name="batch"),
        argnums=ARGNUMS))
    loss, grads = ring(*args)
    compiled = ring.lower(*args).compile()
    # The plain loss on the same sharded inputs: XLA gathers the texts, (b, B) logits.
    naive = reference.lower(*args).compile()
    result[name] = {
        "b_local": B // shape[0],
        "loss": float(loss),
        "loss_diff": abs(float(loss) - float(ref_loss)),
        "grad_diffs": [float(np.abs(np.asarray(g) - np.asarray(r)).max())
                       for g, r in zip(grads, ref_grads)],
        "grad_scales": [float(np.abs(np.asarray(r)).max()) for r in ref_grads],
        "largest": largest_f32_array(compiled),
        "naive_largest": largest_f32_array(naive),
        "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
        "naive_temp_bytes": int(naive.memory_analysis().temp_size_in_bytes),
    }

# Under a Keras distribution the mesh and batch axis come from it.
distribution = keras.distribution.DataParallel(devices=jax.devices())
with distribution.scope():
    loss = jax.jit(distributed_sigmoid_loss)(zimg, ztxt, t, b)
result["keras_default_mesh_diff"] = abs(float(loss) - float(ref_loss))

errors = {}
mesh = Mesh(np.array(jax.devices()), ("batch",))
for key, call in (
    ("batch", lambda: distributed_sigmoid_loss(zimg[:12], ztxt[:12], t, b, mesh=mesh)),
    ("axis", lambda: distributed_sigmoid_loss(zimg, ztxt, t, b, mesh=mesh, axis_name="data")),
):
    try:
        call()
        errors[key] = None
    except ValueError as e:
        errors[key] = str(e)
result["errors"] = errors
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def eight_devices():
    return run_in_backend("jax", EIGHT_DEVICES)


@pytest.mark.parametrize("mesh", ["1x8", "2x4"])
def test_equals_single_device_loss_and_gradients(eight_devices, mesh):
    result = eight_devices[mesh]
    assert result["loss"] > 1.0  # a non-trivial loss value
    assert result["loss_diff"] <= 1e-5, result
    # d zimg, d ztxt, d log_t, d bias; each gradient is non-zero.
    for diff, scale in zip(result["grad_diffs"], result["grad_scales"]):
        assert scale > 1e-3, result
        assert diff <= 1e-5, result


@pytest.mark.parametrize("mesh", ["1x8", "2x4"])
def test_per_device_logits_are_b_local_squared(eight_devices, mesh):
    """By construction of the compiled per-device program (forward and backward): its
    largest float32 array is one (B_local, B_local) block, while the plain loss on the
    same sharded inputs makes (B_local, B) blocks."""
    result = eight_devices[mesh]
    b_local = result["b_local"]
    assert result["largest"] == b_local * b_local, result
    assert result["naive_largest"] >= b_local * 512, result  # shows the check can fail


def test_uses_the_keras_distribution_mesh(eight_devices):
    assert eight_devices["keras_default_mesh_diff"] <= 1e-5


def test_bad_input_errors(eight_devices):
    errors = eight_devices["errors"]
    assert "B=12" in errors["batch"] and "divisible by the 8 devices" in errors["batch"]
    assert "`axis_name`='data' is not an axis of the mesh" in errors["axis"]


def test_without_mesh_is_the_plain_loss():
    from keras_siglip2.training.losses.distributed import (
        DistributedSigLIPLoss,
        distributed_sigmoid_loss,
    )
    from keras_siglip2.training.losses.sigmoid import sigmoid_loss

    rng = np.random.RandomState(1)
    zimg, ztxt = rng.normal(size=(2, 6, 4)).astype("float32")
    expected = float(sigmoid_loss(zimg, ztxt, 1.0, -2.0))
    assert abs(float(distributed_sigmoid_loss(zimg, ztxt, 1.0, -2.0)) - expected) <= 1e-6
    assert abs(float(DistributedSigLIPLoss()(zimg, ztxt, 1.0, -2.0)) - expected) <= 1e-6
    with pytest.raises(ValueError, match="same batch size"):
        distributed_sigmoid_loss(zimg, ztxt[:5], 1.0, -2.0)
