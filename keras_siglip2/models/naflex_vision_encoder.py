"""NaFlex SigLIP 2 image tower (paper sec. 2.4; big_vision `naflex_vit.py`, HF
`Siglip2VisionModel`): native aspect ratio, variable sequence length.

Each image arrives as a padded sequence of flattened (py, px, c) patches with their
(row, col) on the image's patch grid and a mask (1 = real patch, 0 = padding). The patches
go through a Dense stem, get the learned 2-D position grid resized (antialiased bilinear)
to the image's grid, then the pre-LN transformer in which padding tokens are never
attended to, the final LayerNorm and the MAP head, which pools real patches only.
"""

import keras
import numpy as np
from keras import ops

from keras_siglip2.layers.config import ConfigAttributes
from keras_siglip2.layers.position_grid import SigLIP2PositionGrid
from keras_siglip2.layers.transformer import LAYER_NORM_EPSILON
from keras_siglip2.models.input_checks import (
    check_value_range,
    concrete_value,
    dtype_name,
)
from keras_siglip2.models.tower import (
    NORM_AND_ATTENTION_KEYS,
    STACK_CONFIG_KEYS,
    SigLIP2Tower,
)

NAFLEX_INPUT_NAMES = ("pixel_patches", "patch_positions", "patch_mask")


def _shape(x):
    return tuple(getattr(x, "shape", np.shape(x)))


def check_naflex_inputs(pixel_patches, patch_positions, patch_mask, patch_dim):
    """Validates the three NaFlex inputs; raises one clear ValueError on bad input.

    Shapes and dtypes are always checked; values only when they are concrete (eager).
    """
    p_shape, pos_shape, m_shape = _shape(pixel_patches), _shape(patch_positions), _shape(patch_mask)
    hint = "Produce them with `SigLIP2NaFlexImageConverter`."
    if len(p_shape) != 3 or p_shape[-1] != patch_dim:
        raise ValueError(
            f"`pixel_patches` must have shape (B, N, {patch_dim}) (flattened "
            f"patch_size x patch_size x 3 patches); got shape {p_shape}. {hint}"
        )
    if len(pos_shape) != 3 or pos_shape[-1] != 2:
        raise ValueError(
            f"`patch_positions` must have shape (B, N, 2) holding (row, col); got shape "
            f"{pos_shape}. {hint}"
        )
    if len(m_shape) != 2:
        raise ValueError(
            f"`patch_mask` must have shape (B, N) (1 = real patch, 0 = padding); got "
            f"shape {m_shape}. {hint}"
        )
    if 0 in (p_shape[1], pos_shape[1], m_shape[1]):
        raise ValueError(
            f"The NaFlex inputs have sequence length N = 0 (shapes {p_shape}, {pos_shape}, "
            f"{m_shape}); every image needs at least one patch (N >= 1). {hint}"
        )
    for axis, what in ((0, "batch size B"), (1, "sequence length N")):
        sizes = {"pixel_patches": p_shape[axis], "patch_positions": pos_shape[axis],
                 "patch_mask": m_shape[axis]}
        known = {k: v for k, v in sizes.items() if v is not None}
        if len(set(known.values())) > 1:
            raise ValueError(
                f"The NaFlex inputs disagree on the {what}: "
                + ", ".join(f"`{k}` has {v}" for k, v in known.items())
                + f" (shapes {p_shape}, {pos_shape}, {m_shape})."
            )
    dtype = dtype_name(pixel_patches)
    if "float" not in dtype:
        raise ValueError(
            f"`pixel_patches` must be floating point in [-1, 1]; got dtype {dtype}. "
            f"Map uint8 pixels to [-1, 1] (x / 127.5 - 1). {hint}"
        )
    for name, x in (("patch_positions", patch_positions), ("patch_mask", patch_mask)):
        dtype = dtype_name(x)
        if "int" not in dtype and not (name == "patch_mask" and dtype == "bool"):
            raise ValueError(f"`{name}` must be integers (int32); got dtype {dtype}.")
    check_value_range("pixel_patches", pixel_patches, -1.0, 1.0)
    mask = concrete_value(patch_mask)
    positions = concrete_value(patch_positions)
    if mask is None or positions is None or mask.size == 0:
        return
    check_patch_layout(np.asarray(positions), np.asarray(mask))


def check_patch_layout(positions, mask):
    """Concrete (B, N, 2) positions and (B, N) mask: every image must have real patches
    at non-negative positions that tile its (h, w) grid (h = 1 + largest row, w = 1 +
    largest col) exactly once, as `SigLIP2NaFlexImageConverter`, big_vision's `patchify`
    and HF's processor produce them. Padding entries may sit anywhere in the sequence;
    their positions are ignored."""
    bad = ~np.isin(mask, (0, 1))
    if bad.any():
        raise ValueError(
            "`patch_mask` must hold only 0 (padding) and 1 (real patch); got the value "
            f"{mask[bad].flat[0]!r}."
        )
    mask = mask.astype(bool)
    for b in range(mask.shape[0]):
        real = positions[b][mask[b]]
        if real.shape[0] == 0:
            raise ValueError(
                f"Image {b} has no real patch: `patch_mask[{b}]` is all zeros. Every "
                "image needs at least one patch with mask 1."
            )
        if real.min() < 0:
            n = int(np.argmax((positions[b] < 0).any(-1) & mask[b]))
            raise ValueError(
                f"`patch_positions[{b}, {n}]` = {positions[b, n].tolist()} is negative; "
                "positions are (row, col) indices on the patch grid, >= 0."
            )
        h, w = (int(v) + 1 for v in real.max(axis=0))
        cells = real[:, 0].astype(np.int64) * w + real[:, 1]
        unique, counts = np.unique(cells, return_counts=True)
        if (counts > 1).any():
            cell = int(unique[np.argmax(counts > 1)])
            raise ValueError(
                f"Image {b} has {int(counts.max())} real patches at (row, col) = "
                f"({cell // w}, {cell % w}) in `patch_positions`; each grid cell must hold "
                "exactly one real patch. Is `patch_mask` 1 on padding entries?"
            )
        if unique.size != h * w:
            raise ValueError(
                f"Image {b}: `patch_positions` of its {unique.size} real patches span a "
                f"{h} x {w} grid ({h * w} cells) but do not fill it; the real patches "
                "must tile the grid (rows 0..h-1, cols 0..w-1) exactly once. Does "
                "`patch_mask` mark real patches as padding?"
            )


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2NaFlexVisionEncoder(ConfigAttributes, SigLIP2Tower):
    """NaFlex SigLIP 2 ViT: variable aspect ratio and sequence length, MAP pooling.

    Args:
        patch_size: int. Square patch side in pixels (16 in the releases).
        hidden_dim, num_layers, num_heads, intermediate_dim: tower sizes
            (B: 768/12/12/3072, So400m: 1152/27/16/4304).
        position_grid_size: int. Side G of the learned (G, G, d) position grid (16).
        max_num_patches: int. The default sequence length N (what
            `SigLIP2NaFlexImageConverter` pads to, the length of exported signatures).
            The model itself accepts any N; under `jit` it compiles once per length.
        layer_norm_epsilon: float, 1e-6.
        attention_implementation: "auto" (default), "flash" or "xla"
            (`layers/attention.py`; the padding mask is given to the kernel folded into
            the keys, `layers.attention.fold_key_mask`).

    Inputs (dict):
        pixel_patches: (B, N, patch_size * patch_size * 3) float in [-1, 1], each patch
            flattened in (py, px, c) order.
        patch_positions: (B, N, 2) int32 (row, col) of each patch on its image's grid.
        patch_mask: (B, N) int32, 1 = real patch, 0 = padding.
    Output: (B, hidden_dim) pooled embedding (not normalized).

    Example:
    ```python
    converter = keras_siglip2.preprocessing.SigLIP2NaFlexImageConverter(16, 256)
    encoder = keras_siglip2.models.SigLIP2NaFlexVisionEncoder(16, 768, 12, 12, 3072)
    embeddings = encoder(converter([image_a, image_b]))  # images of any shape
    ```
    """

    CONFIG_KEYS = (
        "patch_size", *STACK_CONFIG_KEYS, "position_grid_size", "max_num_patches",
        *NORM_AND_ATTENTION_KEYS,
    )

    def __init__(
        self,
        patch_size,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        position_grid_size=16,
        max_num_patches=256,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        attention_implementation="auto",
        dtype=None,
        name="vision_encoder",
        **kwargs,
    ):
        if int(max_num_patches) < 1:
            raise ValueError(f"`max_num_patches` must be >= 1; got {max_num_patches}.")
        if int(position_grid_size) < 1:
            raise ValueError(
                f"`position_grid_size` must be >= 1; got {position_grid_size}."
            )
        self._build_patch_embedding(patch_size, hidden_dim, dtype)
        self.position_grid = SigLIP2PositionGrid(
            position_grid_size, hidden_dim, dtype=dtype, name="position_grid"
        )
        self._build_encoder(
            hidden_dim, num_layers, num_heads, intermediate_dim, layer_norm_epsilon, dtype,
            map_head=True, attention_implementation=attention_implementation,
        )

        patch_dim = patch_size * patch_size * 3
        # The sequence axis is left dynamic: a static N would make the functional model
        # refuse every other length. Shapes stay static per call, so jit compiles once
        # per sequence length.
        pixel_patches = keras.Input(shape=(None, patch_dim), name="pixel_patches")
        patch_positions = keras.Input(shape=(None, 2), dtype="int32", name="patch_positions")
        patch_mask = keras.Input(shape=(None,), dtype="int32", name="patch_mask")
        with keras.name_scope(name):  # variable paths start with the tower's name
            tokens = self._tokens(pixel_patches, patch_positions, patch_mask)
            pooled = self.head(tokens, key_mask=patch_mask)
        super().__init__(
            inputs={
                "pixel_patches": pixel_patches,
                "patch_positions": patch_positions,
                "patch_mask": patch_mask,
            },
            outputs=pooled,
            dtype=dtype,
            name=name,
            **kwargs,
        )
        max_num_patches = int(max_num_patches)
        self.store_config(locals())

    @property
    def patch_dim(self):
        return self.patch_size * self.patch_size * 3

    def _tokens(self, pixel_patches, patch_positions, patch_mask):
        real = ops.cast(patch_mask, "bool")
        # Padding contents never matter: zero them (NaN * 0 would still be NaN).
        pixel_patches = ops.where(real[..., None], pixel_patches, 0.0)
        # Valid positions are >= 0 (`check_inputs` refuses others eagerly); under jit,
        # where values cannot be checked, a negative one must not turn into NaN.
        patch_positions = ops.maximum(patch_positions, 0)
        x = self.patch_embedding(pixel_patches)
        x = self.position_grid(x, patch_positions, patch_mask)
        return self._run_encoder(x, key_mask=patch_mask)

    def check_inputs(self, inputs):
        """The three NaFlex inputs (a dict; extra keys dropped) validated; raises a
        ValueError naming the argument, the value and the expectation if bad."""
        if not isinstance(inputs, dict):
            raise ValueError(
                "`SigLIP2NaFlexVisionEncoder` takes a dict with the keys "
                f"{list(NAFLEX_INPUT_NAMES)}; got {type(inputs).__name__}. Produce it "
                "with `SigLIP2NaFlexImageConverter`."
            )
        missing = [k for k in NAFLEX_INPUT_NAMES if k not in inputs]
        if missing:
            raise ValueError(
                f"NaFlex inputs {missing} are missing; expected the keys "
                f"{list(NAFLEX_INPUT_NAMES)}, got {sorted(inputs)}."
            )
        check_naflex_inputs(
            inputs["pixel_patches"], inputs["patch_positions"], inputs["patch_mask"],
            self.patch_dim,
        )
        return {k: inputs[k] for k in NAFLEX_INPUT_NAMES}

    def __call__(self, inputs, *args, **kwargs):
        return super().__call__(self.check_inputs(inputs), *args, **kwargs)

    def get_tokens(self, inputs):
        """Patch tokens after the final LayerNorm, before pooling: (B, N, hidden_dim).
        Entries at padding positions are meaningless."""
        inputs = self.check_inputs(inputs)
        return self._tokens(
            ops.convert_to_tensor(inputs["pixel_patches"]),
            ops.convert_to_tensor(inputs["patch_positions"]),
            ops.convert_to_tensor(inputs["patch_mask"]),
        )
