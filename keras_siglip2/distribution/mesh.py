"""Device meshes and `keras.distribution` layouts for SigLIP 2 (paper sec. 2: the
batch split over devices, parameters sharded FSDP-style as big_vision's `fsdp`):
`make_mesh`, the divisibility checks against the towers, the checked `DataParallel` /
`ModelParallel` distributions and `setup_distribution`. See the package docstring."""

import json
import math
import os
import warnings

import keras

from keras_siglip2.models.layout_map import (
    DATA_AXIS,
    MODEL_AXIS,
    _check_axis_names,
    get_layout_map,
)
from keras_siglip2.preset_registry import get_preset


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
        import jax  # lazy: JAX backend only (other backends never import it)

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
