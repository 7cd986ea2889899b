"""LocCa's three tasks on every example (paper sec. 2.2; issue 17 item 1): (B, 3, L)
decoder fields are decoded in one pass and give the same per-task losses as three
separate single-task (B, L) runs; the task weights mix them by hand-computed values."""

import keras
import numpy as np
import pytest

from keras_siglip2.training.pretrainer import LOCCA_TASKS
from tests.training.pretrainer_helpers import BATCH, NUM_BINS, SEQ, TEXT_VOCAB, tiny_batch
from tests.training.pretrainer_helpers import tiny_pretrainer

LENGTH = SEQ + 4
FIELDS = ("decoder_token_ids", "decoder_targets", "decoder_weights", "decoder_prefix_mask")


def three_task_batch(seed=0):
    """Every example has a box: target weights on all three task rows."""
    rng = np.random.RandomState(seed)
    batch = tiny_batch(seed, locca=False, local=False)
    vocab = TEXT_VOCAB + NUM_BINS
    shape = (BATCH, 3, LENGTH)
    batch["decoder_token_ids"] = rng.randint(0, vocab, shape).astype("int32")
    batch["decoder_targets"] = rng.randint(0, vocab, shape).astype("int32")
    weights = np.zeros(shape, "float32")
    weights[:, 0, 2:9] = 1.0  # the rows differ in where and how many targets count
    weights[:, 1, 4:8] = 1.0
    weights[:, 2, 1:11] = 1.0
    batch["decoder_weights"] = weights
    prefix = np.zeros(shape, "int32")
    prefix[:, 1:, 1:3] = 1
    batch["decoder_prefix_mask"] = prefix
    batch["locca_parallel"] = (rng.uniform(size=(BATCH, 3)) < 0.5).astype("int32")
    return batch


def losses(pretrainer, batch):
    out = pretrainer(batch, training=False)
    return {k: float(keras.ops.convert_to_numpy(v)) for k, v in out.items()}


def test_three_tasks_in_one_pass_equal_three_single_task_runs():
    p = tiny_pretrainer(self_distillation=False, masked_prediction=False,
                        locca_task_weights={"aref": 0.5, "gcap": 0.25})
    batch = three_task_batch()
    ours = losses(p, batch)
    per_task = []
    for t, task in enumerate(LOCCA_TASKS):
        single = dict(batch)
        for field in FIELDS:
            single[field] = batch[field][:, t]
        single["locca_parallel"] = batch["locca_parallel"][:, t]
        reference = losses(p, single)["locca_loss"]
        assert ours[f"locca_{task}_loss"] > 0.1, task
        assert ours[f"locca_{task}_loss"] == pytest.approx(reference, rel=1e-5), task
        per_task.append(reference)
    # (1 * captioning + 0.5 * aref + 0.25 * gcap) / 1.75
    expected = (per_task[0] + 0.5 * per_task[1] + 0.25 * per_task[2]) / 1.75
    assert ours["locca_loss"] == pytest.approx(expected, rel=1e-5)
    assert ours["loss"] == pytest.approx(ours["sigmoid_loss"] + ours["locca_loss"], rel=1e-5)


def test_tasks_without_targets_leave_the_mean():
    """Examples without a region box: ARef / GCap rows weigh 0, "locca" is captioning."""
    p = tiny_pretrainer(self_distillation=False, masked_prediction=False,
                        locca_task_weights=(1.0, 0.5, 0.25))
    batch = three_task_batch(1)
    batch["decoder_weights"][:, 1:] = 0.0
    ours = losses(p, batch)
    assert ours["locca_aref_loss"] == 0.0 and ours["locca_gcap_loss"] == 0.0
    assert ours["locca_loss"] == pytest.approx(ours["locca_captioning_loss"], rel=1e-6)


def test_three_task_batches_train_and_log_each_task():
    p = tiny_pretrainer(self_distillation=False, masked_prediction=False)
    p.compile(total_steps=4)
    logs = p.train_on_batch(three_task_batch(), return_dict=True)
    for task in LOCCA_TASKS:
        assert np.isfinite(logs[f"locca_{task}_loss"]) and logs[f"locca_{task}_loss"] > 0
    assert p.get_config()["locca_task_weights"] == {t: 1.0 for t in LOCCA_TASKS}


@pytest.mark.parametrize("weights, match", [
    ({"caption": 1.0}, "unknown tasks"),
    ((1.0, 2.0), "sequence of 3"),
    ({"aref": -1.0}, r"locca_task_weights\['aref'\]"),
])
def test_bad_task_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        tiny_pretrainer(self_distillation=False, masked_prediction=False,
                        locca_task_weights=weights)


def test_bad_task_axis():
    p = tiny_pretrainer(self_distillation=False, masked_prediction=False)
    batch = three_task_batch()
    for field in FIELDS:
        batch[field] = batch[field][:, :2]
    with pytest.raises(ValueError, match=r"\(B, 3, L\)"):
        p.check_batch(batch)


def test_task_order_matches_the_data_pipeline():
    from keras_siglip2.training.data.locca_targets import TASKS

    assert LOCCA_TASKS == TASKS
