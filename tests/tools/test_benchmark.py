"""tools/benchmark.py (issue 8): the smoke run (--quick) writes a parseable JSON and
Markdown report, the contenders it compares compute the same function, and its pure
helpers (FLOP formula, paired ratios, the registry's "not available" path) are right.
Speeds are never asserted."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "benchmark.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("siglip2_benchmark_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(*args, timeout=900):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, str(TOOL), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT))


def check_report(out, rows, ordered=True):
    """`ordered=False` where `rows` comes from this process's registry, whose order
    depends on which test modules imported which row modules first."""
    proc_report = json.loads((out / "benchmarks.json").read_text())
    assert (list if ordered else sorted)(proc_report["rows"]) == (
        rows if ordered else sorted(rows))
    for name, row in proc_report["rows"].items():
        assert row["status"] in ("ok", "not available"), (name, row)
        if row["status"] == "ok":
            assert row["entries"], name
    meta = proc_report["meta"]
    assert meta["cores"] >= 1 and meta["cpu"]
    assert meta["versions"]["keras"] and meta["versions"]["jax"]
    md = (out / "benchmarks.md").read_text()
    assert "| row | measurement | value | ratio | target | met | note |" in md
    assert proc_report["date"] in md and meta["cpu"] in md
    # one table line per entry (or per unavailable row)
    lines = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    expected = sum(len(r["entries"]) if r["status"] == "ok" else 1
                   for r in proc_report["rows"].values())
    assert len(lines) == expected + 1
    return proc_report


def test_quick_run_inference_rows(tmp_path):
    rows = ["inference", "flops", "gpu"]
    proc = run_tool("--quick", "--rows", ",".join(rows), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = check_report(tmp_path, rows)
    assert "row " in proc.stdout and "measurement" in proc.stdout  # the printed table
    inference = report["rows"]["inference"]
    assert inference["status"] == "ok"
    labels = {e["label"]: e for e in inference["entries"]}
    # keras-siglip2 got keras-hub's weights and transformers got ours: same function
    # (relative max difference, float32; 1e-5 leaves room for summation order only).
    same = [e for label, e in labels.items() if "same outputs" in label]
    assert len(same) == 4
    for e in same:
        assert e["value"] < 1e-5, e
    for kind in ("images", "texts"):
        ratio = labels[f"{kind}: keras_siglip2 (jit) / keras-hub (jit)"]
        assert ratio["ratio"] > 0 and ratio["target"] == ">= 1.05"
        assert ratio["met"] == (ratio["ratio"] >= 1.05)
    flops = report["rows"]["flops"]
    assert flops["status"] == "ok"
    peak = [e for e in flops["entries"] if e["label"].startswith("peak")]
    assert len(peak) == 1 and peak[0]["value"] > 0
    if report["meta"]["accelerator"] is None:
        assert report["rows"]["gpu"]["status"] == "not available"


@pytest.mark.large
def test_quick_run_all_rows(tmp_path):
    proc = run_tool("--quick", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    tool = load_tool()
    report = check_report(tmp_path, list(tool.ROWS), ordered=False)
    naflex = {e["label"]: e for e in report["rows"]["naflex"]["entries"]}
    assert naflex["resize: same embeddings, batched vs loop"]["value"] < 1e-5
    assert naflex["resize: batched time / output-size floor time"]["ratio"] > 0
    training = {e["label"]: e for e in report["rows"]["training"]["entries"]}
    work = training["full-recipe / sigmoid-only step FLOPs (XLA cost analysis)"]
    assert work["ratio"] > 1.5  # LocCa, SILC and TIPS add passes over the image tower
    # Each added term costs FLOPs; the curriculum ratio lies between its two step ratios.
    for label, e in training.items():
        if label.startswith("step FLOPs breakdown:"):
            assert e["ratio"] > 1.0, label
    locca = training["sigmoid + LocCa step time / sigmoid-only step time"]["ratio"]
    full = training["full-recipe step time / sigmoid-only step time"]["ratio"]
    whole = training["whole-run cost ratio under the paper's curriculum (derived)"]["ratio"]
    assert min(locca, full) <= whole <= max(locca, full)
    precision = {e["label"]: e for e in report["rows"]["precision"]["entries"]}
    finals = [e for label, e in precision.items() if label.endswith(": final loss")]
    assert len(finals) == 2  # float32 and mixed_bfloat16
    assert all(e["ratio"] < 1.0 for e in finals), finals  # both losses fell
    layout = [e for e in report["rows"]["locca_layout"]["entries"]
              if e["label"].endswith("concatenated / stacked time")]
    assert len(layout) == 2 and all(e["ratio"] > 0 for e in layout)
    compute = {e["label"] for e in report["rows"]["scaling_compute"]["entries"]}
    assert any(label.startswith("ring (8 simulated devices") for label in compute)
    assert any(label.startswith("sigmoid-only train step") for label in compute)
    assert any(label.startswith("NaFlex sigmoid-only train step") for label in compute)
    assert (tmp_path / "scaling_compute.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_row_is_a_clear_error(tmp_path):
    proc = run_tool("--rows", "inference,warp_drive", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "warp_drive" in proc.stderr and "inference" in proc.stderr
    assert not (tmp_path / "benchmarks.json").exists()


def test_flop_formula_matches_the_issue():
    tool = load_tool()
    # B/16-224 image tower with MAP head: about 35.4 GFLOPs per image (issue 8).
    assert tool.vision_flops(tool.B16_VISION) / 1e9 == pytest.approx(35.42, abs=0.01)
    # B text tower, 64 tokens: 12 x (8 L d^2 + 4 L^2 d + 4 L d m) + 2 d^2.
    d, m, length = 768, 3072, 64
    expected = 12 * (8 * length * d * d + 4 * length * length * d + 4 * length * d * m)
    assert tool.text_flops(tool.B_TEXT) == expected + 2 * d * d
    # NaFlex: the token count replaces the image size.
    assert tool.vision_flops(tool.B16_VISION, tokens=196) == tool.vision_flops(tool.B16_VISION)


def test_alternate_rounds_and_paired_ratio():
    tool = load_tool()
    calls = []
    contenders = {"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2}
    timing = tool.alternate(contenders, repeats=3, min_seconds=0.0)
    assert timing["outputs"] == {"a": 1, "b": 2}
    assert len(timing["rounds"]) == 3
    assert all(set(r) == {"a", "b"} for r in timing["rounds"])
    # 2 warm-up calls each, then per round one untimed settling call and the timed
    # one, the order rotating.
    assert calls[:4] == ["a", "b", "a", "b"]
    assert calls[4:] == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    calls.clear()
    tool.alternate(contenders, repeats=3, min_seconds=0.0, settle=False)
    assert calls[4:] == ["a", "b", "b", "a", "a", "b"]
    fake = {"rounds": [{"fast": 1.0, "slow": 3.0}, {"fast": 2.0, "slow": 2.0},
                       {"fast": 1.0, "slow": 10.0}]}
    assert tool.paired_ratio(fake, "fast", "slow") == 3.0  # median of 3, 1, 10


def test_missing_code_is_not_available():
    tool = load_tool()
    with pytest.raises(tool.NotAvailable, match="not in this checkout"):
        tool.require("keras_siglip2.no_such_module")
    with pytest.raises(tool.NotAvailable, match="no_such_name"):
        tool.require("keras_siglip2.layers", "no_such_name")
    assert tool.require("keras_siglip2.layers", "SigLIP2Attention") is not None


def test_quick_decoder_loss_memory_row(tmp_path):
    """The LocCa loss memory row: the chunked form's temporaries are a fraction of the
    plain form's, which holds at least the B x L x V float32 logits (quick sizes:
    8 x 16 x 4,096)."""
    proc = run_tool("--quick", "--rows", "decoder_loss_memory", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    row = check_report(tmp_path, ["decoder_loss_memory"])["rows"]["decoder_loss_memory"]
    assert row["status"] == "ok"
    plain, chunked = row["entries"]
    assert "plain" in plain["label"] and "chunked" in chunked["label"]
    assert plain["ratio"] >= 1.0  # temporaries / logits bytes
    assert chunked["value"] < plain["value"] / 4
