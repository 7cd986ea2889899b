"""SILC's augmented global view (issue 17 item 3): with "teacher_images" in the batch the
EMA teacher (and TIPS' masked student copy) see that view, the sigmoid / LocCa losses
still the image; without it everything sees "images" as before."""

import keras
import numpy as np
import pytest

from tests.training.pretrainer_helpers import tiny_batch, tiny_pretrainer


def losses(pretrainer, batch):
    out = pretrainer(batch, training=False)
    return {k: float(keras.ops.convert_to_numpy(v)) for k, v in out.items()}


def test_teacher_sees_teacher_images():
    p = tiny_pretrainer()
    p.start_teacher_stage()
    batch = tiny_batch(fixed_random=True)
    other = tiny_batch(seed=5, fixed_random=True)["images"]
    plain = losses(p, batch)
    ours = losses(p, dict(batch, teacher_images=other))
    # The teacher terms equal those of a batch whose image is the teacher view ...
    swapped = losses(p, dict(batch, images=other))
    for term in ("silc", "tips"):
        assert ours[f"{term}_loss"] == pytest.approx(swapped[f"{term}_loss"], rel=1e-6)
        assert abs(ours[f"{term}_loss"] - plain[f"{term}_loss"]) > 1e-4, term
    # ... while the sigmoid and LocCa losses keep the image itself.
    for term in ("sigmoid", "locca"):
        assert ours[f"{term}_loss"] == pytest.approx(plain[f"{term}_loss"], rel=1e-6)


def test_teacher_images_shape_is_checked():
    p = tiny_pretrainer()
    batch = tiny_batch()
    batch["teacher_images"] = np.zeros((4, 16, 16, 1), "float32")
    with pytest.raises(ValueError, match="'teacher_images' must be"):
        p.check_batch(batch)
