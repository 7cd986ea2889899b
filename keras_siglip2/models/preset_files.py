"""What a model needs to know about preset files, below the preset registry and the
converters: the weights files a preset directory must hold, clear errors for missing or
unreadable ones, and the hook through which preset names become directories.

The preset registry and its fetching / conversion (`keras_siglip2.presets`, an upper
layer) register the resolver at import; `SigLIP2Backbone.from_preset` and the
preprocessing components call `resolve_preset_path` without importing them, so the
models depend on nothing above them.
"""

import contextlib
import os


class CheckpointError(ValueError):
    """A checkpoint that is not a SigLIP 2 model, or is incomplete or corrupt."""


PRESET_WEIGHT_FILES = ("model.weights.h5", "model.weights.json")

_RESOLVERS = []


def register_preset_resolver(resolver):
    """Makes `resolver(preset) -> preset` (a name to a local directory or a handle)
    the one `resolve_preset_path` calls; the last one registered wins."""
    if not callable(resolver):
        raise TypeError(f"resolver must be callable; got {resolver!r}.")
    _RESOLVERS[:] = [resolver]


def resolve_preset_path(preset):
    """`preset` through the registered resolver (unchanged when none is)."""
    return _RESOLVERS[0](preset) if _RESOLVERS else preset


def require_preset_weights(directory, what="Preset directory", hint=""):
    """Raises FileNotFoundError if the preset `directory` holds no weights file."""
    if not any(os.path.exists(os.path.join(directory, n)) for n in PRESET_WEIGHT_FILES):
        raise FileNotFoundError(
            f"{what} {directory} has no weights: expected model.weights.h5 (or a sharded "
            f"model.weights.json).{hint}"
        )


@contextlib.contextmanager
def readable_preset_weights(preset, what="preset", hint=""):
    """Around a `from_preset` call: h5py's plain OSError for a truncated or corrupt
    weights file of a local preset directory becomes a `CheckpointError` naming it."""
    try:
        yield
    except OSError as e:
        if type(e) is not OSError or not os.path.isdir(preset):
            raise
        raise CheckpointError(
            f"Cannot read the weights of {what} {preset} (truncated or corrupt "
            f"model.weights.h5?): {e}.{hint}"
        ) from e
