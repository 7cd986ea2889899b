"""tools/bench/rows_precision.py: the loss-curve agreement figures against hand-computed
values, SILC's local crop size, and the two pretrainers the row compares (same float32
weights, bfloat16 compute for one) with a batch stream their step accepts. No timing
is asserted."""

import numpy as np
import pytest

from tools.bench import rows_precision

TINY = dict(patch_size=8, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
            image_size=16)
TINY_TEXT = dict(vocabulary_size=64, hidden_dim=16, num_layers=1, num_heads=2,
                 intermediate_dim=32, projection_dim=16, max_sequence_length=8)


def test_loss_agreement_by_hand():
    worst, relative = rows_precision.loss_agreement([2.0, 1.5, 1.0], [2.1, 1.4, 1.05])
    assert worst == pytest.approx(0.1)
    assert relative == pytest.approx(0.05)  # |1.05 - 1.0| / 1.0
    with pytest.raises(ValueError, match="same length; got shapes \\(3,\\) and \\(2,\\)"):
        rows_precision.loss_agreement([2.0, 1.5, 1.0], [2.0, 1.5])


def test_local_crop_size_is_whole_patches():
    assert rows_precision.recipe_local_size({"image_size": 224, "patch_size": 16}) == 96
    assert rows_precision.recipe_local_size({"image_size": 32, "patch_size": 8}) == 16
    assert rows_precision.recipe_local_size({"image_size": 16, "patch_size": 8}) == 8


def test_pretrainers_share_weights_and_differ_in_compute_dtype():
    import keras

    from keras_siglip2.training.pretrainer.batch_spec import check_batch

    models = rows_precision._pretrainers(TINY, TINY_TEXT, "full")
    f32, bf16 = models["float32"], models["mixed_bfloat16"]
    assert f32.backbone.vision_encoder.compute_dtype == "float32"
    assert bf16.backbone.vision_encoder.compute_dtype == "bfloat16"
    assert bf16.decoder.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in bf16.trainable_variables)
    for a, b in zip(f32.get_weights(), bf16.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert keras.config.dtype_policy().name == "float32"  # the global policy untouched
    batches = rows_precision.synthetic_batches(TINY, TINY_TEXT, f32.decoder.vocabulary_size,
                                               batch=4, examples=8, recipe="full")
    assert len(batches) == 2
    for batch in batches:
        check_batch(f32, batch)
        assert batch["tips_mask"].shape == (4, 4) and batch["tips_mask"].sum() == 8
        assert batch["decoder_token_ids"].shape == (4, 3, 8)
    assert not np.array_equal(batches[0]["images"], batches[1]["images"])

