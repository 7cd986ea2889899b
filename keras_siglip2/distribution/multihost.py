"""Code that runs on every host of a multi-host run (TPU pod slices, multi-host GPU):
`initialize_multihost` (JAX's multi-process runtime with bounded timeouts, gloo on
CPU), `to_numpy`, `barrier`, `check_same_on_all_hosts` and `gathered_copy`. See the
package docstring."""

import hashlib
import json
import os
import socket
import time

import keras
import numpy as np


ENV_ADDRESS = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
# Seconds to wait for every process to join (`initialization_timeout`) and without a
# heartbeat from a peer before the others fail (`heartbeat_timeout_seconds`).
ENV_INIT_TIMEOUT = "SIGLIP2_DISTRIBUTED_INIT_TIMEOUT"
ENV_HEARTBEAT_TIMEOUT = "SIGLIP2_DISTRIBUTED_HEARTBEAT_TIMEOUT"
DEFAULT_INIT_TIMEOUT = 300
DEFAULT_HEARTBEAT_TIMEOUT = 100


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1 and default is not None:
        raise ValueError(f"${name} must be a positive integer; got {value!r}.")
    return number


def initialize_multihost(coordinator_address=None, num_processes=None, process_id=None,
                         initialization_timeout=None, heartbeat_timeout=None):
    """Starts the multi-process runtime (`jax.distributed.initialize`) so that every
    host sees all devices of the pod slice. Call it once per process, first, before any
    other JAX / Keras work. On Cloud TPU all arguments are discovered from the
    environment; elsewhere pass them or set KERAS_DISTRIBUTION_JOB_ADDRESSES (the
    coordinator "host:port", or all addresses comma-separated, the first being the
    coordinator), KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID.

    On CPU (tests, simulated hosts) the cross-process collectives use gloo.

    Timeouts: `initialization_timeout` (env SIGLIP2_DISTRIBUTED_INIT_TIMEOUT, default
    300 s) bounds the wait for the coordinator and the other processes; a coordinator
    that cannot be reached raises a RuntimeError naming its address and the timeout
    (a process that reaches it but not all its peers in time is ended by JAX's
    distributed runtime, DEADLINE_EXCEEDED, after the same timeout).
    `heartbeat_timeout` (env SIGLIP2_DISTRIBUTED_HEARTBEAT_TIMEOUT, default 100 s): a
    process that stops answering (killed, lost host) makes the others fail after about
    that long instead of hanging.

    Returns the number of processes.
    """
    if keras.backend.backend() != "jax":
        raise ValueError(
            "Multi-host training needs the JAX backend; got KERAS_BACKEND="
            f"{keras.backend.backend()!r}."
        )
    import jax  # lazy: JAX backend only (other backends never import it)

    address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
    if address and "," in address:
        address = address.split(",")[0].strip()
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = _env_int(ENV_NUM_PROCESSES, None)
    if process_id is None and os.environ.get(ENV_PROCESS_ID) is not None:
        process_id = _env_int(ENV_PROCESS_ID, None)
    init_timeout = initialization_timeout or _env_int(ENV_INIT_TIMEOUT, DEFAULT_INIT_TIMEOUT)
    heartbeat = heartbeat_timeout or _env_int(ENV_HEARTBEAT_TIMEOUT, DEFAULT_HEARTBEAT_TIMEOUT)
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        # Cross-process collectives on CPU devices (no effect on TPU / GPU devices).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if address and process_id not in (None, 0):
        # XLA's client aborts the process (no Python error) when the coordinator does
        # not answer: wait for its port here, with a clear error.
        _wait_for_coordinator(address, init_timeout, process_id, num_processes)
    jax.distributed.initialize(
        coordinator_address=address, num_processes=num_processes,
        process_id=process_id, initialization_timeout=init_timeout,
        heartbeat_timeout_seconds=heartbeat,
    )
    return jax.process_count()


def _wait_for_coordinator(address, timeout, process_id, num_processes):
    """Waits up to `timeout` s until the coordinator's "host:port" accepts a TCP
    connection; raises a RuntimeError naming the address otherwise."""

    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "localhost"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except (OSError, ValueError) as e:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"Could not join the multi-host run: the coordinator {address!r} "
                    f"(process {process_id} of {num_processes} waiting) did not answer "
                    f"within {timeout} s (${ENV_INIT_TIMEOUT}). Check that process 0 runs "
                    "the same command on that address and that the port is open. "
                    f"({type(e).__name__}: {e})"
                ) from e
        time.sleep(0.5)


def process_count():
    """Number of processes of the run (1 without the JAX multi-host runtime)."""
    if keras.backend.backend() != "jax":
        return 1
    import jax  # lazy: JAX backend only (other backends never import it)

    return jax.process_count()


def to_numpy(value):
    """A NumPy copy of a (possibly multi-host, sharded) array. Every process must call
    it for the same arrays in the same order when some are not on this host alone (it
    then gathers them across the hosts)."""

    if keras.backend.backend() != "jax":
        return keras.ops.convert_to_numpy(value)
    import jax  # lazy: JAX backend only (other backends never import it)

    value = getattr(value, "value", value)  # a keras Variable
    if not isinstance(value, jax.Array) or value.is_fully_addressable:
        return np.asarray(value)
    if value.is_fully_replicated:
        return np.asarray(value.addressable_data(0))
    from jax.experimental import multihost_utils  # lazy: JAX backend only

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def barrier(name):
    """Waits until every process reaches the barrier `name` (no-op on one host)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils  # lazy: JAX backend only

        multihost_utils.sync_global_devices(name)


def check_same_on_all_hosts(fields):
    """Raises a ValueError on every process unless all processes pass equal `fields`
    (a dict name -> JSON-able value, e.g. the command's options), naming the fields
    that differ and this host's value: mismatched commands fail at start-up instead of
    deadlocking in the first collective. No-op on one host."""
    if process_count() == 1:
        return

    from jax.experimental import multihost_utils  # lazy: JAX backend only

    names = sorted(fields)
    digests = np.array([
        int.from_bytes(hashlib.sha256(json.dumps(fields[n], sort_keys=True, default=str)
                                      .encode()).digest()[:4], "little") & 0x7FFFFFFF
        for n in names
    ], np.int32)
    every = np.asarray(multihost_utils.process_allgather(digests))  # (processes, fields)
    differ = [n for n, column in zip(names, every.T) if len(set(column.tolist())) > 1]
    if differ:
        import jax  # lazy: JAX backend only (other backends never import it)

        mine = ", ".join(f"{n}={fields[n]!r}" for n in differ)
        raise ValueError(
            f"The processes of this multi-host run were started with different "
            f"arguments: {', '.join(differ)} differ between hosts (process "
            f"{jax.process_index()} has {mine}). Run the same command on every host."
        )


def gathered_copy(model):
    """The model to save from a multi-host run: every process calls it (the sharded
    weights are gathered across the hosts, a collective); process 0 gets an unsharded
    copy built from `model.get_config()` with those weights, the others None. On one
    host it returns `model` itself (its arrays are all local).

        trained = gathered_copy(pretrainer.backbone)
        if trained is not None:
            trained.save_to_preset("trained")
        barrier("preset_written")
    """
    if process_count() == 1:
        return model
    import jax  # lazy: JAX backend only (other backends never import it)

    values = [to_numpy(w) for w in model.weights]
    if jax.process_index() != 0:
        return None
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        copy = type(model).from_config(model.get_config())
        copy.set_weights(values)
    finally:
        keras.distribution.set_distribution(distribution)
    return copy
