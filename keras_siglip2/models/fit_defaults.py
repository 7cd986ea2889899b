"""`SigLIP2Backbone.compile()` / `fit(x)` with no targets, as keras-hub's
`SigLIPBackbone` offers: the sigmoid loss of the SigLIP papers (SigLIP 2 sec. 2.1) on
the image-text logits, its labels (+1 for the matching pair i == j, -1 elsewhere) built
from the batch in `compute_loss`, and keras-hub's default optimizer (AdamW, learning
rate 1e-3, weight decay 1e-4). The full SigLIP 2 recipe (LocCa, SILC, TIPS, the paper's
schedule) is `keras_siglip2.training.SigLIP2Pretrainer`."""

import keras
from keras import ops

AUTO = "auto"


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigmoidPairLoss(keras.losses.Loss):
    """-sum_j log_sigmoid(labels_ij * logits_ij) per image i, averaged over the images
    (the default reduction): the sigmoid loss, in float32, of (B, B) logits against
    labels 2I - 1."""

    def __init__(self, name="sigmoid_pair_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        return -ops.sum(ops.log_sigmoid(ops.cast(y_true, "float32") * y_pred), axis=-1)


def pair_labels(logits):
    """2I - 1 for (B, B) logits: +1 on the matching pairs, -1 elsewhere."""
    return 2.0 * ops.eye(ops.shape(logits)[0], dtype="float32") - 1.0


class FitDefaultsMixin:
    """`compile` defaults and the target-free `compute_loss` of `SigLIP2Backbone`."""

    def compile(self, optimizer=AUTO, loss=AUTO, metrics=None, **kwargs):
        """`keras.Model.compile` with keras-hub's `SigLIPBackbone` defaults.

        Args:
            optimizer: `"auto"` = AdamW(1e-3, weight_decay=1e-4), or any optimizer.
            loss: `"auto"` = the sigmoid loss on "vision_logits" (`SigmoidPairLoss`),
                whose labels `compute_loss` builds when `fit` gets no targets; or any
                Keras loss (then give targets, e.g. {"vision_logits": labels}).
            metrics, **kwargs: as for `keras.Model.compile`.
        """
        if isinstance(optimizer, str) and optimizer == AUTO:
            optimizer = keras.optimizers.AdamW(1e-3, weight_decay=1e-4)
        self._auto_sigmoid_loss = isinstance(loss, str) and loss == AUTO
        if self._auto_sigmoid_loss:
            loss = SigmoidPairLoss()
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        if getattr(self, "_auto_sigmoid_loss", False):
            if y_pred is None:
                y_pred = self(x, training=training)
            logits = y_pred["vision_logits"]
            if y is None:
                y = pair_labels(logits)
            return super().compute_loss(x=x, y=y, y_pred=logits,
                                        sample_weight=sample_weight, training=training)
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                    training=training)
