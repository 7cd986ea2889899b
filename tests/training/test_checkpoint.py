"""keras_siglip2.training.checkpoint: orbax checkpoints of a pretrainer's whole train
state (weights, optimizer, EMA teacher, curriculum stage, seed generators). A round
trip into a differently initialized pretrainer restores every variable exactly; a
checkpoint of another model is refused with the variable named; an unfinished write
is not a checkpoint; under ModelParallel on 8 simulated devices the sharded variables
come back sharded with their values (a subprocess: the device count is fixed when JAX
starts). Killing real processes mid-write: tests/training/test_multihost.py."""

import os

import numpy as np
import pytest

from tests.conftest import run_in_backend

pytestmark = pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "jax") != "jax", reason="orbax checkpoints are JAX-only"
)


def _state(model):
    from keras_siglip2.distribution import to_numpy

    return [to_numpy(v) for v in
            model.trainable_variables + model.non_trainable_variables
            + model.optimizer.variables]


def _pretrainer(seed):
    from tests.training.pretrainer_helpers import tiny_pretrainer

    p = tiny_pretrainer(seed=seed)
    p.compile(total_steps=10)
    p.optimizer.build(p.trainable_variables)
    return p


def test_round_trip_restores_every_variable(tmp_path):
    from keras_siglip2.training.checkpoint import Checkpoints, restore_latest

    source = _pretrainer(seed=0)
    source.start_self_distillation()  # stage 1, teacher = student, heads re-drawn
    source.optimizer.iterations.assign(7)
    source.seed_generator.state.assign(np.array([3, 5], "uint32"))
    expected = _state(source)
    checkpoints = Checkpoints(str(tmp_path / "ckpt"))
    assert checkpoints.latest_step() is None
    assert checkpoints.save(source) == 7
    assert checkpoints.latest_step() == 7

    target = _pretrainer(seed=1)
    before = _state(target)
    assert any(not np.array_equal(a, b) for a, b in zip(before, expected))
    step, _ = restore_latest(target, str(tmp_path / "ckpt"))
    assert step == 7
    for a, b in zip(_state(target), expected):
        np.testing.assert_array_equal(a, b)
    assert target.self_distillation_started
    assert checkpoints.last_save_s > 0 and checkpoints.last_restore_s is None


def test_unfinished_write_is_not_a_checkpoint(tmp_path):
    """A folder left by a write killed before orbax's final rename is ignored (and
    removed) by the next start; the previous checkpoint is used."""
    from keras_siglip2.training.checkpoint import Checkpoints

    model = _pretrainer(seed=0)
    directory = tmp_path / "ckpt"
    Checkpoints(str(directory)).save(model, step=2)
    partial = directory / "4.orbax-checkpoint-tmp-123"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half_written").write_bytes(b"\0" * 10)
    checkpoints = Checkpoints(str(directory))
    assert checkpoints.latest_step() == 2
    assert checkpoints.restore(_pretrainer(seed=1)) == 2
    assert not partial.exists()


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from keras_siglip2.training.checkpoint import Checkpoints
    from tests.training.pretrainer_helpers import tiny_pretrainer

    Checkpoints(str(tmp_path / "ckpt")).save(_pretrainer(seed=0), step=1)
    other = tiny_pretrainer(locca=False)
    other.compile(total_steps=10)
    other.optimizer.build(other.trainable_variables)
    with pytest.raises(ValueError, match=r"written by a different model \(.*variables in "
                                         r"the checkpoint"):
        Checkpoints(str(tmp_path / "ckpt")).restore(other)


SHARDED = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import json, time
import numpy as np
from keras_siglip2 import distribution as D
from keras_siglip2.training.checkpoint import Checkpoints
from tests.training.distributed_pretrainer_steps import make_pretrainer

def build(seed):
    import keras
    with D.setup_distribution("batch=2,model=4", set_global=False).scope():
        p = make_pretrainer()
        if seed:  # other values, same layout
            for v in p.trainable_variables:
                v.assign(v.value * 0 + 0.5)
        p.compile(total_steps=10)
        p.optimizer.build(p.trainable_variables)
    return p

source = build(0)
specs = [str(v.value.sharding.spec) for v in source.trainable_variables]
values = [np.asarray(v.value) for v in source.trainable_variables]
ck = Checkpoints(__DIR__)
ck.save(source, step=3)
target = build(1)
ck.restore(target)
out = {
    "diff": max(float(np.abs(np.asarray(v.value) - a).max())
                for v, a in zip(target.trainable_variables, values)),
    "same_specs": [str(v.value.sharding.spec) for v in target.trainable_variables] == specs,
    "sharded": sum("model" in s for s in specs),
    "save_s": ck.last_save_s, "restore_s": ck.last_restore_s,
}
print(json.dumps(out))
"""


@pytest.mark.large
def test_sharded_variables_come_back_sharded(tmp_path):
    """(large: building the sharded pretrainer twice takes ~40-90 s on 2 shared cores.)"""
    result = run_in_backend("jax", SHARDED.replace("__DIR__", repr(str(tmp_path / "ck"))))
    assert result["sharded"] > 10, result
    assert result["same_specs"], result
    assert result["diff"] == 0.0, result
