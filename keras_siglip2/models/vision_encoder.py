"""Fixed-resolution SigLIP 2 image tower (paper sec. 2; big_vision `vit.py`): linear
patch stem, learned 1-D position embedding, pre-LN transformer, final LayerNorm and MAP
head. The pooled MAP output is the image embedding (no projection)."""

import keras
import numpy as np
from keras import ops

from keras_siglip2.layers import SigLIP2PositionEmbedding
from keras_siglip2.layers.config import ConfigAttributes
from keras_siglip2.layers.position_grid import antialiased_bilinear_matrices
from keras_siglip2.layers.transformer import LAYER_NORM_EPSILON
from keras_siglip2.models.input_checks import check_float_images
from keras_siglip2.models.tower import (
    NORM_AND_ATTENTION_KEYS,
    STACK_CONFIG_KEYS,
    SigLIP2Tower,
)


def image_size_pair(image_size):
    """`224` or `(224, 224)` -> (224, 224)."""
    if isinstance(image_size, int):
        return (image_size, image_size)
    pair = tuple(int(s) for s in image_size)
    if len(pair) != 2:
        raise ValueError(f"`image_size` must be an int or (height, width); got {image_size!r}.")
    return pair


def replace_masked_tokens(tokens, token_mask, mask_token):
    """`tokens` (B, N, d) with the positions where `token_mask` (B, N) is nonzero
    replaced by `mask_token` (broadcastable to (d,))."""
    if mask_token is None:
        raise ValueError("`token_mask` was given without a `mask_token`.")
    mask = keras.ops.cast(token_mask, "bool")[..., None]
    mask_token = keras.ops.reshape(keras.ops.cast(mask_token, tokens.dtype), (-1,))
    return keras.ops.where(mask, mask_token[None, None, :], tokens)


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2VisionEncoder(ConfigAttributes, SigLIP2Tower):
    """Fixed-resolution SigLIP 2 ViT with MAP pooling.

    Args:
        patch_size: int. Square patch side in pixels (14, 16 or 32 in the releases).
        hidden_dim, num_layers, num_heads, intermediate_dim: tower sizes
            (B: 768/12/12/3072, L: 1024/24/16/4096, So400m: 1152/27/16/4304,
            g-opt: 1536/40/16/6144).
        image_size: int or (height, width). Input resolution; pixels that do not fill
            a whole patch are ignored (So400m/14 at 384 uses 27 x 27 patches).
        layer_norm_epsilon: float, 1e-6.
        attention_implementation: "auto" (default), "flash" or "xla"
            (`layers/attention.py`).

    Input `{"images": (B, H, W, 3)}` float in [-1, 1]; output (B, hidden_dim).
    """

    CONFIG_KEYS = ("patch_size", *STACK_CONFIG_KEYS, "image_size", *NORM_AND_ATTENTION_KEYS)

    def __init__(
        self,
        patch_size,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        image_size=224,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        attention_implementation="auto",
        dtype=None,
        name="vision_encoder",
        **kwargs,
    ):
        height, width = image_size_pair(image_size)
        if height < patch_size or width < patch_size:
            raise ValueError(
                f"`image_size`={image_size} is smaller than `patch_size`={patch_size}."
            )
        self.grid_size = (height // patch_size, width // patch_size)
        self._build_patch_embedding(patch_size, hidden_dim, dtype)
        self.position_embedding = SigLIP2PositionEmbedding(
            self.grid_size[0] * self.grid_size[1],
            hidden_dim,
            dtype=dtype,
            name="position_embedding",
        )
        self._build_encoder(
            hidden_dim, num_layers, num_heads, intermediate_dim, layer_norm_epsilon, dtype,
            map_head=True, attention_implementation=attention_implementation,
        )

        images = keras.Input(shape=(height, width, 3), name="images")
        with keras.name_scope(name):  # variable paths start with the tower's name
            pooled = self.head(self._tokens(images))
        super().__init__(
            inputs={"images": images}, outputs=pooled, dtype=dtype, name=name, **kwargs
        )
        image_size = (height, width)
        self.store_config(locals())

    @property
    def image_shape(self):
        return (*self.image_size, 3)

    def _tokens(self, images, token_mask=None, mask_token=None):
        x = self.patch_embedding(images)
        if token_mask is not None:
            x = replace_masked_tokens(x, token_mask, mask_token)
        p = self.patch_embedding.patch_size
        grid = (images.shape[1] // p, images.shape[2] // p)
        if grid == tuple(self.grid_size):
            x = self.position_embedding(x)
        else:
            x = x + ops.cast(self.resized_position_embedding(grid), x.dtype)
        return self._run_encoder(x)

    def resized_position_embedding(self, grid):
        """The learned position embedding resized to another (rows, cols) patch grid
        with the antialiased bilinear resize of the resolution switch
        (`training/resize.py`): (1, rows * cols, hidden_dim), differentiable in the
        embedding. Used for images at another resolution (`any_resolution=True`)."""
        rows, cols = (int(g) for g in grid)
        g_h, g_w = self.grid_size
        table = ops.reshape(self.position_embedding.embeddings, (g_h, g_w, self.hidden_dim))
        a_h = antialiased_bilinear_matrices(np.array([rows], "int32"), g_h, rows)[0]
        a_w = antialiased_bilinear_matrices(np.array([cols], "int32"), g_w, cols)[0]
        resized = ops.einsum("ai,ijd,bj->abd", a_h, ops.cast(table, "float32"), a_w)
        return ops.reshape(resized, (1, rows * cols, self.hidden_dim))

    def check_inputs(self, inputs, any_resolution=False):
        """{"images": ...} (or the images) validated; raises ValueError if bad.
        `any_resolution`: any size of at least one patch instead of `image_size`."""
        images = inputs["images"] if isinstance(inputs, dict) else inputs
        expected = self.image_shape
        shape = tuple(getattr(images, "shape", ()))
        if any_resolution and len(shape) == 4 and None not in shape[1:3]:
            if min(shape[1:3]) < self.patch_size:
                raise ValueError(
                    f"`images` must be at least one patch ({self.patch_size} px) per side; "
                    f"got shape {shape}."
                )
            expected = (shape[1], shape[2], expected[2])
        check_float_images("images", images, expected)
        return {"images": images}

    def __call__(self, inputs, *args, **kwargs):
        return super().__call__(self.check_inputs(inputs), *args, **kwargs)

    def get_tokens(self, inputs, token_mask=None, mask_token=None, any_resolution=False):
        """Patch tokens after the final LayerNorm, before pooling: (B, N, hidden_dim).

        `token_mask` (B, N), 1 = masked, with `mask_token` (hidden_dim,) or
        (1, 1, hidden_dim): the patch-stem outputs at masked positions are replaced by
        the mask token before the position embedding is added (TIPS masked
        prediction, paper sec. 2.3). Without them the result is unchanged.
        `any_resolution=True` accepts images of another size (e.g. SILC's small local
        crops): the position embedding is resized to their patch grid
        (`resized_position_embedding`), as DINO-style students do.
        """
        images = self.check_inputs(inputs, any_resolution)["images"]
        return self._tokens(images, token_mask, mask_token)

    def get_pooled_and_tokens(self, inputs, token_mask=None, mask_token=None,
                              any_resolution=False):
        """One pass giving the pooled embedding (B, hidden_dim) and the un-pooled
        tokens (B, N, hidden_dim) it was pooled from (for LocCa / TIPS training)."""
        tokens = self.get_tokens(inputs, token_mask, mask_token, any_resolution)
        return self.head(tokens), tokens
