"""Deprecated alias (kept for one release): `train` moved to
`keras_siglip2.training.recipes.train` (its configuration: `recipes.config.TrainConfig`)."""

from keras_siglip2.training.recipes.train import *  # noqa: F401,F403
from keras_siglip2.training.recipes.train import (  # noqa: F401 (the old module's names)
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_STEPS,
    LOSS_TERMS,
    TrainConfig,
    TrainProgress,
    _check_same_command,
    _data_fingerprint,
    _explicit_mesh_size,
    _make_callbacks,
    _mesh_data_axis,
    _preset_fingerprint,
    _restored_step,
    _start_hosts,
    _step_of,
    check_arguments,
    check_data_path,
    dataset_views,
    train,
)
