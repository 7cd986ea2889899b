"""tools/bench/rows_scaling.py: the fitted exponent on hand-made power laws, the plot
file, and the compiled memory curves of a tiny loss (plain grows as B^2: its B x B
logits dominate). No timing is asserted."""

import numpy as np
import pytest

from tools.bench import rows_scaling


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_fitted_exponent_of_a_power_law(power):
    batches = [256, 1024, 4096, 16384]
    sizes = [3.0 * b ** power for b in batches]
    assert rows_scaling.fitted_exponent(batches, sizes) == pytest.approx(power, abs=1e-9)


def test_plot_is_written(tmp_path):
    path = rows_scaling.plot_curves(tmp_path / "p.png", [1, 2, 4], {"a": [1, 4, 16]}, "t", "y")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plain_loss_memory_grows_quadratically():
    """The single-device forms only (the ring's subprocess is the benchmark's smoke
    run): plain's temporaries grow as B^2, the chunked form's about linearly."""
    import jax

    from tools.bench.rows_memory import compiled_memory

    batches = [512, 1024, 2048]
    scalar = jax.ShapeDtypeStruct((), np.float32)
    exponents = {}
    for name, fn in rows_scaling._single_device_forms(64).items():
        grad = jax.value_and_grad(fn, argnums=(0, 1, 2, 3))
        sizes = [compiled_memory(grad, jax.ShapeDtypeStruct((b, 16), np.float32),
                                 jax.ShapeDtypeStruct((b, 16), np.float32), scalar, scalar)[0]
                 for b in batches]
        exponents[name] = rows_scaling.fitted_exponent(batches, sizes)
    assert exponents["plain"] == pytest.approx(2.0, abs=0.1)
    assert exponents["chunked (chunk 64)"] < 1.3


def test_curve_entries_fit_each_curve():
    curves = {"a": [(128, 1e-3), (256, 4e-3), (512, 16e-3)], "b": [(1, 2.0), (2, 4.0)]}
    entries = {e["label"]: e for e in rows_scaling._curve_entries(curves, "N", "N")}
    assert entries["a: time exponent over N = 128..512"]["value"] == pytest.approx(2.0)
    assert entries["b: time exponent over N = 1..2"]["value"] == pytest.approx(1.0)
    assert "256: 4 ms" in entries["a: time exponent over N = 128..512"]["note"]


def test_timed_curves_group_points_by_curve():
    runs = {("a", 1): lambda: None, ("a", 2): lambda: None, ("b", 8): lambda: None}
    curves = rows_scaling._timed_curves(runs, repeats=1, min_seconds=0.0)
    assert list(curves) == ["a", "b"]
    assert [x for x, _ in curves["a"]] == [1, 2] and [x for x, _ in curves["b"]] == [8]
    assert all(t > 0 for points in curves.values() for _, t in points)


@pytest.mark.large  # a subprocess importing the benchmark: 10-30 s
def test_ring_loss_time_child_runs_on_simulated_devices():
    """The subprocess with 8 simulated devices executes the ring loss + gradients at
    each batch and reports a time per batch."""
    out = rows_scaling._ring_time_curve({"min_seconds": 0.0}, {
        "step_batches": [64, 128], "dim": 16, "repeats": 1})
    assert isinstance(out, dict), out
    (name, points), = out.items()
    assert name == rows_scaling.RING_TIME.format(devices=8)
    assert [b for b, _ in points] == [64, 128] and all(t > 0 for _, t in points)
