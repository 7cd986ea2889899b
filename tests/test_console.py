"""Tests of `keras_siglip2.console`: the progress lines written to a log file, and the
quiet start-up of the `siglip2` command."""

import io
import os
import subprocess
import sys

import keras
import pytest

from keras_siglip2 import console
from tests.conftest import ROOT

ENTRY_POINT = os.path.join(os.path.dirname(sys.executable), "siglip2")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_line_progress_writes_whole_lines_to_a_file():
    """1,000 updates into a file: about 20 lines (one per 50 steps), each a whole line
    with the step, the loss and the time; no carriage return."""
    stream = io.StringIO()
    bar = console.LineProgress(1000, stream=stream)
    for step in range(1, 1001):
        bar.update(step, values=[("loss", 1.0 / step)])
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 20, lines
    assert lines[0].startswith("step   50/1000  loss 0.0200  ")
    assert lines[-1].startswith("step 1000/1000  loss 0.0010  ") and lines[-1].endswith(" s")


def test_line_progress_short_runs_and_repeats():
    """Fewer steps than lines: every step once; the same step twice prints once."""
    stream = io.StringIO()
    bar = console.LineProgress(3, unit_name="image", stream=stream)
    for step in (1, 1, 2, 3, 3):
        bar.update(step)
    assert [line.split("  ")[0] for line in stream.getvalue().splitlines()] == [
        "image 1/3", "image 2/3", "image 3/3"]


def test_line_progress_prints_when_time_has_passed(monkeypatch):
    """Between the 5 % marks, a line is still written once `every_s` has passed."""
    clock = iter([0.0, 0.0, 10.0, 100.0]).__next__
    monkeypatch.setattr(console.time, "monotonic", clock)
    stream = io.StringIO()
    bar = console.LineProgress(1000, stream=stream, every_s=60)
    bar.update(1)   # t = 0: not due
    bar.update(2)   # t = 10: not due
    bar.update(3)   # t = 100: 60 s have passed
    assert stream.getvalue().splitlines() == ["step    3/1000  100.0 s"]


def test_progress_bar_kind_follows_the_stream():
    assert console.progress_bar(10, verbose=False) is None
    assert isinstance(console.progress_bar(10, stream=io.StringIO()), console.LineProgress)
    assert isinstance(console.progress_bar(10, stream=FakeTerminal()), keras.utils.Progbar)


# Each case is a ~10 s start-up of the command line; the other two run with -m large.
@pytest.mark.parametrize("args", [["--help"], pytest.param(["presets"], marks=pytest.mark.large),
                                  pytest.param(["train", "--help"], marks=pytest.mark.large)])
def test_command_line_prints_nothing_on_stderr(args):
    """`siglip2 ...` with no log level set by the caller: TensorFlow / XLA / absl
    start-up lines (oneDNN, CUDA probes, CPU features) do not reach stderr."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "SIGLIP2_VERBOSE")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([ENTRY_POINT, *args], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()
    assert proc.stderr == ""
