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

Modules: `distribution.mesh` (meshes, layouts, the checked distributions) and
`distribution.multihost` (the multi-process runtime and the helpers for every host);
layer 3, over models and the preset registry.
"""

from keras_siglip2.distribution.mesh import (  # noqa: F401
    _axis_sizes,
    make_mesh,
    _tower_configs,
    check_divisibility,
    _check_batch_fits,
    SigLIP2DataParallel,
    SigLIP2ModelParallel,
    setup_distribution,
)
from keras_siglip2.distribution.multihost import (  # noqa: F401
    ENV_ADDRESS,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    ENV_INIT_TIMEOUT,
    ENV_HEARTBEAT_TIMEOUT,
    DEFAULT_INIT_TIMEOUT,
    DEFAULT_HEARTBEAT_TIMEOUT,
    _env_int,
    initialize_multihost,
    _wait_for_coordinator,
    process_count,
    to_numpy,
    barrier,
    check_same_on_all_hosts,
    gathered_copy,
)
from keras_siglip2.models.layout_map import (  # noqa: F401 (part of this module's API)
    DATA_AXIS,
    LAYOUT_RULES,
    MODEL_AXIS,
    _check_axis_names,
    get_layout_map,
    layout_rules,
)
