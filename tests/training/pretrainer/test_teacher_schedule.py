"""SILC / TIPS head sizes and the teacher-temperature warm-up as pretrainer arguments
(issue 17 item 6), against hand-computed values."""

import keras
import numpy as np
import pytest

from keras_siglip2.training.pretrainer.recipe import warmed_up_temperature
from tests.training.pretrainer_helpers import tiny_batch, tiny_pretrainer


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def test_warm_up_formula_by_hand():
    # DINO's ramp 0.04 -> 0.07 over 4 steps: +0.0075 per step, then flat.
    values = [warmed_up_temperature(0.04, 0.07, s, 4) for s in range(6)]
    assert values == pytest.approx([0.04, 0.0475, 0.055, 0.0625, 0.07, 0.07])
    tensor = warmed_up_temperature(0.04, 0.07, keras.ops.convert_to_tensor(2.0), 4.0)
    assert float(numpy(tensor)) == pytest.approx(0.055)


def test_separate_tips_head_size():
    p = tiny_pretrainer(head_dims=(32, 16, 24), tips_head_dims=(32, 16, 40))
    assert p.silc_center.shape == (24,) and p.tips_center.shape == (40,)
    assert p.silc_head.output_dim == 24 and p.tips_head.output_dim == 40
    assert p.teacher_tips_head.output_dim == 40
    config = p.get_config()
    assert config["tips_head_dims"] == [32, 16, 40] and config["head_dims"] == [32, 16, 24]


def test_warm_up_drives_the_loss_and_counts_stage_steps():
    kwargs = dict(teacher_temperature=0.07)
    p = tiny_pretrainer(teacher_temperature_start=0.04, teacher_temperature_warmup_steps=4,
                        **kwargs)
    p.start_teacher_stage()
    p.teacher_stage_steps.assign(2.0)
    assert float(numpy(p.current_teacher_temperature())) == pytest.approx(0.055)
    # The same model with a fixed teacher temperature of the hand-computed 0.055.
    q = tiny_pretrainer(teacher_temperature=0.055)
    q.start_teacher_stage()
    batch = tiny_batch(fixed_random=True)
    ours, reference = p(batch, training=False), q(batch, training=False)
    for term in ("silc", "tips"):
        assert float(numpy(ours[f"{term}_loss"])) == pytest.approx(
            float(numpy(reference[f"{term}_loss"])), rel=1e-6), term
    p.compile(total_steps=10)
    p.start_teacher_stage()  # resets the clock
    assert float(numpy(p.teacher_stage_steps)) == 0.0
    for _ in range(3):
        p.train_on_batch(batch)
    assert float(numpy(p.teacher_stage_steps)) == 3.0
    assert float(numpy(p.current_teacher_temperature())) == pytest.approx(0.0625)


@pytest.mark.parametrize("kwargs, match", [
    (dict(teacher_temperature_start=0.04), "warm-up needs both"),
    (dict(teacher_temperature_warmup_steps=5), "warm-up needs both"),
    (dict(teacher_temperature_start=-1.0, teacher_temperature_warmup_steps=5),
     "teacher_temperature_start"),
    (dict(teacher_temperature_warmup_steps=-1), "teacher_temperature_warmup_steps"),
    (dict(tips_head_dims=(8, 8)), "tips_head_dims"),
])
def test_bad_schedule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pretrainer(**kwargs)
