"""Tiny SigLIP2Pretrainer configurations and batches shared by the training tests (also
imported by the TensorFlow subprocess of the backend-equivalence test)."""

import numpy as np

IMAGE_SIZE = 16
PATCH_SIZE = 8
WIDTH = 16
TEXT_VOCAB = 64
SEQ = 8
NUM_BINS = 8
BATCH = 4
VIEWS = 2


def tiny_backbone(seed=0, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, dtype=None):
    """1-layer towers of width 16 on 16 px images (2 x 2 patches); `dtype`: their
    dtype policy."""
    import keras

    from keras_siglip2.convert.common import build_backbone

    keras.utils.set_random_seed(seed)
    return build_backbone(
        {"type": "fixed", "patch_size": patch_size, "hidden_dim": WIDTH, "num_layers": 1,
         "num_heads": 2, "intermediate_dim": 2 * WIDTH, "image_size": image_size},
        {"vocabulary_size": TEXT_VOCAB, "hidden_dim": WIDTH, "num_layers": 1, "num_heads": 2,
         "intermediate_dim": 2 * WIDTH, "projection_dim": WIDTH, "max_sequence_length": SEQ},
        dtype=dtype,
    )


def tiny_pretrainer(seed=0, locca=True, self_distillation=True, masked_prediction=True,
                    backbone_dtype=None, **kwargs):
    from keras_siglip2.models.locca_decoder import locca_decoder_for
    from keras_siglip2.training.pretrainer import SigLIP2Pretrainer

    backbone = tiny_backbone(seed, dtype=backbone_dtype)
    decoder = locca_decoder_for(backbone, num_location_bins=NUM_BINS) if locca else None
    kwargs.setdefault("head_dims", (32, 16, 32))
    return SigLIP2Pretrainer(
        backbone, decoder=decoder, self_distillation=self_distillation,
        masked_prediction=masked_prediction, seed=seed, **kwargs,
    )


def tiny_batch(seed=0, locca=True, local=True, fixed_random=False, batch=BATCH,
               image_size=IMAGE_SIZE):
    """A dict batch with every field; `fixed_random` adds "tips_mask" and
    "locca_parallel" so that the step draws nothing at random."""
    rng = np.random.RandomState(seed)
    out = {
        "images": rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype("float32"),
        "token_ids": rng.randint(0, TEXT_VOCAB, (batch, SEQ)).astype("int32"),
    }
    if local:
        out["local_images"] = rng.uniform(
            -1, 1, (batch, VIEWS, image_size, image_size, 3)
        ).astype("float32")
    if locca:
        length = SEQ + 4
        vocab = TEXT_VOCAB + NUM_BINS
        out["decoder_token_ids"] = rng.randint(0, vocab, (batch, length)).astype("int32")
        out["decoder_targets"] = rng.randint(0, vocab, (batch, length)).astype("int32")
        weights = np.zeros((batch, length), "float32")
        weights[:, 2:9] = 1.0
        out["decoder_weights"] = weights
        prefix = np.zeros((batch, length), "int32")
        prefix[::2, 1:3] = 1
        out["decoder_prefix_mask"] = prefix
    if fixed_random:
        grid = (image_size // PATCH_SIZE) ** 2
        mask = np.zeros((batch, grid), "int32")
        for i in range(batch):
            mask[i, rng.permutation(grid)[: grid // 2]] = 1
        out["tips_mask"] = mask
        out["locca_parallel"] = (np.arange(batch) % 2).astype("int32")
    return out


def variables_by_path(variables):
    """{"index:path": numpy value}, for comparing two models' variables (the model's
    own auto-numbered name is dropped from the paths; the index keeps them unique)."""
    import keras

    out = {}
    for i, v in enumerate(variables):
        path = v.path.split("/", 1)[1] if v.path.startswith("sig_lip2_pretrainer") else v.path
        out[f"{i}:{path}"] = np.asarray(keras.ops.convert_to_numpy(v.value))
    return out


def fast_compilation(directory):
    """Makes XLA compile the tests' train steps fast (JAX backend only); returns a
    function that restores the previous settings.

    - `jax_disable_most_optimizations`: XLA compiles without its backend optimizations,
      several times faster for these tiny models, whose steps take milliseconds anyway;
    - the persistent compilation cache in `directory`: several tests build separate but
      identical pretrainers, whose train steps are then compiled once and read back.
    Neither changes what is computed.
    """
    import keras

    if keras.backend.backend() != "jax":
        return lambda: None
    import jax

    def reset():
        try:
            from jax._src import compilation_cache

            compilation_cache.reset_cache()
        except Exception:  # private API: without it the cache may just stay off
            pass

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_disable_most_optimizations")
    previous = [jax.config.values[name] for name in names]
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_disable_most_optimizations", True)
    reset()

    def restore():
        for name, value in zip(names, previous):
            jax.config.update(name, value)
        reset()

    return restore
