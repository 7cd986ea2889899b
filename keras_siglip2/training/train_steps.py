"""Deprecated module path (kept for one release): the backend-specific parts of the
`SigLIP2Pretrainer` step (paper sec. 2) moved to
`keras_siglip2.training.pretrainer.train_steps`."""

from keras_siglip2.training.pretrainer.train_steps import (  # noqa: F401
    eager_test_step,
    jax_test_step,
    jax_train_step,
    test_step,
    tf_train_step,
    torch_train_step,
    train_step,
)
