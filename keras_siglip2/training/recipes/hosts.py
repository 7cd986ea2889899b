"""The multi-host side of `train` (paper sec. 2: training on TPU pods): starting JAX's
multi-process runtime, checking that every host runs the same command (preset file,
data files and sizes, every `TrainConfig` field) and setting the distribution, before
anything is built."""

import os
import warnings

import keras

from keras_siglip2.distribution import (
    check_same_on_all_hosts,
    initialize_multihost,
    setup_distribution,
)


def _start_hosts():
    """`initialize_multihost()` on a multi-host run; a single host (no coordinator to
    discover) goes on alone. Returns the number of processes."""
    if keras.backend.backend() != "jax":
        raise ValueError(
            "`mesh` (distributed training) needs the JAX backend; got KERAS_BACKEND="
            f"{keras.backend.backend()!r}."
        )
    import jax  # lazy: JAX backend only (checked above)

    configured = any(os.environ.get(k) for k in (
        "KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES"))
    try:
        return initialize_multihost()
    except (ValueError, RuntimeError) as e:
        text = str(e)
        if "only be called once" in text or "already" in text:
            return jax.process_count()
        if not configured and "coordinator_address" in text:
            return 1  # one host: nothing to start
        if not configured and "must be called before" in text:
            # JAX already runs in this process (e.g. `train` called from a notebook):
            # go on with the hosts it knows.
            warnings.warn(
                "`mesh`: JAX was initialized before `train`, so the multi-host runtime "
                f"was not started; training on {jax.process_count()} host(s). On a pod, "
                "call keras_siglip2.distribution.initialize_multihost() first.",
                stacklevel=3,
            )
            return jax.process_count()
        raise


def _data_fingerprint(data_paths):
    """[(file, size)] of every file the data paths name (folders listed, patterns
    expanded): equal on all hosts when they read the same data."""
    import tensorflow as tf  # lazy: optional heavy dependency (TensorFlow's gfile)

    files = []
    for path in data_paths:
        if any(c in path for c in "*?["):
            names = tf.io.gfile.glob(path)
        elif tf.io.gfile.isdir(path):
            names = [os.path.join(path, n) for n in tf.io.gfile.listdir(path)]
        else:
            names = [path]
        for name in sorted(names):
            size = None if tf.io.gfile.isdir(name) else tf.io.gfile.stat(name).length
            files.append([os.path.abspath(name) if "://" not in name else name, size])
    return files


def _preset_fingerprint(preset_path):
    """The preset's config.json text (a directory) or its name."""
    path = os.path.join(preset_path, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            return f.read()
    return str(preset_path)


def _check_same_command(num_hosts, **fields):
    """Mismatched commands across hosts fail at start-up, naming what differs."""
    if num_hosts > 1:
        check_same_on_all_hosts(fields)


def setup_hosts(config, run):
    """With a `mesh`: starts the hosts, checks they run the same command and sets the
    distribution; fills `run.num_hosts`, `run.host_index`, `run.verbose`."""
    import jax  # lazy: JAX backend only (`_start_hosts` checks it)

    run.num_hosts = _start_hosts()
    run.host_index = jax.process_index()
    run.verbose = run.verbose and run.host_index == 0
    fields = config.get_config()
    fields.update(preset=_preset_fingerprint(run.preset_path),
                  data=_data_fingerprint(run.data_paths), decoder=bool(config.decoder),
                  checkpoint_every=run.checkpoint_every, out_dir=run.out_dir)
    _check_same_command(run.num_hosts, **fields)
    if config.batch_size % run.num_hosts:
        raise ValueError(
            f"`batch_size`={config.batch_size} (global) must be divisible by the number "
            f"of hosts ({run.num_hosts})."
        )
    setup_distribution(config.mesh, batch_size=config.batch_size,
                       backbone=run.preset_path)
