"""The recipe rules of the pretrainer package (`training/pretrainer/recipe.py`) and the
teacher-stage names (`teacher.py`): one NaFlex rule, LOSS_TERMS importable from the
package, `start_teacher_stage` with its deprecated `self_distillation` aliases."""

import keras
import numpy as np
import pytest

from keras_siglip2.training.pretrainer import (
    LOSS_TERMS,
    TEACHER_TERMS,
    resolve_teacher_losses,
)
from tests.training.pretrainer_helpers import SEQ, TEXT_VOCAB, WIDTH, tiny_backbone, tiny_pretrainer


def _naflex_vision():
    from keras_siglip2.convert.common import build_backbone

    return build_backbone(
        {"type": "naflex", "patch_size": 4, "hidden_dim": WIDTH, "num_layers": 1,
         "num_heads": 2, "intermediate_dim": 2 * WIDTH, "max_num_patches": 8},
        {"vocabulary_size": TEXT_VOCAB, "hidden_dim": WIDTH, "num_layers": 1, "num_heads": 2,
         "intermediate_dim": 2 * WIDTH, "projection_dim": WIDTH, "max_sequence_length": SEQ},
    ).vision_encoder


def test_loss_terms_and_the_naflex_rule():
    assert LOSS_TERMS == ("sigmoid", "locca", "silc", "tips")
    assert TEACHER_TERMS == ("silc", "tips")
    fixed = tiny_backbone().vision_encoder
    assert resolve_teacher_losses(fixed) == (True, True)
    assert resolve_teacher_losses(fixed, False, None) == (False, True)
    naflex = _naflex_vision()
    assert resolve_teacher_losses(naflex) == (False, False)
    with pytest.raises(ValueError, match="NaFlex .* drop --self-distillation"):
        resolve_teacher_losses(naflex, True, None, hint="drop --self-distillation")
    with pytest.raises(ValueError, match="fixed-resolution"):
        resolve_teacher_losses(naflex, None, True)


def test_teacher_stage_names_and_deprecated_aliases():
    p = tiny_pretrainer()
    assert not p.teacher_stage_started and not p.self_distillation_started
    assert p.self_distillation_active is p.teacher_stage_active
    # The saved variable keeps its name, so checkpoints from before the rename load.
    assert p.teacher_stage_active.path.endswith("self_distillation_active")
    p.start_teacher_stage()
    assert p.teacher_stage_started and p._teacher_stage_on and p._self_distillation_on
    q = tiny_pretrainer()
    with pytest.warns(DeprecationWarning, match="start_teacher_stage"):
        q.start_self_distillation()
    assert q.self_distillation_started
    for name in ("silc_center", "tips_center"):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(getattr(q, name)), 0.0)
    q._self_distillation_on = False  # the old setter still reaches the mirror
    assert not q._teacher_stage_on
