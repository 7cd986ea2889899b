"""Curriculum callbacks (paper sec. 2.3-2.4): the 80 % SILC / TIPS switch, resuming a run
across it with `BackupAndRestore`, the 95 % resolution switch, and the non-finite loss
guard. Uses the configuration of test_pretrainer.py, so the compiled train steps are
shared through JAX's compilation cache (see `fast_compilation`)."""

import keras
import numpy as np
import pytest

from keras_siglip2.training.callbacks import (
    LossCurriculum,
    NonFiniteLossError,
    ResolutionAdaptation,
    StopOnNonFiniteLoss,
    check_curriculum,
    switch_step,
)
from keras_siglip2.training.resize import pi_resize_patch_kernel, resize_position_embedding
from tests.training.pretrainer_helpers import (
    tiny_batch,
    tiny_pretrainer,
    variables_by_path,
)

MOMENTUM = 0.9


def make(seed=0):
    p = tiny_pretrainer(seed=seed, teacher_momentum=MOMENTUM)
    p.compile(total_steps=10)
    return p


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(np.asarray(v)) for k, v in logs.items()})


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.01, True, "0.8", None])
def test_fractions_outside_unit_interval_are_refused(value):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        LossCurriculum(value)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ResolutionAdaptation(value, target_image_size=32)


def test_curriculum_out_of_order_is_refused():
    assert check_curriculum(0.8, 0.95) == (0.8, 0.95)
    assert check_curriculum(1.0, 1.0) == (1.0, 1.0)
    with pytest.raises(ValueError, match="out of order"):
        check_curriculum(0.9, 0.5)
    with pytest.raises(ValueError, match="target_image_size"):
        ResolutionAdaptation(0.95)
    p = make()
    # What `fit` does first: every callback's on_train_begin.
    in_order = keras.callbacks.CallbackList(
        [LossCurriculum(0.8), ResolutionAdaptation(0.95, target_image_size=24)],
        model=p, epochs=2, steps=5,
    )
    in_order.on_train_begin()
    callbacks = keras.callbacks.CallbackList(
        [LossCurriculum(0.9), ResolutionAdaptation(0.5, target_image_size=24)],
        model=p, epochs=2, steps=5,
    )
    with pytest.raises(ValueError, match="out of order"):
        callbacks.on_train_begin()


def test_switch_steps():
    assert switch_step(0.8, 600) == 480 and switch_step(0.95, 600) == 570
    assert switch_step(0.8, 5) == 4 and switch_step(1.0, 7) == 7


def test_loss_curriculum_switches_at_80_percent():
    p = make()
    recorder = Recorder()
    curriculum = LossCurriculum()  # 0.8 of 5 steps: SILC / TIPS from step 4
    p.fit(tiny_batch(fixed_random=True), batch_size=4, epochs=5, shuffle=False,
          callbacks=[curriculum, recorder], verbose=0)
    assert curriculum.switched_at == 4
    assert [r["silc_weight"] for r in recorder.logs] == [0, 0, 0, 0, 1]
    assert [r["tips_weight"] for r in recorder.logs] == [0, 0, 0, 0, 0.25]
    assert recorder.logs[-1]["silc_loss"] > 0 and recorder.logs[3]["silc_loss"] == 0
    assert p.self_distillation_started
    assert int(numpy(p.optimizer.iterations)) == 5


def _run(backup_dir, epochs, interrupt_after=None, seed=0):
    p = make(seed)
    callbacks = [keras.callbacks.BackupAndRestore(str(backup_dir))]
    curriculum = LossCurriculum(0.8)
    callbacks.append(curriculum)
    if interrupt_after is not None:

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == interrupt_after:
                    raise KeyboardInterrupt("simulated preemption")

        callbacks.append(Interrupt())
    batch = tiny_batch(fixed_random=True)
    p.fit(batch, batch_size=4, epochs=epochs, shuffle=False, callbacks=callbacks, verbose=0)
    return p, curriculum


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    """5 steps (one per epoch), SILC / TIPS from step 4. A run stopped after 2 steps and
    resumed from its BackupAndRestore checkpoint (by a pretrainer built with another
    seed) ends with the same weights, teacher, centers, stage, seed state and optimizer
    state as the uninterrupted run."""
    reference, ref_curriculum = _run(tmp_path / "reference", epochs=5)
    assert ref_curriculum.switched_at == 4
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "resumed", epochs=5, interrupt_after=2)
    resumed, curriculum = _run(tmp_path / "resumed", epochs=5, seed=1)
    assert curriculum.switched_at == 4  # the switch came after the interruption
    ours, theirs = variables_by_path(reference.variables), variables_by_path(resumed.variables)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_allclose(theirs[key], ours[key], atol=1e-6, rtol=0, err_msg=key)
    for a, b in zip(reference.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_allclose(numpy(b), numpy(a), atol=1e-6, rtol=0, err_msg=a.path)
    assert int(numpy(resumed.optimizer.iterations)) == 5
    assert resumed.self_distillation_started
    # Teacher weights are part of the comparison and did move away from the student.
    t = numpy(resumed.teacher_vision_encoder.weights[0])
    s = numpy(resumed.backbone.vision_encoder.weights[0])
    assert not np.allclose(t, s)


def _train_one_step(p):
    p.train_on_batch(tiny_batch(fixed_random=True))
    return p


def test_resolution_adaptation_resizes_weights_and_optimizer_state():
    p = _train_one_step(make())
    p.start_self_distillation()
    old_vision = p.backbone.vision_encoder
    old_pos = numpy(old_vision.position_embedding.embeddings)
    old_teacher_pos = numpy(p.teacher_vision_encoder.position_embedding.embeddings)
    old_text = variables_by_path(p.backbone.text_encoder.weights)
    old_slots = {v.path: numpy(v) for v in p.optimizer.variables}
    pos_path = old_vision.position_embedding.embeddings.path
    iterations = int(numpy(p.optimizer.iterations))

    assert p.adapt_resolution(24) is True  # 16 px -> 24 px at patch 8: 2x2 -> 3x3 grid
    vision = p.backbone.vision_encoder
    assert vision is not old_vision and vision.image_size == (24, 24)
    assert p.teacher_vision_encoder.image_size == (24, 24)
    np.testing.assert_array_equal(numpy(p.vision_resolution), [24, 24, 8])
    np.testing.assert_allclose(
        numpy(vision.position_embedding.embeddings),
        resize_position_embedding(old_pos, 2, 3), atol=1e-6,
    )
    np.testing.assert_allclose(
        numpy(p.teacher_vision_encoder.position_embedding.embeddings),
        resize_position_embedding(old_teacher_pos, 2, 3), atol=1e-6,
    )
    for a, b in zip(vision.patch_embedding.weights, old_vision.patch_embedding.weights):
        np.testing.assert_array_equal(numpy(a), numpy(b))
    new_text = variables_by_path(p.backbone.text_encoder.weights)
    for key in old_text:
        np.testing.assert_array_equal(new_text[key], old_text[key])
    # Optimizer: same step, moments carried over; the position embedding's resized.
    assert int(numpy(p.optimizer.iterations)) == iterations
    for v in p.optimizer.variables:
        if pos_path.replace("/", "_") in v.path and "teacher" not in v.path:
            np.testing.assert_allclose(
                numpy(v), resize_position_embedding(old_slots[v.path], 2, 3), atol=1e-6
            )
    trainable = [tuple(v.shape) for v in p.trainable_variables]
    slots = [tuple(v.shape) for v in p.optimizer.variables]
    assert all(shape in slots for shape in trainable)
    # The rebuilt backbone runs at the new size.
    batch = tiny_batch(image_size=24)
    logits = p.backbone.predict_on_batch(
        {"images": batch["images"], "token_ids": batch["token_ids"]}
    )["vision_logits"]
    assert np.all(np.isfinite(numpy(logits)))
    assert p.adapt_resolution(24) is False  # already there


def test_patch_size_change_uses_pi_resize():
    p = make()
    old_kernel = numpy(p.backbone.vision_encoder.patch_embedding.dense.kernel)
    p.adapt_resolution(16, patch_size=4)  # 2x2 patches of 8 px -> 4x4 patches of 4 px
    vision = p.backbone.vision_encoder
    assert vision.patch_size == 4 and vision.grid_size == (4, 4)
    np.testing.assert_allclose(
        numpy(vision.patch_embedding.dense.kernel),
        pi_resize_patch_kernel(old_kernel, 8, 4), atol=1e-6,
    )


def test_checkpoint_after_the_resolution_switch_loads_into_a_fresh_pretrainer(tmp_path):
    p = _train_one_step(make())
    p.adapt_resolution(24)
    path = str(tmp_path / "switched.weights.h5")
    p.save_weights(path)
    q = make(seed=3)
    q.optimizer.build(q.trainable_variables)  # as BackupAndRestore does before loading
    q.load_weights(path)
    assert q.backbone.vision_encoder.image_size == (24, 24)
    ours, theirs = variables_by_path(p.weights), variables_by_path(q.weights)
    for key in ours:
        np.testing.assert_array_equal(theirs[key], ours[key], err_msg=key)
    for a, b in zip(p.optimizer.variables, q.optimizer.variables):
        np.testing.assert_array_equal(numpy(b), numpy(a))


def test_resolution_adaptation_refuses_naflex_and_bad_sizes():
    p = make()
    with pytest.raises(ValueError, match="no patch"):
        p.adapt_resolution(4)
    with pytest.raises(ValueError, match="target_patch_size"):
        ResolutionAdaptation(0.95, target_image_size=32, target_patch_size=0)


def test_stop_on_non_finite_loss_names_step_and_terms():
    callback = StopOnNonFiniteLoss()
    callback._step = 7
    callback.on_train_batch_end(0, {"loss": 1.0, "tips_loss": 0.5})
    with pytest.raises(NonFiniteLossError, match=r"step 8: .*'tips_loss'.*inf"):
        callback.on_train_batch_end(1, {"loss": float("inf"), "tips_loss": float("inf"),
                                        "silc_loss": 0.3})
