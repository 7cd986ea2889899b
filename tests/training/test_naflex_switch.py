"""The NaFlex stage (paper sec. 2.4.2; issue 17 item 4): `switch_to_naflex` converts the
fixed tower in place (on its own square grid the NaFlex tower computes what the fixed
tower did), carries the optimizer state over, turns SILC / TIPS off; `NaFlexSwitch`
does it at a fraction of training, and a checkpoint saved after it reloads as NaFlex."""

import keras
import numpy as np
import pytest

from keras_siglip2.models.naflex_vision_encoder import SigLIP2NaFlexVisionEncoder
from keras_siglip2.training.naflex_switch import NaFlexSwitch
from keras_siglip2.training.pretrainer.naflex import images_to_naflex
from tests.training.pretrainer_helpers import BATCH, tiny_batch, tiny_pretrainer


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def test_converted_tower_computes_what_the_fixed_tower_did():
    p = tiny_pretrainer()
    images = tiny_batch()["images"]
    before = numpy(p.backbone.vision_encoder(images))
    assert p.switch_to_naflex(max_num_patches=4)
    vision = p.backbone.vision_encoder
    assert isinstance(vision, SigLIP2NaFlexVisionEncoder) and vision.position_grid_size == 2
    after = numpy(vision(images_to_naflex(images, vision.patch_size)))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert p.active_terms == ["sigmoid", "locca"] and not p.uses_teacher
    np.testing.assert_array_equal(numpy(p.vision_resolution), [2, 4, 0])


def test_optimizer_state_is_carried_and_training_goes_on():
    p = tiny_pretrainer()
    p.compile(total_steps=10)
    batch = tiny_batch(fixed_random=True)
    p.train_on_batch(batch)
    moments = {v.path: numpy(v) for v in p.optimizer.variables}
    p.switch_to_naflex(max_num_patches=4)
    assert int(numpy(p.optimizer.iterations)) == 1
    carried = {v.path: numpy(v) for v in p.optimizer.variables}
    same = [k for k in moments if k in carried and moments[k].shape == carried[k].shape]
    assert len(same) > 10
    for key in same:
        np.testing.assert_array_equal(carried[key], moments[key], err_msg=key)
    del batch["local_images"]
    logs = p.train_on_batch(batch, return_dict=True)
    assert np.isfinite(logs["loss"]) and "silc_loss" not in logs


def test_callback_switches_at_the_fraction_and_resumes(tmp_path):
    p = tiny_pretrainer()
    p.compile(total_steps=6)
    data = tiny_batch(batch=6 * BATCH)
    switch = NaFlexSwitch(start=0.5, max_num_patches=4)
    history = p.fit(data, batch_size=BATCH, epochs=1, shuffle=False, callbacks=[switch],
                    verbose=0)
    assert switch.switched_at == 3
    assert isinstance(p.backbone.vision_encoder, SigLIP2NaFlexVisionEncoder)
    assert np.all(np.isfinite(history.history["loss"]))
    path = str(tmp_path / "after.weights.h5")
    p.save_weights(path)
    resumed = tiny_pretrainer(seed=1)
    resumed.load_weights(path)
    assert isinstance(resumed.backbone.vision_encoder, SigLIP2NaFlexVisionEncoder)
    for a, b in zip(p.backbone.weights, resumed.backbone.weights):
        np.testing.assert_array_equal(numpy(a), numpy(b), err_msg=a.path)


@pytest.mark.parametrize("start", [0, 1.0, 1.5, -0.1])
def test_bad_fraction(start):
    with pytest.raises(ValueError, match=r"strictly inside \(0, 1\)"):
        NaFlexSwitch(start=start)


def test_naflex_preset_is_refused():
    from keras_siglip2.convert.common import build_backbone
    from keras_siglip2.training.pretrainer import SigLIP2Pretrainer
    from tests.training.pretrainer_helpers import SEQ, TEXT_VOCAB, WIDTH

    backbone = build_backbone(
        {"type": "naflex", "patch_size": 4, "hidden_dim": WIDTH, "num_layers": 1,
         "num_heads": 2, "intermediate_dim": 2 * WIDTH, "max_num_patches": 8},
        {"vocabulary_size": TEXT_VOCAB, "hidden_dim": WIDTH, "num_layers": 1, "num_heads": 2,
         "intermediate_dim": 2 * WIDTH, "projection_dim": WIDTH, "max_sequence_length": SEQ},
    )
    p = SigLIP2Pretrainer(backbone, decoder=None, self_distillation=False,
                          masked_prediction=False)
    with pytest.raises(ValueError, match="already has a SigLIP2NaFlexVisionEncoder"):
        p.switch_to_naflex()
    p.compile(total_steps=2)
    with pytest.raises(ValueError, match="NaFlex preset"):
        switch = NaFlexSwitch(total_steps=2)
        switch.set_model(p)
        switch.on_train_begin()
    with pytest.raises(ValueError, match="max_num_patches"):
        tiny_pretrainer().switch_to_naflex(max_num_patches=0)


def test_keras_file_saved_after_the_switch_reloads_as_naflex(tmp_path):
    """A whole-model `.keras` file written after the switch reloads with the NaFlex
    tower, its weights, and the NaFlex stage (no SILC / TIPS)."""
    from keras_siglip2.training.pretrainer import SigLIP2Pretrainer

    p = tiny_pretrainer()
    p.switch_to_naflex(max_num_patches=4)
    path = str(tmp_path / "after.keras")
    p.save(path)
    loaded = keras.saving.load_model(path, custom_objects={
        "SigLIP2Pretrainer": SigLIP2Pretrainer})
    assert isinstance(loaded.backbone.vision_encoder, SigLIP2NaFlexVisionEncoder)
    assert loaded.active_terms == p.active_terms == ["sigmoid", "locca"]
    np.testing.assert_array_equal(numpy(loaded.vision_resolution), [2, 4, 0])
    assert len(loaded.backbone.weights) == len(p.backbone.weights)
    for a, b in zip(p.backbone.weights, loaded.backbone.weights):
        np.testing.assert_array_equal(numpy(a), numpy(b), err_msg=a.path)
    images = images_to_naflex(tiny_batch()["images"], loaded.backbone.vision_encoder.patch_size)
    np.testing.assert_allclose(numpy(loaded.backbone.vision_encoder(images)),
                               numpy(p.backbone.vision_encoder(images)), rtol=1e-6)
