"""The LocCa layout bench row's block-diagonal causal mask (`tools/bench/rows_locca.py`),
against a mask written out by hand, and the two layouts' equal gradients."""

import numpy as np

from tools.bench.rows_locca import CONCATENATED, STACKED, block_causal_mask, layout_contenders


def test_block_causal_mask_by_hand():
    expected = np.array([[1, 0, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0, 0],
                         [0, 0, 1, 0, 0, 0],
                         [0, 0, 1, 1, 0, 0],
                         [0, 0, 0, 0, 1, 0],
                         [0, 0, 0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(block_causal_mask(2, 3), expected)


def test_both_layouts_give_the_same_gradients():
    contenders, x = layout_contenders(batch=2, length=5, heads=2, head_dim=4)
    stacked = np.asarray(contenders[STACKED](x))
    concatenated = np.asarray(contenders[CONCATENATED](x))
    assert stacked.shape == concatenated.shape == x.shape
    np.testing.assert_allclose(concatenated, stacked, rtol=1e-5, atol=1e-6)
