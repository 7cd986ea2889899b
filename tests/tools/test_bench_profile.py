"""tools/bench/rows_profile.py: the HLO source names and the GEMM / non-GEMM grouping
on a hand-written HLO excerpt and op-time table, and a real profile of a tiny jitted
function (its matmul is found as a GEMM op). Speeds are never asserted."""

import numpy as np
import pytest

from tools.bench import rows_profile

HLO = """
  %copy_bitcast_fusion.19 = f32[4,12,196,196]{3,2,1,0} fusion(%ynn_fusion.105), kind=kLoop, calls=%c.281, metadata={op_name="jit(forward)/encoder_block_2/attention/vmap()/div" stack_frame_id=34}
  %ynn_fusion.104 = f32[4,12,64,196]{3,2,1,0} fusion(%t.31, %copy_bitcast_fusion.19), kind=kCustom, calls=%c.104, metadata={op_name="jit(forward)/encoder_block_10/attention/vmap(BNTS,BSNH->BTNH)/dot_general" stack_frame_id=34}
  %multiply_bitcast_fusion.6 = f32[784,3072]{1,0} fusion(%w, %ynn_fusion.60), kind=kLoop, calls=%c.219, metadata={op_name="jit(forward)/encoder_block_6/mlp/mul;jit(forward)/encoder_block_6/mlp/add" stack_frame_id=190}
"""


def test_hlo_sources_drop_block_indices_and_vmap():
    sources = rows_profile.hlo_sources(HLO)
    assert sources == {
        "copy_bitcast_fusion.19": "encoder_block/attention/div",
        "ynn_fusion.104": "encoder_block/attention/dot_general",
        "multiply_bitcast_fusion.6": "encoder_block/mlp/mul",
    }


def test_breakdown_groups_and_sums():
    times = {"copy_bitcast_fusion.19": 3.0, "copy_bitcast_fusion.20": 1.0,
             "ynn_fusion.104": 10.0, "multiply_bitcast_fusion.6": 2.0, "dot.3": 5.0}
    sources = {**rows_profile.hlo_sources(HLO), "copy_bitcast_fusion.20": "encoder_block/attention/div"}
    groups = rows_profile.breakdown(times, sources)
    assert groups["other"] == [
        ("encoder_block/attention/div [copy_bitcast_fusion]", 4.0),
        ("encoder_block/mlp/mul [multiply_bitcast_fusion]", 2.0),
    ]
    assert dict(groups["GEMM"]) == {
        "encoder_block/attention/dot_general [ynn_fusion]": 10.0, "? [dot]": 5.0}


def test_op_times_of_a_real_profile():
    jax = pytest.importorskip("jax")
    x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(256, 256)), "float32")
    f = jax.jit(lambda a: (a @ a) + 1.0).lower(x).compile()
    times = rows_profile.op_times(lambda: f(x).block_until_ready(), calls=2)
    assert times and all(t >= 0 for t in times.values())
    assert any(name.startswith(rows_profile.GEMM_PREFIXES) for name in times), sorted(times)
