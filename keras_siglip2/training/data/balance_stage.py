"""M4 data balancing as a stage of `image_text_dataset` (paper sec. 2: the SigLIP 2
data is de-biased with the method of Alabdulmohsin et al. 2024, "CLIP the Bias";
`balancing.MomentMatchingBalancer` implements it).

`image_text_dataset(balancing=balancer)`:
1. annotations: each record's 0/1 sensitive attributes s (m) and proxy concepts y (c)
   come from the balancer's `annotator` (a function of the example dict: "text",
   "language", "boxes", "box_texts", "source", "record") or, without one, from the
   record columns "attributes" / "proxies" (TFRecord float lists, JSON arrays in
   JSONL / WebDataset `.json` / CSV cells; `sources.py`);
2. fitting: an unfitted balancer is fitted on the annotations of the first
   `fit_examples` checked records of one unshuffled pass (`fit_balancer`);
3. filtering: after the checks and `filter_fn`, each example is kept with its keep
   probability (a deterministic draw, `MomentMatchingBalancer.keep_decision`); drops
   are counted in the `DataReport` as "balanced";
4. statistics: `BalancingStage.statistics()` (also `dataset.info.balancing`) gives the
   targets, the tolerances, the fit summary (before / after on the fitting sample) and
   the achieved first- and second-order statistics of the examples the stage has
   seen and kept so far in the stream (counted in the `tf.data` graph, like the
   `DataReport`, so they run a little ahead of training by the prefetch).
"""

import numpy as np
import tensorflow as tf

from keras_siglip2.checks import check_positive_int
from keras_siglip2.training.data.balancing import MomentMatchingBalancer
from keras_siglip2.training.data.report import END_OF_EPOCH


class BalancingStage(tf.Module):
    """The M4 stage of one pipeline (see the module docstring)."""

    def __init__(self, balancer, fit_examples=100_000):
        super().__init__(name="balancing_stage")
        if not isinstance(balancer, MomentMatchingBalancer):
            raise TypeError("`balancing` must be a `training.data.balancing."
                            f"MomentMatchingBalancer` or None; got {balancer!r}.")
        self.balancer = balancer
        self.fit_examples = check_positive_int("balancing_fit_examples", fit_examples)
        m, c = len(balancer.attribute_names), len(balancer.proxy_names)
        with tf.init_scope():
            # [seen, kept] x (count, sum s (m), sum y (c), sum s y^T (m c)).
            self.sums = tf.Variable(tf.zeros([2, 1 + m + c + m * c], tf.float64),
                                    trainable=False)

    @property
    def shape(self):
        return len(self.balancer.attribute_names), len(self.balancer.proxy_names)

    def annotations(self, example):
        """(s (m,), y (c,)) float64 of one example: the annotator's, or the record's
        "attributes" / "proxies" columns (wrong lengths raise, naming the record)."""
        m, c = self.shape
        if self.balancer.annotator is not None:
            s, y = self.balancer.annotator(example)
            return tf.cast(tf.reshape(s, [m]), tf.float64), tf.cast(tf.reshape(y, [c]),
                                                                    tf.float64)
        checks = [tf.debugging.Assert(tf.equal(tf.size(example[key]), n), [tf.strings.join([
            "keras_siglip2 data (balancing): ", example["source"], " record ",
            tf.strings.as_string(example["record"]), f" needs {n} `{key}` annotations "
            f"({', '.join(names)}); give the column or an `annotator` to the balancer."])])
            for key, n, names in (("attributes", m, self.balancer.attribute_names),
                                  ("proxies", c, self.balancer.proxy_names))]
        with tf.control_dependencies(checks):
            return (tf.cast(tf.reshape(example["attributes"], [m]), tf.float64),
                    tf.cast(tf.reshape(example["proxies"], [c]), tf.float64))

    def _row(self, s, y):
        return tf.concat([[1.0], s, y, tf.reshape(s[:, None] * y[None, :], [-1])], 0)

    def keep(self, example):
        """Scalar bool: keep the example; counts it as seen (and kept)."""
        s, y = self.annotations(example)
        keep = self.balancer.keep_decision(example, s, y)
        row = self._row(s, y)
        update = self.sums.assign_add(tf.stack([row, row * tf.cast(keep, tf.float64)]))
        with tf.control_dependencies([update]):
            return tf.identity(keep)

    def _achieved(self, sums):
        m, c = self.shape
        count = max(float(sums[0]), 1e-12)
        s, y = sums[1:1 + m] / count, sums[1 + m:1 + m + c] / count
        sy = sums[1 + m + c:].reshape(m, c) / count
        targets = self.balancer.targets
        return {"examples": int(round(sums[0])),
                "representation": dict(zip(self.balancer.attribute_names,
                                           np.round(s, 6).tolist())),
                "association": {a: dict(zip(self.balancer.proxy_names,
                                            np.round(row, 6).tolist()))
                                for a, row in zip(self.balancer.attribute_names,
                                                  sy - targets[:, None] * y[None, :])}}

    def statistics(self):
        """{"targets", "representation_tolerance", "association_tolerance", "fit" (the
        balancer's fit summary), "stream": {"seen": ..., "kept": ..., "kept_fraction"}}
        with, for seen and kept examples, the attribute shares E[s_k] and the
        associations E[(s_k - pi_k) y_r]."""
        b = self.balancer
        sums = self.sums.numpy()
        seen, kept = self._achieved(sums[0]), self._achieved(sums[1])
        return {"targets": dict(zip(b.attribute_names, np.round(b.targets, 6).tolist())),
                "representation_tolerance": b.representation_tolerance,
                "association_tolerance": b.association_tolerance,
                "fit": b.fit_summary,
                "stream": {"seen": seen, "kept": kept,
                           "kept_fraction": kept["examples"] / max(seen["examples"], 1)}}


def fit_balancer(stage, stream):
    """Fits `stage.balancer` (when not fitted) on the annotations of the first
    `stage.fit_examples` usable records of `stream` (a `record_stream` over one
    unshuffled pass); returns the balancer."""
    balancer = stage.balancer
    if balancer.multipliers is not None:
        return balancer
    records = stream.filter(lambda raw: raw["status"] != END_OF_EPOCH)
    annotations = records.take(stage.fit_examples).map(
        lambda raw: stage.annotations(raw)).batch(4096)
    attributes, proxies = [], []
    for s, y in annotations.as_numpy_iterator():
        attributes.append(s)
        proxies.append(y)
    if not attributes:
        raise ValueError("The data has no usable record to fit the balancer on.")
    balancer.fit(np.concatenate(attributes), np.concatenate(proxies))
    return balancer

