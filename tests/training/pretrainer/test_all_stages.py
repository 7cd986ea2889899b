"""A run through every stage with TIPS on (issue 17 item 5): sigmoid + LocCa, the
teacher stage at 80 % (SILC + TIPS), the resolution switch at 95 % (4 -> 16 patches).
The dataset's "tips_mask" keeps the first token count; the train step draws the mask
from the current count after the switch instead of failing."""

import numpy as np

from keras_siglip2.training.callbacks import LossCurriculum, ResolutionAdaptation
from tests.training.pretrainer_helpers import tiny_batch, tiny_pretrainer

STEPS = 20
BATCH = 4
TARGET = 32  # 16 px / patch 8 -> 2 x 2 patches, then 32 px -> 4 x 4


def test_twenty_steps_through_all_stages_with_tips():
    p = tiny_pretrainer()
    data = tiny_batch(batch=STEPS * BATCH, image_size=TARGET)
    rng = np.random.RandomState(0)
    mask = np.zeros((STEPS * BATCH, 4), "int32")  # the token count before the switch
    for row in mask:
        row[rng.permutation(4)[:2]] = 1
    data["tips_mask"] = mask
    teacher_stage = LossCurriculum()
    resolution = ResolutionAdaptation(start=0.95, target_image_size=TARGET)
    p.compile(total_steps=STEPS)
    history = p.fit(data, batch_size=BATCH, epochs=1, shuffle=False,
                    callbacks=[teacher_stage, resolution], verbose=0)
    assert teacher_stage.switched_at == 16 and resolution.switched_at == 19
    assert tuple(p.backbone.vision_encoder.image_size) == (TARGET, TARGET)
    assert p.teacher_stage_started
    logs = history.history
    for name in ("loss", "sigmoid_loss", "locca_loss", "silc_loss", "tips_loss"):
        assert np.all(np.isfinite(logs[name])), name
    assert logs["tips_loss"][-1] > 0 and logs["silc_loss"][-1] > 0
