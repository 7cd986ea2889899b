"""Argument checks shared by the SigLIP 2 training losses (paper sec. 2.1-2.3), so that a
wrong shape or value gets one clear error naming the argument instead of a broadcast
that silently computes something else. Checks look at static shapes only, so they cost
nothing inside `jax.jit` / `tf.function`."""

import math

from keras import ops

from keras_siglip2.checks import check_fraction, check_positive, check_positive_int  # noqa: F401


def static_shape(x):
    """The static shape of `x` as a tuple (None for unknown dimensions)."""
    return tuple(getattr(x, "shape", ()))


def check_rank(name, x, ranks, layout):
    """Raises ValueError unless `x` has one of the ranks in `ranks`; `layout` describes
    the expected axes for the message, e.g. "(B, D)"."""
    shape = static_shape(x)
    if len(shape) not in ranks:
        raise ValueError(f"`{name}` must have shape {layout}; got shape {shape}.")
    return shape


def check_same_dim(name_a, dim_a, name_b, dim_b, what):
    """Raises ValueError when two known dimensions differ."""
    if dim_a is not None and dim_b is not None and dim_a != dim_b:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same {what}; got {dim_a} and {dim_b}."
        )


def float32_scalar(name, x):
    """`x` (a Python number, a scalar or a one-element tensor/variable) as a float32
    scalar tensor."""
    shape = static_shape(x)
    if None not in shape and math.prod(shape) != 1:
        raise ValueError(
            f"`{name}` must be a scalar (or a one-element tensor); got shape {shape}."
        )
    return ops.reshape(ops.cast(x, "float32"), ())


