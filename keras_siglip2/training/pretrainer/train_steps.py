"""Backend-specific parts of the `SigLIP2Pretrainer` train / test step (paper sec. 2:
one optimizer step on the sum of the recipe's losses, then the EMA teacher update).

Everything model-specific is backend-agnostic and lives in the sibling modules: the loss
terms (`SigLIP2Pretrainer.call`, `loss_terms.py`), the EMA formula (`ema`) and the metric updates. This
module only differs in how gradients are taken and state is carried:

- JAX: stateless, as Keras' JAX trainer expects. `train_step(state, data)` receives
  (trainable, non-trainable, optimizer, metrics) value lists, computes the losses with
  `stateless_call` under `jax.value_and_grad`, applies the optimizer with
  `stateless_apply`, computes the new teacher values (the teacher, its heads, the SILC /
  TIPS centers, the stage and the seed generator are non-trainable variables) and
  returns `(logs, new_state)`. If any loss term is NaN / inf the whole state is kept
  unchanged (the step is skipped; `StopOnNonFiniteLoss` then stops training, naming it).
- TensorFlow: `tf.GradientTape` around `model(batch)`, `optimizer.apply`, teacher
  `assign`s.
- torch: autograd on the same loss, `optimizer.apply`, teacher `assign`s.
Variables without a gradient (the SILC / TIPS heads before the switch) get zero
gradients on every backend, as JAX gives them, so the optimizer treats them alike.
Gradients are taken of `optimizer.scale_loss(loss)` on every backend, as Keras' own
train steps do: a `LossScaleOptimizer` (mixed_float16) multiplies the loss by its dynamic
scale and unscales the gradients in `apply`, skipping steps whose gradients overflow;
on JAX such a step also keeps the teacher, the centers and the seed (only the loss scale
changes). On TF / torch the optimizer skips the update but the teacher EMA and the
centers are still updated on that step.
"""

import keras
from keras import ops
from keras.src.trainers.data_adapters import data_adapter_utils


def _inputs(data):
    x, _, _ = data_adapter_utils.unpack_x_y_sample_weight(data)
    return x


def _all_finite(outputs):
    finite = None
    for name, value in outputs.items():
        if name.endswith("_loss") or name == "loss":
            ok = ops.all(ops.isfinite(value))
            finite = ok if finite is None else ops.logical_and(finite, ok)
    return finite


def _metric_logs_stateless(model, metrics_values, outputs):
    """Updates the loss trackers inside a StatelessScope; returns (logs, new values)."""
    mapping = list(zip(model.metrics_variables, metrics_values))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = model.update_loss_metrics(outputs)
    new_values = []
    for ref, old in zip(model.metrics_variables, metrics_values):
        value = scope.get_current_value(ref)
        new_values.append(old if value is None else value)
    return logs, new_values


# --------------------------------------------------------------------------- JAX


def jax_train_step(model, state, data):
    import jax  # lazy: the JAX backend only
    import jax.numpy as jnp  # lazy: the JAX backend only

    trainable, non_trainable, optimizer_values, metrics_values = state
    x = _inputs(data)
    model.check_batch(x)

    def loss_fn(trainable_values):
        outputs, new_non_trainable = model.stateless_call(
            trainable_values, non_trainable, x, training=True
        )
        # The optimizer's loss scale (a LossScaleOptimizer's current dynamic scale).
        mapping = list(zip(model.optimizer.variables, optimizer_values))
        with keras.StatelessScope(state_mapping=mapping):
            loss = model.optimizer.scale_loss(outputs["loss"])
        return loss, (outputs, new_non_trainable)

    (_, (outputs, new_non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable
    )
    new_trainable, new_optimizer = model.optimizer.stateless_apply(
        optimizer_values, grads, trainable
    )
    new_non_trainable = list(new_non_trainable)
    pairs = model.teacher_index_pairs()
    if pairs and model._teacher_stage_on:
        stage_index = _variable_index(model.non_trainable_variables, model.teacher_stage_active)
        updated = model.ema(
            [new_non_trainable[t] for t, _ in pairs],
            [new_trainable[s] for _, s in pairs],
            new_non_trainable[stage_index],
        )
        for (t, _), value in zip(pairs, updated):
            new_non_trainable[t] = value

    finite = _all_finite(outputs)
    keep = lambda ok, new, old: jax.tree.map(  # noqa: E731
        lambda n, o: jnp.where(ok, n, o), list(new), list(old)
    )
    # A step whose scaled gradients overflow (LossScaleOptimizer) only lowers the scale.
    applied = finite
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        applied = jnp.logical_and(finite, model.optimizer.check_finite(grads))
    new_trainable = keep(applied, new_trainable, trainable)
    new_non_trainable = keep(applied, new_non_trainable, non_trainable)
    new_optimizer = keep(finite, new_optimizer, optimizer_values)

    logs, new_metrics = _metric_logs_stateless(model, metrics_values, outputs)
    return logs, (new_trainable, new_non_trainable, new_optimizer, new_metrics)


def jax_test_step(model, state, data):
    trainable, non_trainable, metrics_values = state
    x = _inputs(data)
    model.check_batch(x)
    outputs, non_trainable = model.stateless_call(trainable, non_trainable, x, training=False)
    logs, new_metrics = _metric_logs_stateless(model, metrics_values, outputs)
    return logs, (trainable, non_trainable, new_metrics)


def _variable_index(variables, target):
    for i, v in enumerate(variables):
        if v is target:
            return i
    raise RuntimeError(f"Variable {target.path} is not part of the model state.")


# --------------------------------------------------------------------------- TF / torch


def _zero_filled(grads, variables):
    return [
        ops.zeros(v.shape, v.dtype) if g is None else g for g, v in zip(grads, variables)
    ]


def tf_train_step(model, data):
    import tensorflow as tf  # lazy: the TensorFlow backend only

    x = _inputs(data)
    model.check_batch(x)
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        outputs = model(x, training=True)
        loss = model.optimizer.scale_loss(outputs["loss"])
    grads = tape.gradient(loss, variables)
    model.optimizer.apply(_zero_filled(grads, variables), variables)
    if model._teacher_stage_on:
        model.update_teacher()
    return model.update_loss_metrics(outputs)


def torch_train_step(model, data):
    import torch  # lazy: the torch backend only

    x = _inputs(data)
    model.check_batch(x)
    model.zero_grad()
    outputs = model(x, training=True)
    model.optimizer.scale_loss(outputs["loss"]).backward()
    variables = model.trainable_variables[:]
    grads = [v.value.grad for v in variables]
    with torch.no_grad():
        model.optimizer.apply(_zero_filled(grads, variables), variables)
        if model._teacher_stage_on:
            model.update_teacher()
    return model.update_loss_metrics(outputs)


def eager_test_step(model, data):
    x = _inputs(data)
    model.check_batch(x)
    outputs = model(x, training=False)
    return model.update_loss_metrics(outputs)


# --------------------------------------------------------------------------- dispatch


def train_step(model, *args):
    backend = keras.backend.backend()
    if backend == "jax":
        return jax_train_step(model, *args)
    if backend == "tensorflow":
        return tf_train_step(model, *args)
    if backend == "torch":
        return torch_train_step(model, *args)
    raise NotImplementedError(f"SigLIP2Pretrainer has no train step for backend {backend!r}.")


def test_step(model, *args):
    if keras.backend.backend() == "jax":
        return jax_test_step(model, *args)
    return eager_test_step(model, *args)
