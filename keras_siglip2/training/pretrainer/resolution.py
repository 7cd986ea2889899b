"""Resolution adaptation of `SigLIP2Pretrainer` (paper sec. 2.4.1, the 95 % switch of the
fixed-resolution towers): the image tower (and the teacher) rebuilt at a new image size
and / or patch size, the position embedding resized to the new grid, a changed patch
stem PI-resized (FlexiViT), and the optimizer state carried over to the new variables.
`carry_optimizer_state` is shared with the NaFlex switch (`naflex.py`).
"""

import numpy as np
from keras import ops

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder, image_size_pair
from keras_siglip2.training import resize
from keras_siglip2.training.optimizers import clone_optimizer


def _numpy(variable):
    return np.asarray(ops.convert_to_numpy(variable.value))


def resized_value(variable_path, value, kind, old_grid, new_grid, old_p, new_p):
    """New value of a variable (kind "weight") or optimizer slot (kind "slot") at the
    new resolution; None for a slot that restarts from zero."""
    if variable_path.endswith("position_embedding/embeddings"):
        return resize.resize_position_embedding(value, old_grid, new_grid)
    if variable_path.endswith("patch_embedding/dense/kernel"):
        if kind == "slot":
            return None  # zeros
        return resize.pi_resize_patch_kernel(value, old_p, new_p)
    return value


def rebuilt_backbone(old_backbone, new_vision):
    """A `SigLIP2Backbone` with `new_vision`, the old text tower and a copy of the old
    logit head (t, b)."""
    new_backbone = SigLIP2Backbone(
        new_vision,
        old_backbone.text_encoder,
        temperature_init=old_backbone.temperature_init,
        bias_init=old_backbone.bias_init,
        dtype=old_backbone.dtype_policy,
        name=old_backbone.name,
    )
    for new_w, old_w in zip(new_backbone.logit_head.weights,
                            old_backbone.logit_head.weights):
        new_w.assign(ops.copy(old_w.value))
    return new_backbone


def carry_optimizer_state(optimizer, old_trainable, new_trainable, slot_value):
    """A clone of the built `optimizer`, built for `new_trainable` (the same variables
    in the same order, some with new shapes or replaced), with the step and moments of
    `old_trainable`. A slot whose shape changed becomes `slot_value(path, old value)`
    (the old variable's path; None or a wrong shape: zeros)."""
    old_paths = {id(n): o.path for n, o in zip(new_trainable, old_trainable)}
    new_optimizer = clone_optimizer(optimizer)
    new_optimizer.build(new_trainable)
    old_vars, new_vars = optimizer.variables, new_optimizer.variables
    if len(old_vars) != len(new_vars):
        raise RuntimeError(
            "Could not carry the optimizer state over to the new variables "
            f"({len(old_vars)} vs {len(new_vars)} optimizer variables)."
        )
    resized = {}
    for n, o in zip(new_trainable, old_trainable):
        if tuple(n.shape) != tuple(o.shape):
            resized[tuple(o.shape)] = old_paths[id(n)]
    for new_v, old_v in zip(new_vars, old_vars):
        value = _numpy(old_v)
        if tuple(new_v.shape) != tuple(old_v.shape):
            value = slot_value(resized.get(tuple(old_v.shape), ""), value)
            if value is None or tuple(np.shape(value)) != tuple(new_v.shape):
                value = np.zeros(new_v.shape)
        new_v.assign(np.asarray(value).astype(new_v.dtype))
    return new_optimizer


class ResolutionMixin:
    """`adapt_resolution` and the layer replacement it needs."""

    def adapt_resolution(self, image_size, patch_size=None):
        """The 95 % resolution switch of fixed-resolution towers (paper sec. 2.4).

        Resizes the learned position embedding to the new patch grid (bilinear) and,
        when `patch_size` changes (e.g. 16 -> 14), the patch stem by PI-resize; the
        teacher gets the same treatment. The towers are rebuilt at the new size, so
        `pretrainer.backbone` is a new `SigLIP2Backbone` afterwards (sharing the text
        tower). The optimizer keeps its step and moments; the moments of the resized
        position embedding are resized the same way, those of a PI-resized stem
        restart from zero. Returns whether anything changed.
        """
        vision = self.backbone.vision_encoder
        if not isinstance(vision, SigLIP2VisionEncoder):
            raise ValueError(
                "Resolution adaptation applies to fixed-resolution towers; this backbone "
                f"has a {type(vision).__name__}."
            )
        height, width = image_size_pair(image_size)
        old_p = vision.patch_size
        new_p = old_p if patch_size is None else int(patch_size)
        if new_p < 1 or height < new_p or width < new_p:
            raise ValueError(
                f"`target_image_size`={image_size} and patch size {new_p} give no patch."
            )
        if (height, width) == tuple(vision.image_size) and new_p == old_p:
            return False
        grids = (vision.grid_size, (height // new_p, width // new_p), old_p, new_p)
        with self.editing_state():
            self._rebuild_at_resolution((height, width), new_p, grids)
        return True

    def _rebuild_at_resolution(self, image_size, new_p, grids):
        def rebuilt_encoder(encoder):
            config = encoder.get_config()
            config.update(image_size=list(image_size), patch_size=new_p)
            new = SigLIP2VisionEncoder.from_config(config)
            for new_w, old_w in zip(new.weights, encoder.weights):
                rel = old_w.path.split("/", 1)[-1]
                value = resized_value(rel, _numpy(old_w), "weight", *grids)
                new_w.assign(np.asarray(value).astype(new_w.dtype))
            new.trainable = encoder.trainable
            return new

        old_trainable = list(self.trainable_variables)
        new_backbone = rebuilt_backbone(self.backbone,
                                        rebuilt_encoder(self.backbone.vision_encoder))
        self._replace_layer("backbone", new_backbone)
        if self.teacher_vision_encoder is not None:
            self._replace_layer("teacher_vision_encoder",
                                rebuilt_encoder(self.teacher_vision_encoder))
        self.vision_resolution.assign(np.array([*image_size, new_p], "int32"))
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and optimizer.built:
            self.optimizer = carry_optimizer_state(
                optimizer, old_trainable, list(self.trainable_variables),
                lambda path, value: resized_value(path, value, "slot", *grids))

    def _replace_layer(self, attr, new):
        old = getattr(self, attr)
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            if old is None:
                setattr(self, attr, new)
            else:
                self._tracker.replace_tracked_value("layers", old, new)
                setattr(self, attr, new)
        finally:
            if locked:
                self._tracker.lock()
