"""Dense (per-patch) features of the SigLIP 2 image tower and a linear probe on them
(paper sec. 3.3 / Table 5: semantic segmentation and depth estimation by probing the
frozen patch features; the TIPS / SILC losses of sec. 2.3 exist to improve them).

`patch_features` returns the patch tokens after the tower's final LayerNorm, before
MAP pooling, laid out on the patch grid: (B, H/p, W/p, D) for the fixed-resolution
tower and, for NaFlex, one (h, w, D) map per image placed by its `patch_positions`.
`LinearProbe` is a 1x1 (per-location) Dense layer on such maps, trained for
segmentation (class logits) or depth (regression).
"""

import keras
import numpy as np

from keras_siglip2.tasks.embedding import convert_images
from keras_siglip2.media.images import as_image_list, check_files_exist, read_images
from keras_siglip2.checks import check_positive_int


def _vision_encoder(model):
    vision = getattr(model, "vision_encoder", model)
    if not hasattr(vision, "get_tokens") or not hasattr(vision, "patch_size"):
        raise TypeError(
            "`model` must be a SigLIP2Backbone, SigLIP2VisionEncoder or "
            f"SigLIP2NaFlexVisionEncoder; got {type(model).__name__}."
        )
    return vision


def is_naflex(model):
    """True for a NaFlex image tower (or a backbone holding one)."""
    return not hasattr(_vision_encoder(model), "image_size")


def _preprocess(images, preprocessor):
    items = as_image_list(images)
    check_files_exist(items)
    arrays, _, _ = read_images(items, skip_unreadable=False)
    return convert_images(preprocessor, arrays)


def scatter_to_grids(tokens, patch_positions, patch_mask):
    """(B, N, D) tokens of NaFlex sequences -> a list of B (h, w, D) maps, each real
    patch placed at its (row, col); h, w = 1 + the largest row, col of the image."""
    tokens = np.asarray(tokens)
    positions = np.asarray(patch_positions)
    mask = np.asarray(patch_mask).astype(bool)
    maps = []
    for b in range(tokens.shape[0]):
        pos = positions[b][mask[b]]
        h, w = int(pos[:, 0].max()) + 1, int(pos[:, 1].max()) + 1
        grid = np.zeros((h, w, tokens.shape[-1]), tokens.dtype)
        grid[pos[:, 0], pos[:, 1]] = tokens[b][mask[b]]
        maps.append(grid)
    return maps


def patch_features(model, inputs, preprocessor=None):
    """Patch-token feature maps of the image tower.

    Args:
        model: a `SigLIP2Backbone` or its vision encoder.
        inputs: the tower's inputs (`{"images": (B, H, W, 3)}` in [-1, 1] or the
            image batch itself for the fixed tower; the three NaFlex inputs), or, when
            `preprocessor` is given, raw images (paths, PIL images, [0, 255] arrays).
        preprocessor: optional `SigLIP2Preprocessor` or image converter to apply to
            raw images first.

    Returns: fixed tower: a float32 array (B, H/p, W/p, D); NaFlex: a list of B
    float32 arrays (h_i, w_i, D), one per image on its own patch grid.
    """
    vision = _vision_encoder(model)
    if preprocessor is not None:
        inputs = _preprocess(inputs, preprocessor)
    tokens = np.asarray(keras.ops.convert_to_numpy(vision.get_tokens(inputs)), np.float32)
    if is_naflex(vision):
        return scatter_to_grids(tokens, inputs["patch_positions"], inputs["patch_mask"])
    gh, gw = vision.grid_size
    return tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[-1])


TASKS = ("segmentation", "depth")


@keras.saving.register_keras_serializable(package="keras_siglip2")
class LinearProbe(keras.Model):
    """A linear probe on frozen patch feature maps: one Dense layer applied at every
    location (a 1x1 convolution), optionally resized (bilinear) to the label size.

    Args:
        feature_dim: D, the width of the feature maps.
        num_outputs: number of segmentation classes, or 1 for depth.
        task: "segmentation" (class logits; `compile()` defaults to sparse
            categorical cross-entropy and pixel accuracy) or "depth" (regression;
            mean squared error and mean absolute error).
        output_size: None (predict on the patch grid) or (height, width) to resize
            the predictions to, e.g. the label resolution.

    Input (B, h, w, feature_dim); output (B, h, w, num_outputs) or at `output_size`.

    Example:
    ```python
    maps = patch_features(backbone, images)                  # (B, 14, 14, 768)
    probe = LinearProbe(768, num_outputs=21, output_size=(224, 224))
    probe.compile()
    probe.fit(maps, masks, epochs=10)                         # masks (B, 224, 224) int
    classes = probe.predict_classes(maps)
    ```
    """

    def __init__(self, feature_dim, num_outputs, task="segmentation", output_size=None, **kwargs):
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}; got {task!r}.")
        for name, value in (("feature_dim", feature_dim), ("num_outputs", num_outputs)):
            check_positive_int(name, value)
        if output_size is not None:
            output_size = tuple(int(s) for s in output_size)
            if len(output_size) != 2 or min(output_size) < 1:
                raise ValueError(
                    f"`output_size` must be None or (height, width); got {output_size!r}."
                )
        features = keras.Input(shape=(None, None, int(feature_dim)), name="features")
        outputs = keras.layers.Dense(int(num_outputs), name="linear")(features)
        if output_size is not None:
            outputs = keras.layers.Resizing(*output_size, interpolation="bilinear", name="resize")(
                outputs
            )
        super().__init__(inputs=features, outputs=outputs, **kwargs)
        self.feature_dim = int(feature_dim)
        self.num_outputs = int(num_outputs)
        self.task = task
        self.output_size = output_size

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Defaults by task: segmentation: sparse categorical cross-entropy from
        logits + accuracy; depth: mean squared error + mean absolute error."""
        if loss is None:
            loss = (
                keras.losses.SparseCategoricalCrossentropy(from_logits=True)
                if self.task == "segmentation"
                else keras.losses.MeanSquaredError()
            )
        if metrics is None:
            metrics = (
                [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
                if self.task == "segmentation"
                else [keras.metrics.MeanAbsoluteError(name="mae")]
            )
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def predict_classes(self, features, **kwargs):
        """Segmentation: the arg-max class per location, int (B, h, w)."""
        if self.task != "segmentation":
            raise ValueError("`predict_classes` is for task='segmentation'.")
        return np.argmax(self.predict(features, verbose=0, **kwargs), axis=-1)

    def get_config(self):
        return {
            "feature_dim": self.feature_dim,
            "num_outputs": self.num_outputs,
            "task": self.task,
            "output_size": self.output_size,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


__all__ = ["LinearProbe", "is_naflex", "patch_features", "scatter_to_grids"]
