"""Weight initializers of the reference implementation (big_vision ViT / text tower),
used when a SigLIP 2 model is trained from scratch (paper sec. 2.1)."""

import keras


def dense_kernel_init():
    """Xavier-uniform, as big_vision's transformer Dense layers."""
    return keras.initializers.GlorotUniform()


def embedding_init(width):
    """Normal(0, 1/sqrt(width)), as big_vision's learned position embeddings."""
    return keras.initializers.RandomNormal(stddev=width**-0.5)
