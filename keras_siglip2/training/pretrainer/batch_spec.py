"""The batch a `SigLIP2Pretrainer` trains on (paper sec. 2: one batch feeds every loss
of the recipe): which fields each configured loss needs, and the check that names the
first missing or malformed one, so that a wrong dataset fails at the first step and not
when a loss switches on at 80 %.
"""

from keras_siglip2.training.pretrainer.recipe import LOCCA_FIELDS, LOCCA_TASKS

_REASONS = {
    "images": "every batch (the image tower)",
    "pixel_patches": "every batch (the NaFlex image tower)",
    "patch_positions": "every batch (the NaFlex image tower)",
    "patch_mask": "every batch (the NaFlex image tower)",
    "token_ids": "the sigmoid loss",
    "local_images": "the SILC self-distillation loss (self_distillation=True)",
    **{field: "the LocCa loss (decoder='locca'; see make_locca_targets)"
       for field in LOCCA_FIELDS},
}


def required_fields(pretrainer):
    """Batch fields needed by the configured losses (also before they switch on)."""
    names = list(pretrainer.backbone.vision_input_names)
    if getattr(pretrainer, "_naflex_from_images", False):
        names = ["images"]  # after `switch_to_naflex`: images, patchified in the step
    fields = names + ["token_ids"]
    if pretrainer.decoder is not None:
        fields += list(LOCCA_FIELDS)
    if pretrainer.use_self_distillation:
        fields.append("local_images")
    return fields


def _check_rank(batch, field, ranks, layout, channels=None):
    shape = tuple(batch[field].shape)
    if len(shape) not in ranks or (channels is not None and shape[-1] != channels):
        raise ValueError(f"Batch field {field!r} must be {layout}; got shape {shape}.")


def _check_locca_fields(batch):
    """The LocCa fields: all (B, L) (one task per example), or all (B, 3, L) (the three
    tasks of LOCCA_TASKS per example)."""
    shapes = {field: tuple(batch[field].shape) for field in LOCCA_FIELDS}
    ranks = {len(shape) for shape in shapes.values()}
    layout = f"(B, L) or (B, {len(LOCCA_TASKS)}, L) (task axis {LOCCA_TASKS})"
    if len(ranks) != 1 or not ranks <= {2, 3} or (
            ranks == {3} and any(s[1] != len(LOCCA_TASKS) for s in shapes.values())):
        raise ValueError(
            f"Batch fields {list(LOCCA_FIELDS)} must all be {layout}; got shapes {shapes}."
        )


def _naflex_fields_given(pretrainer, batch):
    return any(name in batch for name in pretrainer.backbone.vision_input_names)


def check_batch(pretrainer, batch):
    """Raises ValueError naming the first missing / malformed field. With a `curator`
    the training batches are super-batches: the same fields with more examples (their
    size is checked by `curate`)."""
    fields = required_fields(pretrainer)
    if not isinstance(batch, dict):
        raise ValueError(
            "SigLIP2Pretrainer trains on dict batches with the fields "
            f"{fields}; got a {type(batch).__name__}."
        )
    if getattr(pretrainer, "_naflex_from_images", False) and _naflex_fields_given(
            pretrainer, batch):
        fields = list(pretrainer.backbone.vision_input_names) + fields[1:]
    for field in fields:
        if field not in batch:
            raise ValueError(
                f"The batch has no field {field!r}, needed by {_REASONS[field]}. "
                f"Batch fields: {sorted(batch)}; required: {fields}."
            )
    if pretrainer.decoder is not None:
        _check_locca_fields(batch)
    if not pretrainer.fixed_resolution:
        return  # the NaFlex tower checks its three inputs itself
    _check_rank(batch, "images", (4,), "(B, H, W, 3)", channels=3)
    if "teacher_images" in batch:
        _check_rank(batch, "teacher_images", (4,), "(B, H, W, 3)", channels=3)
    if "local_images" in fields:
        _check_rank(batch, "local_images", (5,),
                    "(B, V, h, w, 3) (V local crops per image)", channels=3)
    _check_rank(batch, "token_ids", (2,), "(B, L)")
