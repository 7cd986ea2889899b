"""Console output of the `siglip2` command: quiet native logs unless `--verbose` is
given, and progress lines that read well in a log file.

TensorFlow and XLA print start-up lines (oneDNN, CUDA driver probes, CPU feature notes)
from C++ through absl before any Python logging exists, so neither `TF_CPP_MIN_LOG_LEVEL`
nor Python's logging silences them. For the command line only, the package import
therefore runs with file descriptor 2 pointed at /dev/null; library users who
`import keras_siglip2` see whatever their frameworks print, unchanged.
"""

import contextlib
import os
import sys
import time

VERBOSE_FLAG = "--verbose"


def is_quiet_command_line(argv=None):
    """True when this process is the `siglip2` command without `--verbose` (or
    SIGLIP2_VERBOSE=1)."""
    argv = sys.argv if argv is None else argv
    if not argv or os.path.basename(argv[0]) != "siglip2":
        return False
    return VERBOSE_FLAG not in argv[1:] and os.environ.get("SIGLIP2_VERBOSE") != "1"


def quiet_environment():
    """Log levels read by TensorFlow, gRPC and absl after their start-up (set only where
    the user has not chosen one)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("KERAS_BACKEND", "jax")


@contextlib.contextmanager
def native_stderr_silenced(active):
    """Within the block, writes to file descriptor 2 (C++ logs included) are dropped when
    `active`; a Python exception raised inside still prints after the block."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def silence_absl():
    """absl's Python logger (used by TensorFlow, JAX and orbax) at ERROR."""
    try:
        from absl import logging as absl_logging  # lazy: optional, installed with TensorFlow
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.ERROR)


def _is_terminal(stream):
    return bool(getattr(stream, "isatty", None) and stream.isatty()) or "ipykernel" in sys.modules


class LineProgress:
    """Progress for a log file: whole lines, about `lines` of them over the run (and one
    more whenever `every_s` seconds have passed), never carriage returns.

    Same `update(current, values)` as `keras.utils.Progbar`, which redraws one line with
    `\\r` on every update whenever the `posix` module is loaded, i.e. always on Linux:
    written to a file that is thousands of updates on one line.
    """

    def __init__(self, target, unit_name="step", stream=None, lines=20, every_s=60.0):
        self.target = int(target)
        self.unit_name = unit_name
        self.stream = stream
        self.interval = max(1, -(-self.target // max(1, int(lines))))
        self.every_s = float(every_s)
        self._start = self._last = time.monotonic()
        self._printed = None

    def _due(self, current, now):
        return (current >= self.target or current % self.interval == 0
                or now - self._last >= self.every_s)

    def update(self, current, values=None, finalize=None):
        now = time.monotonic()
        current = int(current)
        if current == self._printed or not self._due(current, now):
            return
        width = len(str(self.target))
        parts = [f"{self.unit_name} {current:>{width}}/{self.target}"]
        parts += [f"{name} {float(value):.4f}" for name, value in (values or [])]
        parts.append(f"{now - self._start:.1f} s")
        stream = self.stream or sys.stdout
        print("  ".join(parts), file=stream, flush=True)
        self._printed, self._last = current, now


def progress_bar(target, unit_name="step", verbose=True, stream=None):
    """A redrawn `keras.utils.Progbar` on a terminal, `LineProgress` otherwise (a log
    file, a pipe, CI); None when not `verbose`."""
    if not verbose:
        return None
    if _is_terminal(stream or sys.stdout):
        import keras  # lazy: keras (and its backend) loads only to draw a bar

        return keras.utils.Progbar(target, unit_name=unit_name)
    return LineProgress(target, unit_name=unit_name, stream=stream)
