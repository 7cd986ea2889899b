"""tools/bench/rows_training.py: the pure helpers of the issue 17 breakdown (the
whole-run cost under the paper's curriculum, the LocCa projection's analytic FLOPs)
against hand-computed values, and the FLOP count of a pretrainer that was never run.
No timing is asserted."""

import pytest

from tools.bench import rows_training


def test_curriculum_cost_ratio_by_hand():
    # 80 % of the steps at 2x a sigmoid-only step, 20 % at 4x: 1.6 + 0.8 = 2.4.
    assert rows_training.curriculum_cost_ratio(2.0, 4.0) == pytest.approx(2.4)
    # Only sigmoid-only steps cost 1; the switch fraction moves the weights.
    assert rows_training.curriculum_cost_ratio(1.0, 1.0) == pytest.approx(1.0)
    assert rows_training.curriculum_cost_ratio(2.0, 4.0, switch=0.5) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="`switch` must be a fraction in \\[0, 1\\]; got 1.5"):
        rows_training.curriculum_cost_ratio(2.0, 4.0, switch=1.5)


def test_locca_projection_flops_by_hand():
    # 3 tasks x 2 examples x 3 tokens = 18 tokens, each a 4 x 5 matmul: 18 x 20 = 360
    # multiply-adds, 720 FLOPs forward, x 3 with the two backward matmuls: 2,160.
    assert rows_training.locca_projection_flops(2, 3, 4, 5) == 2160
    assert rows_training.locca_projection_flops(2, 3, 4, 5, tasks=1) == 720


def test_train_step_flops_of_a_pretrainer_never_run():
    """A pretrainer that never ran (optimizer unbuilt) is counted without running: its
    optimizer is built, no step runs (iterations stay 0); adding LocCa adds at least
    the analytic projection FLOPs (the decoder's other layers come on top)."""
    import keras
    import numpy as np

    from tests.training.pretrainer_helpers import BATCH, tiny_batch, tiny_pretrainer

    keras.utils.set_random_seed(0)
    sigmoid = tiny_pretrainer(locca=False, self_distillation=False, masked_prediction=False)
    locca = tiny_pretrainer(self_distillation=False, masked_prediction=False)
    for p in (sigmoid, locca):
        p.compile(total_steps=10)
    batch = tiny_batch(local=False)
    base = rows_training.jax_train_step_flops(sigmoid, tiny_batch(locca=False, local=False))
    with_locca = rows_training.jax_train_step_flops(locca, batch)
    assert int(np.asarray(locca.optimizer.iterations)) == 0
    length = batch["decoder_token_ids"].shape[1]
    projection = rows_training.locca_projection_flops(
        BATCH, length, locca.decoder.hidden_dim, locca.decoder.vocabulary_size, tasks=1)
    assert base > 0
    assert with_locca - base > projection


def test_chunked_projection_flops_by_hand():
    # V = 10, chunk 4: 3 blocks of ceil(10 / 3) = 4 columns (the last at columns 6..9,
    # overlapping); per block 1 task x 2 x 3 tokens x 4 x 4 columns x 2 FLOPs x 4
    # matmuls = 768.
    assert rows_training.chunked_projection_flops(2, 3, 4, 10, 4, tasks=1) == (2304, 768)
    # V = 12, chunk 5: 3 blocks of 4 (even), not of 5.
    assert rows_training.chunked_projection_flops(2, 3, 4, 12, 5, tasks=1) == (2304, 768)
    # A chunk as wide as the vocabulary: the plain projection, 2 x 3 x 4 x 10 x 2 x 3.
    assert rows_training.chunked_projection_flops(2, 3, 4, 10, 64, tasks=1) == (1440, 1440)


def test_chunked_projection_flops_match_xla_for_one_block():
    """XLA's own count of the LocCa loss + gradients: with the vocabulary in one chunk
    it is the plain form's analytic 3 matmuls (plus a few % of elementwise work); with
    4 blocks it counts one block of 4 matmuls (the scan body once), which is why the
    row adds the missing iterations."""
    import jax
    import numpy as np

    from keras_siglip2.training.losses.locca import locca_loss_from_features
    from tools.bench.common import xla_flops

    b, length, d, v = 4, 8, 32, 1024
    shapes = (jax.ShapeDtypeStruct((b, length, d), np.float32),
              jax.ShapeDtypeStruct((d, v), np.float32), jax.ShapeDtypeStruct((v,), np.float32),
              jax.ShapeDtypeStruct((b, length), np.int32),
              jax.ShapeDtypeStruct((b, length), np.float32))
    for chunk in (v, v // 4):
        grad = jax.value_and_grad(
            lambda h, w, bias, t, m, c=chunk: locca_loss_from_features(
                h, w, bias, t, m, vocabulary_chunk=c), argnums=(0, 1, 2))
        counted = xla_flops(jax.jit(grad).lower(*shapes))
        _, one_block = rows_training.chunked_projection_flops(b, length, d, v, chunk, tasks=1)
        assert one_block <= counted <= 1.1 * one_block, (chunk, counted, one_block)
