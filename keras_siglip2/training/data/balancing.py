"""Data balancing by multi-modal moment matching (M4), the de-biasing of the SigLIP 2
training data (paper sec. 2, after Alabdulmohsin et al. 2024, "CLIP the Bias: How
Useful is Balancing Data in Multimodal Learning?").

Each example carries m sensitive attributes s in {0, 1}^m (e.g. "the caption mentions
a man", "... a woman") and c proxy concepts y in {0, 1}^c (e.g. occupations, places)
that the attributes should not be associated with. The balancer gives every example a
keep probability w in [0, 1] so that, in the kept (re-sampled) data:

- first-order (representation) bias is bounded: |E_w[s_k] - pi_k| <= eps_r for every
  attribute k, with target shares pi (default: all attributes at their mean observed
  share, i.e. equally frequent);
- second-order (association) bias is bounded: |E_w[(s_k - pi_k) y_r]| <= eps_a for
  every attribute k and proxy r. Once the shares meet their targets this is the
  covariance of s_k and y_r under the kept data, so no attribute goes with a proxy more
  (or less) often than its share says.

Among all keep probabilities meeting these moments it takes the ones closest to
keeping everything, min sum_i (1 - w_i)^2: a convex problem, solved here by projected
ascent on its dual. The solution depends on an example only through its constraint
row, so w(s, y) = clip(1 - a(s, y) . mu, 0, 1) with the fitted multipliers mu applies
to any example, also ones not seen when fitting: fit on a sample of annotations, then
filter the stream: `image_text_dataset(balancing=balancer)` (`balance_stage.py`: fits
an unfitted balancer on a sample of the data, filters, and reports the target and the
achieved statistics on `dataset.info`), or `filter_fn=balancer` (`__call__`), both
with a deterministic random decision per example.

Annotations come from the records' columns or from a user function; `keyword_annotator`
builds one from word lists over the caption (the gendered-term lists of
`filters.GenderedTermRebalancer` as attributes, for example). Where this departs from
the paper: the paper balances WebLI with annotations it does not publish, and states
no tolerances; the defaults here (0.01 for both) are ours.
"""

import numpy as np
import tensorflow as tf

from keras_siglip2.checks import check_fraction, check_positive_int


def _as_binary_matrix(name, values, width=None):
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or (width is not None and values.shape[1] != width):
        expected = "(N, m)" if width is None else f"(N, {width})"
        raise ValueError(f"`{name}` must have shape {expected}; got shape {values.shape}.")
    if not np.all((values == 0) | (values == 1)):
        raise ValueError(f"`{name}` must hold 0/1 annotations; got values "
                         f"{sorted(set(np.unique(values).tolist()) - {0.0, 1.0})[:5]}.")
    return values


def constraint_rows(attributes, proxies, targets):
    """(N, K + K*C) moments per example: s_k - pi_k, then (s_k - pi_k) * y_r."""
    centered = attributes - targets[None, :]
    pairs = (centered[:, :, None] * proxies[:, None, :]).reshape(len(attributes), -1)
    return np.concatenate([centered, pairs], axis=1)


def moment_statistics(attributes, proxies, targets, weights=None):
    """{"representation": E_w[s_k] (K,), "association": E_w[(s_k - pi_k) y_r] (K, C),
    "kept_fraction": mean w} under keep probabilities `weights` (all ones if None)."""
    weights = np.ones(len(attributes)) if weights is None else np.asarray(weights, np.float64)
    total = max(weights.sum(), 1e-12)
    rows = constraint_rows(attributes, proxies, targets)
    moments = weights @ rows / total
    k = attributes.shape[1]
    return {"representation": moments[:k] + targets,
            "association": moments[k:].reshape(k, proxies.shape[1]),
            "kept_fraction": float(weights.mean())}


class MomentMatchingBalancer:
    """Keep probabilities that bound first- and second-order biases (see the module
    docstring).

    Args:
        attribute_names: names of the m sensitive attributes.
        proxy_names: names of the c proxy concepts.
        targets: None (every attribute at the mean observed share) or m target shares.
        representation_tolerance, association_tolerance: eps_r, eps_a in [0, 1].
        annotator: for `__call__`: a function of a pipeline example (dict of scalar
            tensors: "text", ...) -> (attributes (m,), proxies (c,)) 0/1 tensors.
        seed: int, for the per-example random keep decisions.
        max_iterations: dual ascent steps of `fit`.
    """

    def __init__(self, attribute_names, proxy_names, targets=None,
                 representation_tolerance=0.01, association_tolerance=0.01, annotator=None,
                 seed=0, max_iterations=20000):
        self.attribute_names = [str(n) for n in attribute_names]
        self.proxy_names = [str(n) for n in proxy_names]
        if not self.attribute_names:
            raise ValueError("`attribute_names` is empty; give at least one attribute.")
        self.targets = None if targets is None else np.asarray(targets, np.float64)
        if self.targets is not None and self.targets.shape != (len(self.attribute_names),):
            raise ValueError(f"`targets` must hold {len(self.attribute_names)} shares (one per "
                             f"attribute); got {targets!r}.")
        self.representation_tolerance = check_fraction("representation_tolerance",
                                                       representation_tolerance)
        self.association_tolerance = check_fraction("association_tolerance",
                                                    association_tolerance)
        self.annotator = annotator
        self.seed = int(seed)
        self.max_iterations = check_positive_int("max_iterations", max_iterations)
        self.multipliers = None
        self.fit_summary = None

    # ------------------------------------------------------------------ fitting
    def _checked(self, attributes, proxies):
        attributes = _as_binary_matrix("attributes", attributes, len(self.attribute_names))
        proxies = _as_binary_matrix("proxies", proxies, len(self.proxy_names))
        if len(attributes) != len(proxies):
            raise ValueError(f"`attributes` has {len(attributes)} rows but `proxies` has "
                             f"{len(proxies)}; give one row per example to both.")
        return attributes, proxies

    def _signed_rows(self, attributes, proxies):
        """(N, 2J) rows a_i of the inequalities sum_i w_i a_ij <= 0: +-moment - eps."""
        rows = constraint_rows(attributes, proxies, self.targets)
        k = attributes.shape[1]
        eps = np.concatenate([np.full(k, self.representation_tolerance),
                              np.full(rows.shape[1] - k, self.association_tolerance)])
        return np.concatenate([rows - eps, -rows - eps], axis=1)

    def fit(self, attributes, proxies):
        """Fits the multipliers on annotations (N, m) and (N, c); returns self. Raises
        ValueError when the moments cannot be met (an attribute no example has, a
        target share of 0 or 1 with examples on both sides)."""
        attributes, proxies = self._checked(attributes, proxies)
        shares = attributes.mean(axis=0)
        missing = [n for n, share in zip(self.attribute_names, shares) if share == 0]
        if missing:
            raise ValueError(f"No example has the attribute(s) {missing}: they cannot be "
                             "balanced; drop them or annotate more data.")
        if self.targets is None:
            self.targets = np.full(len(shares), shares.mean())
        rows = self._signed_rows(attributes, proxies)
        mu = np.zeros(rows.shape[1])
        step = 1.0 / max(np.mean(np.sum(rows ** 2, axis=1)), 1e-12)
        for iteration in range(self.max_iterations):
            weights = np.clip(1.0 - rows @ mu, 0.0, 1.0)
            violation = weights @ rows / len(rows)  # <= 0 when feasible
            if np.max(violation) <= 1e-6 and np.all(np.abs(mu * violation) <= 1e-7):
                break
            mu = np.maximum(0.0, mu + step * violation)
        self.multipliers = mu
        stats = moment_statistics(attributes, proxies, self.targets, weights)
        self.fit_summary = self._summary(attributes, proxies, stats, iteration + 1)
        self._check_met(stats)
        return self

    def _check_met(self, stats):
        slack = 1e-4  # the dual iterates meet the bounds up to this
        worst_r = np.max(np.abs(stats["representation"] - self.targets))
        worst_a = np.max(np.abs(stats["association"])) if stats["association"].size else 0.0
        if (worst_r > self.representation_tolerance + slack
                or worst_a > self.association_tolerance + slack):
            raise ValueError(
                f"The moments cannot be met on these annotations within "
                f"{self.max_iterations} iterations: representation bias {worst_r:.4f} "
                f"(tolerance {self.representation_tolerance}), association bias "
                f"{worst_a:.4f} (tolerance {self.association_tolerance}). Loosen the "
                "tolerances, change `targets`, or raise `max_iterations`.")

    def _summary(self, attributes, proxies, achieved, iterations):
        before = moment_statistics(attributes, proxies, self.targets)

        def named(stats):
            return {
                "representation": dict(zip(self.attribute_names,
                                           stats["representation"].round(6).tolist())),
                "association": {a: dict(zip(self.proxy_names, row.round(6).tolist()))
                                for a, row in zip(self.attribute_names, stats["association"])},
                "kept_fraction": round(stats["kept_fraction"], 6),
            }

        return {"targets": dict(zip(self.attribute_names, self.targets.round(6).tolist())),
                "representation_tolerance": self.representation_tolerance,
                "association_tolerance": self.association_tolerance,
                "before": named(before), "after": named(achieved),
                "examples": len(attributes), "iterations": iterations}

    # ------------------------------------------------------------------ applying
    def _require_fit(self):
        if self.multipliers is None:
            raise ValueError("This MomentMatchingBalancer is not fitted: call "
                             "`fit(attributes, proxies)` on a sample of annotations first.")

    def keep_probabilities(self, attributes, proxies):
        """(N,) keep probabilities of examples with these annotations."""
        self._require_fit()
        attributes, proxies = self._checked(attributes, proxies)
        return np.clip(1.0 - self._signed_rows(attributes, proxies) @ self.multipliers,
                       0.0, 1.0)

    def _keep_probability_tf(self, attributes, proxies):
        s = tf.cast(tf.reshape(attributes, [-1]), tf.float64)
        y = tf.cast(tf.reshape(proxies, [-1]), tf.float64)
        centered = s - tf.constant(self.targets, tf.float64)
        moments = tf.concat([centered, tf.reshape(centered[:, None] * y[None, :], [-1])], 0)
        k = len(self.attribute_names)
        eps = tf.constant(np.concatenate([
            np.full(k, self.representation_tolerance),
            np.full(k * len(self.proxy_names), self.association_tolerance)]), tf.float64)
        row = tf.concat([moments - eps, -moments - eps], 0)
        mu = tf.constant(self.multipliers, tf.float64)
        return tf.clip_by_value(1.0 - tf.reduce_sum(row * mu), 0.0, 1.0)

    def keep_decision(self, example, attributes, proxies):
        """Scalar bool tensor: keep `example` (with these 0/1 annotations) with its keep
        probability, by a deterministic draw from `seed` and the example's text, source
        and record."""
        key = tf.strings.join([example["text"], "\x00", example["source"], "\x00",
                               tf.strings.as_string(example["record"])])
        hashed = tf.strings.to_hash_bucket_fast(key, 2**31 - 1)
        draw = tf.random.stateless_uniform(
            [], seed=tf.stack([tf.constant(self.seed, tf.int64), hashed]), dtype=tf.float64)
        return draw < self._keep_probability_tf(attributes, proxies)

    def __call__(self, example):
        """A `filter_fn`: keeps `example` with its keep probability (`keep_decision`;
        the annotations from `annotator`)."""
        self._require_fit()
        if self.annotator is None:
            raise ValueError("This MomentMatchingBalancer has no `annotator`: give one "
                             "(e.g. `keyword_annotator(...)`) to filter a pipeline.")
        attributes, proxies = self.annotator(example)
        return self.keep_decision(example, attributes, proxies)


def keyword_annotator(attribute_words, proxy_words):
    """An annotator for `MomentMatchingBalancer`: attribute k (proxy r) is 1 when the
    caption contains one of its words (whole words, any case). `attribute_words` and
    `proxy_words` map names to word lists; the names' order is the annotation order.
    Returns (annotate(example) -> (attributes, proxies) tf tensors, attribute names,
    proxy names)."""
    def pattern(words):
        if not words:
            raise ValueError("Every attribute and proxy needs at least one word.")
        return r"(?is).*\b(" + "|".join(sorted(map(str, words), key=len, reverse=True)) + r")\b.*"

    attribute_patterns = [pattern(w) for w in attribute_words.values()]
    proxy_patterns = [pattern(w) for w in proxy_words.values()]

    def annotate(example):
        text = example["text"]
        found = [tf.cast(tf.strings.regex_full_match(text, p), tf.float64)
                 for p in attribute_patterns]
        concepts = [tf.cast(tf.strings.regex_full_match(text, p), tf.float64)
                    for p in proxy_patterns]
        return tf.stack(found), tf.stack(concepts) if concepts else tf.zeros([0], tf.float64)

    return annotate, list(attribute_words), list(proxy_words)
