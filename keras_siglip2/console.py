"""Start-up of the `siglip2` command: quiet native logs unless `--verbose` is given.

TensorFlow and XLA print start-up lines (oneDNN, CUDA driver probes, CPU feature notes)
from C++ through absl before any Python logging exists, so neither `TF_CPP_MIN_LOG_LEVEL`
nor Python's logging silences them. For the command line only, the package import
therefore runs with file descriptor 2 pointed at /dev/null; library users who
`import keras_siglip2` see whatever their frameworks print, unchanged.
"""

import contextlib
import os
import sys

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
        from absl import logging as absl_logging  # optional: installed with TensorFlow
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.ERROR)
