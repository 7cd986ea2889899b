"""Random patch masking for TIPS masked prediction (paper sec. 2.3): 50 % of the
student's patch tokens are replaced by a learned mask token, chosen uniformly at random
per image, exactly round(ratio * N) of them per image.

Seeds. `random_patch_mask` draws through `keras.random`, so `seed` may be anything
`keras.random.uniform` accepts:
- a `keras.random.SeedGenerator` owned by the model (the usual choice in a train step:
  its state is a non-trainable variable, so under the stateless JAX train step Keras
  threads it through `StatelessScope` and every step gets a new mask);
- an int (the same mask every call, for tests);
- on JAX, a raw uint32 key array of shape (2,), e.g. `jax.random.key_data(key)` of a
  key split inside a jitted function: it is used as is.
`ratio * N` is rounded with Python's `round` (half to even).
"""

from keras import ops
import keras

from keras_siglip2.training.losses.checks import check_fraction, check_positive_int


def num_masked(num_patches, ratio):
    """round(ratio * num_patches), the number of masked patches per image."""
    return int(round(ratio * num_patches))


def random_patch_mask(batch_size, num_patches, ratio=0.5, seed=None):
    """(B, N) float32 mask, 1 at masked positions, exactly round(ratio * N) ones per row.

    Positions are a uniformly random subset per row: the ranks of i.i.d. uniform
    noise below round(ratio * N) (argsort twice, so ties cannot change the count).

    Args:
        batch_size: int B (or a scalar tensor in a TF graph with unknown batch size).
        num_patches: int N.
        ratio: float in [0, 1], fraction of patches to mask (0.5 in the paper).
        seed: int, `keras.random.SeedGenerator`, or a backend seed tensor (see the
            module docstring); None draws from Keras' global generator (not for
            jitted stateless steps).
    """
    if isinstance(batch_size, int):
        check_positive_int("batch_size", batch_size)
    check_positive_int("num_patches", num_patches)
    check_fraction("ratio", ratio)
    k = num_masked(num_patches, ratio)
    noise = keras.random.uniform((batch_size, num_patches), seed=seed)
    ranks = ops.argsort(ops.argsort(noise, axis=-1), axis=-1)
    return ops.cast(ops.less(ranks, k), "float32")


def apply_patch_mask(tokens, mask, mask_token):
    """Replaces the (B, N, d) `tokens` by `mask_token` (d,) where `mask` (B, N) is 1."""
    mask = ops.cast(mask, "bool")[..., None]
    return ops.where(mask, ops.cast(mask_token, tokens.dtype), tokens)
