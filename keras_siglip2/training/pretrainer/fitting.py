"""Training-loop side of `SigLIP2Pretrainer` (paper sec. 2: AdamW with warmup + cosine,
every loss of the recipe in one step): the loss trackers, `compile` with the paper's
optimizer and automatic loss scaling under mixed_float16, `fit` (schedule length, the
non-finite-loss stop) and the dispatch to the backend train steps (`train_steps.py`).
"""

import math

import keras

from keras_siglip2.training.callbacks import StopOnNonFiniteLoss
from keras_siglip2.training.optimizers import learning_rate_schedule_of, siglip2_optimizer
from keras_siglip2.training.pretrainer import train_steps


class FittingMixin:
    """Metrics, `compile`, `fit` and the step methods of `SigLIP2Pretrainer`."""

    # ------------------------------------------------------------------ metrics

    @property
    def metrics(self):
        trackers = getattr(self, "_loss_trackers", None)
        if trackers is None:
            return []
        return list(trackers.values())

    def update_loss_metrics(self, outputs):
        """Updates the running means of the loss terms; returns the step's logs:
        the means of "loss" and every "<term>_loss", and each term's current
        effective weight."""
        logs = {}
        for name, tracker in self._loss_trackers.items():
            if name not in outputs:  # CURATION_METRICS: training steps only
                continue
            tracker.update_state(outputs[name])
            logs[name] = tracker.result()
        for name in self.active_terms:
            logs[f"{name}_weight"] = outputs[f"{name}_weight"]
        return logs

    # ------------------------------------------------------------------ training

    def compile(
        self,
        optimizer=None,
        learning_rate=None,
        weight_decay=None,
        clipnorm=None,
        total_steps=None,
        warmup_steps=None,
        auto_scale_loss=True,
        **kwargs,
    ):
        """Compiles with the paper's optimizer by default (`siglip2_optimizer`:
        AdamW, peak lr 1e-3, decoupled weight decay 1e-4, global clipnorm 1, warmup +
        cosine schedule). `total_steps=None` lets `fit` set the schedule length from
        `epochs x steps_per_epoch`. `loss` / `metrics` are not used: the losses are
        the recipe's. With `auto_scale_loss` (default) and a part that computes in
        float16, the optimizer is wrapped in a `LossScaleOptimizer` (module
        docstring)."""
        for unused in ("loss", "metrics", "loss_weights"):
            if kwargs.get(unused) is not None:
                raise ValueError(
                    f"SigLIP2Pretrainer.compile() takes no `{unused}`: the recipe's losses "
                    "are built in (set them with the constructor's `loss_weights`)."
                )
            kwargs.pop(unused, None)
        options = dict(learning_rate=learning_rate, weight_decay=weight_decay,
                       clipnorm=clipnorm, total_steps=total_steps, warmup_steps=warmup_steps)
        options = {k: v for k, v in options.items() if v is not None}
        if optimizer is None:
            optimizer = siglip2_optimizer(**options)
        elif options:
            raise ValueError(
                "learning_rate / weight_decay / clipnorm / total_steps / warmup_steps "
                "configure the default optimizer; do not combine them with `optimizer=`."
            )
        optimizer = keras.optimizers.get(optimizer)
        if (
            auto_scale_loss
            and self.computes_in_float16
            and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        ):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name="loss_scale_optimizer")
        super().compile(optimizer=optimizer, auto_scale_loss=auto_scale_loss, **kwargs)

    @property
    def computes_in_float16(self):
        """Whether a trainable part (a tower, the LocCa decoder) computes in float16,
        whose gradients need loss scaling."""
        parts = (self.backbone.vision_encoder, self.backbone.text_encoder, self.decoder)
        return any(p is not None and p.compute_dtype == "float16" for p in parts)

    def fit(self, x=None, y=None, epochs=1, callbacks=None, steps_per_epoch=None, **kwargs):
        """`keras.Model.fit`, plus: the default schedule's length is set from
        `epochs x steps_per_epoch` (or the dataset's length) when `compile` got no
        `total_steps`, and a `StopOnNonFiniteLoss` callback is added unless present."""
        schedule = learning_rate_schedule_of(getattr(self, "optimizer", None))
        if schedule is not None and schedule.total_steps is None:
            steps = steps_per_epoch or _num_batches(x, kwargs.get("batch_size"))
            if steps is None:
                raise ValueError(
                    "The learning-rate schedule needs the number of training steps: pass "
                    "`steps_per_epoch` to fit() or `total_steps` to compile()."
                )
            schedule.set_total_steps(int(epochs) * int(steps))
        callbacks = list(callbacks or [])
        if not any(isinstance(c, StopOnNonFiniteLoss) for c in callbacks):
            # First, so that no checkpoint callback saves a non-finite step.
            callbacks.insert(0, StopOnNonFiniteLoss())
        self.sync_stage_from_variables()
        return super().fit(
            x, y, epochs=epochs, callbacks=callbacks, steps_per_epoch=steps_per_epoch, **kwargs
        )

    def train_step(self, *args):
        return train_steps.train_step(self, *args)

    def test_step(self, *args):
        return train_steps.test_step(self, *args)

    def predict_step(self, *args):
        raise NotImplementedError(
            "SigLIP2Pretrainer has no predictions: use `pretrainer.backbone` for "
            "embeddings, or call the pretrainer on a batch for its loss terms."
        )


def _num_batches(data, batch_size=None):
    """Batches per epoch of a finite tf.data.Dataset, or of arrays / a dict of arrays
    batched by `batch_size` (Keras' default 32); None when unknown."""
    try:
        import tensorflow as tf  # lazy: TensorFlow is optional on the JAX / torch path

        if isinstance(data, tf.data.Dataset):
            n = int(data.cardinality())
            return n if n > 0 else None
    except ImportError:  # pragma: no cover
        pass
    first = data
    if isinstance(data, dict) and data:
        first = next(iter(data.values()))
    shape = getattr(first, "shape", None)
    if shape is None or not len(shape) or shape[0] is None:
        return None
    return max(1, math.ceil(int(shape[0]) / int(batch_size or 32)))
