"""The paper's optimizer (sec. 2.1): warmup + cosine schedule, decoupled weight decay
1e-4 on kernels only, global-norm clipping, and how the pretrainer's compile / fit use it."""

import math

import keras
import numpy as np
import pytest

from keras_siglip2.training.optimizers import (
    WarmupCosineSchedule,
    clone_optimizer,
    learning_rate_schedule_of,
    siglip2_optimizer,
)


def lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_warmup_then_cosine_values():
    s = WarmupCosineSchedule(1e-3, total_steps=110, warmup_steps=10)
    # Linear warmup: step k (0-based) uses (k + 1) / warmup of the peak.
    assert lr(s, 0) == pytest.approx(1e-4, rel=1e-6)
    assert lr(s, 4) == pytest.approx(5e-4, rel=1e-6)
    assert lr(s, 10) == pytest.approx(1e-3, rel=1e-6)  # peak right after warmup
    # Cosine over the remaining 100 steps: half-way is half the peak, the end is 0.
    assert lr(s, 60) == pytest.approx(5e-4, rel=1e-5)
    assert lr(s, 35) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.25)), rel=1e-5)
    assert lr(s, 110) == pytest.approx(0.0, abs=1e-9)
    assert lr(s, 500) == pytest.approx(0.0, abs=1e-9)  # constant after the end
    values = [lr(s, k) for k in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_fraction_and_deferred_length():
    s = WarmupCosineSchedule(2e-3, warmup_fraction=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        s(0)
    s.set_total_steps(200)
    assert (s.total_steps, s.warmup_steps) == (200, 20)
    assert lr(s, 19) == pytest.approx(2e-3, rel=1e-6)
    restored = WarmupCosineSchedule(**s.get_config())
    assert [lr(restored, k) for k in (0, 50, 199)] == pytest.approx(
        [lr(s, k) for k in (0, 50, 199)]
    )


@pytest.mark.parametrize("total, warmup", [
    (1_220_000, 20_000),  # the paper's run: 40B examples at batch 32k, 20k warmup steps
    (400_000, 20_000),    # 5 % of it is exactly 20k
    (100_000, 5_000),     # shorter: capped at 5 %
    (1_000, 50),
])
def test_default_warmup_is_the_papers_capped_for_short_runs(total, warmup):
    assert WarmupCosineSchedule(total_steps=total).warmup_steps == warmup


@pytest.mark.parametrize(
    "kwargs",
    [
        {"peak_learning_rate": 0.0},
        {"warmup_fraction": 1.0},
        {"warmup_steps": -1},
        {"total_steps": 10, "warmup_steps": 10},
        {"total_steps": 0},
    ],
)
def test_bad_schedule_arguments(kwargs):
    with pytest.raises(ValueError):
        WarmupCosineSchedule(**kwargs)


def test_decoupled_weight_decay_on_kernels_only():
    """With zero gradients Adam's update is 0, so one step shows the decay alone: a
    kernel shrinks by weight_decay * schedule(0) (big_vision's decoupled decay, not
    multiplied by the peak learning rate); biases and LayerNorm scales do not decay."""
    optimizer = siglip2_optimizer(total_steps=100, warmup_steps=10)
    assert optimizer.global_clipnorm == 1.0
    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    norm = keras.layers.LayerNormalization()
    norm.build((None, 3))
    dense.bias.assign(np.ones(3, "float32"))
    variables = dense.trainable_variables + norm.trainable_variables
    before = [np.asarray(v.numpy()) for v in variables]
    optimizer.apply([keras.ops.zeros(v.shape) for v in variables], variables)
    after = [np.asarray(v.numpy()) for v in variables]
    multiplier = 1e-4 * (lr(optimizer._learning_rate, 0) / 1e-3)  # wd x schedule(0)
    np.testing.assert_allclose(after[0], before[0] * (1 - multiplier), rtol=1e-6)
    assert not np.allclose(after[0], before[0])
    for b, a in zip(before[1:], after[1:]):  # bias, gamma, beta
        np.testing.assert_array_equal(a, b)


def test_clone_keeps_config_and_exclusions():
    optimizer = siglip2_optimizer(learning_rate=5e-4, total_steps=40)
    clone = clone_optimizer(optimizer)
    assert clone is not optimizer
    assert learning_rate_schedule_of(clone).total_steps == 40
    assert clone.weight_decay == pytest.approx(optimizer.weight_decay)
    assert clone._exclude_from_weight_decay_pattern.pattern == (
        optimizer._exclude_from_weight_decay_pattern.pattern
    )


def test_clone_of_a_loss_scale_optimizer():
    """mixed_float16 training wraps the optimizer in a LossScaleOptimizer; its clone
    (ResolutionAdaptation) is one too, with the same scale settings and an inner
    optimizer that keeps the schedule and the weight-decay exclusions."""
    inner = siglip2_optimizer(learning_rate=5e-4, total_steps=40)
    optimizer = keras.optimizers.LossScaleOptimizer(inner, initial_scale=64.0,
                                                    dynamic_growth_steps=7)
    clone = clone_optimizer(optimizer)
    assert isinstance(clone, keras.optimizers.LossScaleOptimizer)
    assert (clone.initial_scale, clone.dynamic_growth_steps) == (64.0, 7)
    assert clone.inner_optimizer is not inner
    assert learning_rate_schedule_of(clone).total_steps == 40
    assert clone.inner_optimizer._exclude_from_weight_decay_pattern.pattern == (
        inner._exclude_from_weight_decay_pattern.pattern
    )


@pytest.mark.parametrize(
    "kwargs, error",
    [({"learning_rate": 0.0}, ValueError), ({"weight_decay": -1.0}, ValueError),
     ({"learning_rate": WarmupCosineSchedule(1e-3, 10)}, TypeError)],
)
def test_bad_optimizer_arguments(kwargs, error):
    with pytest.raises(error):
        siglip2_optimizer(**kwargs)
