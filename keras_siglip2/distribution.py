"""Data and model parallel SigLIP 2 training with `keras.distribution` (JAX backend).

The paper trains on TPU pods with the batch split over devices and the parameters
sharded FSDP-style (paper sec. 2; big_vision's `fsdp` sharding). Here:

- `make_mesh("batch=4,model=2")` builds a `keras.distribution.DeviceMesh` with a data
  axis `batch` and a parameter-sharding axis `model`.
- `get_layout_map(device_mesh)` (also `SigLIP2Backbone.get_layout_map`) shards every
  large variable over the `model` axis by regular expressions over variable paths: the
  embeddings, position embeddings / grid, attention and MLP kernels, the MAP probe, the
  text head, and the same layers anywhere under a prefix (the EMA teacher
  `teacher_vision_encoder/...`, the LocCa decoder `locca_decoder/...`) plus the
  decoder's image and output projections and the SILC / TIPS projection heads
  (`silc_head`, `tips_head` and their `teacher_*` copies). Small variables (biases,
  LayerNorms, t and b, mask tokens, centers) are replicated. Optimizer slots follow
  their variable.
- `setup_distribution("batch=4,model=2", batch_size=..., backbone=...)` checks that the
  mesh fits the devices, the batch and the model (heads, widths) before
  anything is built, and sets a `DataParallel` (model axis 1) or `ModelParallel`
  distribution (`SigLIP2DataParallel` / `SigLIP2ModelParallel`: they also check each
  batch against the batch axis, raising a ValueError that names both numbers, and
  replicate, with a one-line warning naming it, a variable whose sharded dimension the
  model axis does not divide, e.g. a LocCa vocabulary of 1801).
- `initialize_multihost()` starts JAX's multi-process runtime
  (`jax.distributed.initialize()`, with bounded start-up and heartbeat timeouts, gloo
  collectives on CPU) on TPU pods / multi-host GPU clusters; call it first. Helpers
  for code running on every host: `to_numpy` (reads a sharded array, gathering it
  across hosts), `barrier`, `check_same_on_all_hosts` (mismatched commands named at
  start-up) and `gathered_copy` (an unsharded copy of a model on process 0, to save).

The sigmoid loss across devices is `keras_siglip2.training.losses.distributed`;
`SigLIP2Pretrainer` switches to it by itself under a distribution whose batch axis spans
more than one device.
"""

import json
import math
import os
import warnings

import keras

from keras_siglip2.models.layout_map import (  # noqa: F401 (part of this module's API)
    DATA_AXIS,
    LAYOUT_RULES,
    MODEL_AXIS,
    _check_axis_names,
    get_layout_map,
    layout_rules,
)


def _axis_sizes(device_mesh):
    return dict(zip(device_mesh.axis_names, device_mesh.shape))


def make_mesh(spec="batch=-1", devices=None, axis_names=(DATA_AXIS, MODEL_AXIS)):
    """A 2-D `DeviceMesh` (data axis, model axis) from a string like "batch=4,model=2".

    An axis left out is 1 for `model` and "all the remaining devices" for `batch`; one
    size may be -1 (inferred). The sizes must multiply to the number of devices.

    Args:
        spec: "NAME=SIZE,..." with NAME among `axis_names`.
        devices: the devices (default: `keras.distribution.list_devices()`).
        axis_names: (data axis, model axis) names.
    """
    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    data_axis, model_axis = axis_names
    if not isinstance(spec, str):
        raise TypeError(f"`mesh` must be a string like \"batch=4,model=2\"; got {spec!r}.")
    sizes = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(
                f"`mesh`={spec!r}: entry {item!r} must be NAME=SIZE, e.g. "
                f"\"{data_axis}=4,{model_axis}=2\"."
            )
        if name not in axis_names:
            raise ValueError(
                f"`mesh`={spec!r}: unknown axis name {name!r}; the axes are "
                f"{data_axis!r} (data parallel) and {model_axis!r} (parameter sharding)."
            )
        if name in sizes:
            raise ValueError(f"`mesh`={spec!r}: axis {name!r} is given twice.")
        try:
            size = int(value)
        except ValueError:
            size = 0
        if size < 1 and size != -1:
            raise ValueError(
                f"`mesh`={spec!r}: the size of axis {name!r} must be a positive integer "
                f"(or -1 to infer it); got {value.strip()!r}."
            )
        sizes[name] = size
    sizes.setdefault(model_axis, 1)
    sizes.setdefault(data_axis, -1)
    count = len(devices)
    inferred = [name for name, size in sizes.items() if size == -1]
    if len(inferred) > 1:
        raise ValueError(f"`mesh`={spec!r}: at most one axis size may be -1.")
    if inferred:
        known = math.prod(size for size in sizes.values() if size != -1)
        if count % known:
            raise ValueError(
                f"`mesh`={spec!r}: {count} devices cannot be split into axes of size "
                f"{known} ({sizes})."
            )
        sizes[inferred[0]] = count // known
    shape = (sizes[data_axis], sizes[model_axis])
    if math.prod(shape) != count:
        raise ValueError(
            f"`mesh`={spec!r} needs {data_axis} x {model_axis} = {shape[0]} x {shape[1]} = "
            f"{math.prod(shape)} devices, but {count} are available; the sizes must "
            f"multiply to {count}."
        )
    return keras.distribution.DeviceMesh(shape, list(axis_names), devices)


def _tower_configs(backbone):
    """{"vision_encoder": config, "text_encoder": config} of a backbone (or a
    pretrainer's), its `get_config()`, a preset directory or a preset name."""
    if isinstance(backbone, (str, os.PathLike)):
        path = os.fspath(backbone)
        if not os.path.isdir(path):  # a preset name: its architecture, no download
            from keras_siglip2.preset_registry import get_preset

            architecture = get_preset(path)["architecture"]
            return {"vision_encoder": architecture["vision"], "text_encoder": architecture["text"]}
        with open(os.path.join(path, "config.json")) as f:
            backbone = json.load(f)
    if hasattr(backbone, "backbone") and hasattr(backbone.backbone, "vision_encoder"):
        backbone = backbone.backbone  # a pretrainer
    if hasattr(backbone, "get_config") and not isinstance(backbone, dict):
        backbone = backbone.get_config()
    if not isinstance(backbone, dict):
        raise TypeError(
            "`backbone` must be a SigLIP2Backbone, its config dict, a preset name or a "
            f"preset directory; got {type(backbone).__name__}."
        )
    config = backbone.get("config", backbone)
    towers = {}
    for key in ("vision_encoder", "text_encoder"):
        tower = config.get(key)
        if tower is None:
            raise ValueError(f"The backbone config has no {key!r} entry: {sorted(config)}.")
        if hasattr(tower, "get_config"):
            tower = tower.get_config()
        towers[key] = tower.get("config", tower)
    return towers


def check_divisibility(
    device_mesh,
    batch_size=None,
    backbone=None,
    model_parallel_dim_name=MODEL_AXIS,
    data_parallel_dim_name=DATA_AXIS,
):
    """Raises a ValueError unless the mesh splits the batch and the model evenly.

    Checked: the global `batch_size` over the data axis, and for a `backbone` (instance,
    config, preset name or directory) every sharded size over the model axis: each tower's
    `num_heads` (each device holds whole heads of the q/k/v projections), `hidden_dim`,
    `intermediate_dim` and the text projection width. (Sizes outside the backbone,
    such as the LocCa vocabulary, are not errors: `SigLIP2ModelParallel` replicates a
    variable whose dimension the model axis does not divide, with a warning.)
    """
    sizes = _axis_sizes(device_mesh)
    _check_axis_names(
        device_mesh,
        model_parallel_dim_name=model_parallel_dim_name,
        data_parallel_dim_name=data_parallel_dim_name,
    )
    data, model = sizes[data_parallel_dim_name], sizes[model_parallel_dim_name]
    if batch_size is not None and batch_size % data:
        raise ValueError(
            f"The global batch size {batch_size} must be divisible by the "
            f"{data_parallel_dim_name!r} axis of the mesh ({data} devices); use a "
            f"multiple of {data}."
        )
    if backbone is None or model == 1:
        return
    for tower, config in _tower_configs(backbone).items():
        names = ["num_heads", "hidden_dim", "intermediate_dim"]
        names += ["projection_dim"] if tower == "text_encoder" else []
        for name in names:
            value = config.get(name)
            if value is not None and value % model:
                what = "attention heads" if name == "num_heads" else name
                raise ValueError(
                    f"The {model_parallel_dim_name!r} axis of the mesh ({model} devices) "
                    f"must divide the {what} of the {tower} ({name}={value}); choose a "
                    f"{model_parallel_dim_name} size that divides {value}."
                )


def _check_batch_fits(distribution, data_shape):
    """Raises a ValueError unless the global batch of an input of (per-process) shape
    `data_shape` splits evenly over the distribution's batch axis. Keras asks for the
    layout of every input of a step before the step runs, so a batch that does not fit
    fails here, before any work, instead of inside the backend."""
    if not data_shape or data_shape[0] is None:
        return
    axis = distribution.batch_dim_name
    size = _axis_sizes(distribution.device_mesh).get(axis, 1)
    batch = int(data_shape[0])
    try:
        import jax

        processes = jax.process_count() if keras.backend.backend() == "jax" else 1
    except ImportError:  # pragma: no cover
        processes = 1
    if (batch * processes) % size:
        hosts = f" ({batch} per host x {processes} hosts)" if processes > 1 else ""
        raise ValueError(
            f"The global batch size {batch * processes}{hosts} of an input of shape "
            f"{tuple(data_shape)} must be divisible by the {axis!r} axis of the mesh "
            f"({size} devices); use a batch size that is a multiple of {size} (and drop "
            "the last incomplete batch, e.g. `dataset.batch(..., drop_remainder=True)`)."
        )


class SigLIP2DataParallel(keras.distribution.DataParallel):
    """`keras.distribution.DataParallel` whose data layout first checks that every
    batch splits evenly over the devices (a clear ValueError instead of a backend
    error)."""

    def get_data_layout(self, data_shape):
        _check_batch_fits(self, data_shape)
        return super().get_data_layout(data_shape)


class SigLIP2ModelParallel(keras.distribution.ModelParallel):
    """`keras.distribution.ModelParallel` that checks each variable's layout against its
    shape when the variable is created.

    A spec of the wrong rank raises a ValueError naming the variable path. A sharded
    dimension the mesh axis does not divide (e.g. the LocCa decoder's output kernel,
    vocabulary 1801 = tokenizer + 1024 location bins, under `model=2`) does not fail:
    that variable is replicated and a one-line warning names it, its shape and the
    mesh. Replicating rather than padding is the choice made here: padding a vocabulary
    would change the model's logits and its saved shapes (a preset trained on a mesh
    would not load as the same model elsewhere), while replicating one variable only
    costs that variable's memory on each device of the model axis. Every batch is
    checked to split evenly over the batch axis, as in `SigLIP2DataParallel`."""

    def get_data_layout(self, data_shape):
        _check_batch_fits(self, data_shape)
        return super().get_data_layout(data_shape)

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        if getattr(variable, "_layout", None) is not None:
            return layout  # set explicitly (optimizer slots copy their variable's)
        shape = tuple(variable.shape)
        axes = tuple(layout.axes)
        sizes = _axis_sizes(self.device_mesh)
        if len(axes) != len(shape):
            raise ValueError(
                f"The layout {axes} for variable {variable.path!r} has rank {len(axes)}, "
                f"but the variable has shape {shape}. Rename the layer or add a "
                "LayoutMap entry for it."
            )
        for dim, axis in zip(shape, axes):
            if axis is not None and dim % sizes[axis]:
                warnings.warn(
                    f"Variable {variable.path!r} of shape {shape} is replicated: {dim} is "
                    f"not divisible by the {sizes[axis]} devices of axis {axis!r} "
                    f"(layout {axes}, mesh {sizes}).",
                    stacklevel=2,
                )
                return keras.distribution.TensorLayout(
                    [None] * len(shape), self.device_mesh
                )
        return layout


def setup_distribution(
    mesh="batch=-1",
    batch_size=None,
    backbone=None,
    devices=None,
    set_global=True,
    auto_shard_dataset=False,
    model_parallel_dim_name=MODEL_AXIS,
    data_parallel_dim_name=DATA_AXIS,
):
    """Checks and creates the distribution for a mesh spec (as `siglip2 train --mesh`).

    A model axis of size 1 gives `SigLIP2DataParallel` (`keras.distribution.DataParallel`)
    over all devices; otherwise `SigLIP2ModelParallel` with `get_layout_map`. Build the
    model (backbone or `SigLIP2Pretrainer`: towers, LocCa decoder, heads and teacher
    copies all follow the layout map) and call `fit` under it; the pretrainer then
    computes its sigmoid loss with the ring across the batch axis
    (`training.losses.distributed`). Everything is checked
    (`make_mesh`, `check_divisibility`) before the distribution is set.

    Args:
        mesh: "batch=4,model=2" (see `make_mesh`) or a `DeviceMesh`.
        batch_size: the global batch size, checked against the data axis.
        backbone: optional SigLIP2Backbone / pretrainer / config / preset name or
            directory to check.
        devices: optional device list (default: all).
        set_global: also `keras.distribution.set_distribution(...)` it.
        auto_shard_dataset: let Keras split a global `tf.data` dataset between the
            hosts of a multi-host run. False by default: `image_text_dataset` already
            reads this host's share (num_hosts / host_index from JAX), and its
            `batch_size` is per host (global batch = per-host batch x hosts).

    Returns:
        The distribution (use it globally or as `with distribution.scope():`).
    """
    if isinstance(mesh, keras.distribution.DeviceMesh):
        device_mesh = mesh
    else:
        device_mesh = make_mesh(
            mesh, devices, axis_names=(data_parallel_dim_name, model_parallel_dim_name)
        )
    check_divisibility(
        device_mesh,
        batch_size,
        backbone,
        model_parallel_dim_name=model_parallel_dim_name,
        data_parallel_dim_name=data_parallel_dim_name,
    )
    if _axis_sizes(device_mesh)[model_parallel_dim_name] == 1:
        flat = list(device_mesh.devices.flatten())
        distribution = SigLIP2DataParallel(
            device_mesh=keras.distribution.DeviceMesh(
                (len(flat),), [data_parallel_dim_name], flat
            ),
            auto_shard_dataset=auto_shard_dataset,
        )
    else:
        distribution = SigLIP2ModelParallel(
            layout_map=get_layout_map(
                device_mesh, model_parallel_dim_name, data_parallel_dim_name
            ),
            batch_dim_name=data_parallel_dim_name,
            auto_shard_dataset=auto_shard_dataset,
        )
    if set_global:
        keras.distribution.set_distribution(distribution)
    return distribution


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
    import jax

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
    import socket
    import time

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
    import jax

    return jax.process_count()


def to_numpy(value):
    """A NumPy copy of a (possibly multi-host, sharded) array. Every process must call
    it for the same arrays in the same order when some are not on this host alone (it
    then gathers them across the hosts)."""
    import numpy as np

    if keras.backend.backend() != "jax":
        return keras.ops.convert_to_numpy(value)
    import jax

    value = getattr(value, "value", value)  # a keras Variable
    if not isinstance(value, jax.Array) or value.is_fully_addressable:
        return np.asarray(value)
    if value.is_fully_replicated:
        return np.asarray(value.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def barrier(name):
    """Waits until every process reaches the barrier `name` (no-op on one host)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def check_same_on_all_hosts(fields):
    """Raises a ValueError on every process unless all processes pass equal `fields`
    (a dict name -> JSON-able value, e.g. the command's options), naming the fields
    that differ and this host's value: mismatched commands fail at start-up instead of
    deadlocking in the first collective. No-op on one host."""
    if process_count() == 1:
        return
    import hashlib

    import numpy as np
    from jax.experimental import multihost_utils

    names = sorted(fields)
    digests = np.array([
        int.from_bytes(hashlib.sha256(json.dumps(fields[n], sort_keys=True, default=str)
                                      .encode()).digest()[:4], "little") & 0x7FFFFFFF
        for n in names
    ], np.int32)
    every = np.asarray(multihost_utils.process_allgather(digests))  # (processes, fields)
    differ = [n for n, column in zip(names, every.T) if len(set(column.tolist())) > 1]
    if differ:
        import jax

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
    import jax

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
