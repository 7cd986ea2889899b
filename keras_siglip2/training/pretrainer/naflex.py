"""The NaFlex stage of `SigLIP2Pretrainer` (paper sec. 2.4.2: the NaFlex variants continue
from the fixed-resolution run at 90 % of training, with the sigmoid and LocCa losses
only): `switch_to_naflex` converts the fixed-resolution image tower to a NaFlex tower in
place and carries the optimizer state over; `images_to_naflex` lets a batch of
fixed-size images feed the NaFlex tower (one patch per p x p block, no padding) when
the data pipeline does not (yet) deliver NaFlex patches.

The conversion: the patch stem (a Dense over (py, px, c)-flattened patches in both
towers), the transformer, the final LayerNorm and the MAP head are copied as they are;
the learned (gh * gw, d) position embedding becomes the (G, G, d) NaFlex grid (G =
max(gh, gw) by default; bilinear-resized when G differs from the fixed grid), which
the NaFlex tower resizes per image to that image's patch grid. On a G x G image the
NaFlex tower therefore computes what the fixed tower did.
"""

import keras
import numpy as np
from keras import ops

from keras_siglip2.checks import check_positive_int
from keras_siglip2.layers.embeddings import patchify
from keras_siglip2.models.naflex_vision_encoder import (
    NAFLEX_INPUT_NAMES,
    SigLIP2NaFlexVisionEncoder,
)
from keras_siglip2.training import resize
from keras_siglip2.training.pretrainer.recipe import is_fixed_resolution
from keras_siglip2.training.pretrainer.resolution import (
    carry_optimizer_state,
    rebuilt_backbone,
)

_POSITION = "position_embedding/embeddings"


def _grid_value(value, old_grid, size):
    """A fixed tower's (1, gh * gw, d) position embedding (or an optimizer slot of it)
    as the NaFlex (G, G, d) grid."""
    resized = resize.resize_position_embedding(value, old_grid, (size, size))
    return np.asarray(resized).reshape(size, size, -1)


def naflex_tower_from_fixed(vision, max_num_patches=256, position_grid_size=None):
    """A `SigLIP2NaFlexVisionEncoder` with the weights of the fixed tower `vision`."""
    check_positive_int("max_num_patches", max_num_patches)
    check_positive_int("position_grid_size", position_grid_size, allow_none=True)
    size = position_grid_size or max(vision.grid_size)
    naflex = SigLIP2NaFlexVisionEncoder(
        vision.patch_size, vision.hidden_dim, vision.num_layers, vision.num_heads,
        vision.intermediate_dim, position_grid_size=size, max_num_patches=max_num_patches,
        layer_norm_epsilon=vision.layer_norm_epsilon, dtype=vision.dtype_policy,
        name=vision.name,
    )
    old = {w.path.split("/", 1)[-1]: w for w in vision.weights}
    for new_w in naflex.weights:
        rel = new_w.path.split("/", 1)[-1]
        if rel.endswith("position_grid/grid"):
            value = _grid_value(ops.convert_to_numpy(old[_POSITION].value),
                                vision.grid_size, size)
        else:
            value = ops.convert_to_numpy(old[rel].value)
        new_w.assign(np.asarray(value).astype(new_w.dtype))
    naflex.trainable = vision.trainable
    return naflex


def images_to_naflex(images, patch_size):
    """The three NaFlex inputs of (B, H, W, 3) images: every p x p block a real patch
    (row-major, (py, px, c) order), positions on the (H // p, W // p) grid, no padding."""
    batch = ops.shape(images)[0]
    rows, cols = images.shape[1] // patch_size, images.shape[2] // patch_size
    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1)
    positions = ops.convert_to_tensor(grid.reshape(1, rows * cols, 2).astype("int32"))
    return {
        "pixel_patches": patchify(images, patch_size),
        "patch_positions": ops.tile(positions, (batch, 1, 1)),
        "patch_mask": ops.ones((batch, rows * cols), "int32"),
    }


def has_naflex_inputs(batch):
    return any(name in batch for name in NAFLEX_INPUT_NAMES)


class NaFlexMixin:
    """`switch_to_naflex` of `SigLIP2Pretrainer`."""

    def switch_to_naflex(self, max_num_patches=256, position_grid_size=None):
        """The NaFlex stage switch (paper sec. 2.4.2), in place: the fixed-resolution
        tower becomes a NaFlex tower (`naflex_tower_from_fixed`: position embedding to
        the learned (G, G) grid), the optimizer keeps its step and moments (the
        position embedding's moments converted like the embedding), and SILC / TIPS
        are turned off (their heads, mask token and teacher stay as unused state, so
        a checkpoint keeps its layout). Resumable: the stage is recorded in the saved
        `vision_resolution` variable as (G, max_num_patches, 0). Batches then carry
        the NaFlex inputs, or "images" that the step cuts into patches
        (`images_to_naflex`). Returns True.

        Raises ValueError for a NaFlex tower (e.g. a NaFlex preset) or bad sizes.
        """
        vision = self.backbone.vision_encoder
        if not is_fixed_resolution(vision):
            raise ValueError(
                "switch_to_naflex() converts a fixed-resolution image tower; this "
                f"backbone already has a {type(vision).__name__} (a NaFlex preset trains "
                "as NaFlex from the start)."
            )
        naflex = naflex_tower_from_fixed(vision, max_num_patches, position_grid_size)
        size, old_grid = naflex.position_grid_size, vision.grid_size
        # `get_config` keeps describing the pretrainer as built (fixed tower, SILC /
        # TIPS flags): a `.keras` file then rebuilds that layout, and loading its
        # variables (`vision_resolution` first) makes this switch again.
        self._config_before_naflex = {
            "backbone": keras.layers.serialize(self.backbone),
            "self_distillation": self.use_self_distillation,
            "masked_prediction": self.use_masked_prediction,
        }
        with self.editing_state():
            old_trainable = list(self.trainable_variables)
            self._replace_layer("backbone", rebuilt_backbone(self.backbone, naflex))
            self.use_self_distillation = self.use_masked_prediction = False
            self.teacher_stage_active.assign(0.0)
            self._teacher_stage_on = False
            self._naflex_from_images = True
            self.vision_resolution.assign(np.array([size, max_num_patches, 0], "int32"))
            optimizer = getattr(self, "optimizer", None)
            if optimizer is not None and optimizer.built:
                self.optimizer = carry_optimizer_state(
                    optimizer, old_trainable, list(self.trainable_variables),
                    lambda path, value: _grid_value(value, old_grid, size)
                    if path.endswith(_POSITION) else None)
        return True
