"""`gradient_fence`: an identity on the residual stream of the transformer blocks (paper
sec. 2, the towers and the LocCa decoder) that keeps XLA:CPU from recomputing the
residual gradient.

In the backward pass the residual stream's gradient at block k is the sum of every
later block's contributions. XLA's CPU fusion duplicates that chain of elementwise adds
into each consumer instead of writing it once, so block k's fusions re-read the
gradients of all later blocks: work quadratic in depth (in the 6-layer training row of
`make bench`, one fusion took 94 inputs; a fifth of the step was those fusions). Passing
the gradient through a conditional forces it to be materialized. The fence is applied
only where that duplication happens and the conditional is cheap: JAX, on one CPU
device. Elsewhere (TensorFlow, torch, GPU / TPU, several devices) it is a plain identity.
"""

import functools

import keras


def _fence_on_this_machine():
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu" and jax.device_count() == 1


@functools.cache
def _jax_fence():
    """The JAX identity whose tangent (and so, transposed, its gradient) goes through
    `lax.cond` on an always-true predicate. Its other branch (twice the tangent, linear
    so that the conditional can be transposed) is never taken."""
    import jax

    @jax.custom_jvp
    def fence(x):
        return x

    @fence.defjvp
    def _fence_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        first = x[(0,) * x.ndim]
        # True for every value, NaN included; XLA cannot fold it to a constant.
        always = (first == first) | (first != first)
        return x, jax.lax.cond(always, lambda v: v, lambda v: v * 2, t)

    return fence


def gradient_fence(x):
    """`x`, unchanged; on JAX with one CPU device, its gradient is materialized once
    instead of being recomputed by every consumer (see the module docstring)."""
    if not _fence_on_this_machine() or isinstance(x, keras.KerasTensor):
        return x
    return _jax_fence()(x)
