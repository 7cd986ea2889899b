"""What the `siglip2` subcommands share: quieting the framework logs, the argparse type
for positive integers (over `keras_siglip2.checks`) and `TaskOutput`, which keeps stdout
for the result alone."""

import argparse
import contextlib
import sys
import warnings

from keras_siglip2 import console
from keras_siglip2.checks import check_positive_int


def quiet_backends(argv):
    """Quiet framework logs unless `--verbose` (keras_siglip2/console.py silenced the
    native start-up lines while the package was imported)."""
    if console.VERBOSE_FLAG not in argv:
        console.quiet_environment()
        console.silence_absl()


def positive_int(text):
    """argparse `type=`: the text as an int >= 1 (`keras_siglip2.checks`), else an
    ArgumentTypeError (argparse prints it as the option's error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    try:
        return check_positive_int("value", value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}") from None


def print_warning(message, category, filename, lineno, file=None, line=None):
    print(f"siglip2: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def warning_lines():
    """While the work runs, warnings (filtered as usual) print as one
    `siglip2: warning: ...` line each."""
    with warnings.catch_warnings():
        warnings.showwarning = print_warning
        yield


class TaskOutput:
    """While the work runs: warnings become `siglip2: warning: ...` lines and
    everything written to stdout (keras' progress bars) goes to stderr, so that stdout
    holds only the result (e.g. the `--json` document)."""

    def __enter__(self):
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = print_warning
        self._stdout = contextlib.redirect_stdout(sys.stderr)
        self._stdout.__enter__()
        return self

    def __exit__(self, *exc):
        self._stdout.__exit__(*exc)
        self._warnings.__exit__(*exc)
        return False


# Deprecated private aliases (the names of the single-module cli.py), kept one release.
_quiet_backends = quiet_backends
_positive_int = positive_int
_print_warning = print_warning
_TaskOutput = TaskOutput
