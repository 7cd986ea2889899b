"""training/data/balancing.py (M4 moment matching, "CLIP the Bias"): the fitted keep
probabilities meet the representation and association bounds (checked by hand in
NumPy), equal an independent solver's optimum (scipy SLSQP) on a small problem, apply
as a tf.data filter whose kept stream has the fitted moments, and bad input is named."""

import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf

from keras_siglip2.training.data.balancing import (
    MomentMatchingBalancer,
    keyword_annotator,
)


def biased_annotations(n, seed=0):
    """Attributes (man, woman) with shares 0.3 / 0.1; "occupation" goes with "man"
    (0.4 vs 0.1), "outdoor" with nothing."""
    rng = np.random.default_rng(seed)
    man = rng.random(n) < 0.3
    woman = ~man & (rng.random(n) < 0.15)
    occupation = np.where(man, rng.random(n) < 0.4, rng.random(n) < 0.1)
    outdoor = rng.random(n) < 0.3
    return (np.stack([man, woman], 1).astype(float),
            np.stack([occupation, outdoor], 1).astype(float))


def by_hand(attributes, proxies, weights, targets):
    """Shares E_w[s_k] and E_w[(s_k - pi_k) y_r] of weighted data, in NumPy."""
    w = weights / weights.sum()
    shares = w @ attributes
    association = np.einsum("i,ik,ir->kr", w, attributes - targets, proxies)
    return shares, association


def test_fitted_keep_probabilities_meet_the_bounds():
    """Before: shares 0.30 / 0.11 and association 0.077; after: both within 0.01 of the
    target (their mean share) and every association within 0.01, keeping 56 % of the
    data (measured)."""
    attributes, proxies = biased_annotations(4000)
    balancer = MomentMatchingBalancer(["man", "woman"], ["occupation", "outdoor"]).fit(
        attributes, proxies)
    targets = attributes.mean(0).mean() * np.ones(2)
    np.testing.assert_allclose(balancer.targets, targets)
    before, before_assoc = by_hand(attributes, proxies, np.ones(len(attributes)), targets)
    assert np.max(np.abs(before - targets)) > 0.09 and np.max(np.abs(before_assoc)) > 0.07
    weights = balancer.keep_probabilities(attributes, proxies)
    assert weights.min() >= 0 and weights.max() <= 1
    shares, association = by_hand(attributes, proxies, weights, targets)
    assert np.max(np.abs(shares - targets)) <= 0.01 + 1e-4, shares
    assert np.max(np.abs(association)) <= 0.01 + 1e-4, association
    assert 0.5 < weights.mean() < 0.7
    summary = balancer.fit_summary
    assert summary["after"]["kept_fraction"] == pytest.approx(weights.mean(), abs=1e-6)
    assert summary["before"]["representation"]["man"] == pytest.approx(before[0], abs=1e-6)


def test_equals_an_independent_solver():
    """On 60 examples, min sum (1 - w)^2 under the same bounds, solved by scipy's SLSQP
    from the constraints written out here: the same optimum (objective within 1e-3
    relative; measured 4e-7)."""
    attributes, proxies = biased_annotations(60, seed=3)
    eps = 0.02
    balancer = MomentMatchingBalancer(["man", "woman"], ["occupation", "outdoor"],
                                      representation_tolerance=eps,
                                      association_tolerance=eps).fit(attributes, proxies)
    targets = balancer.targets
    ours = balancer.keep_probabilities(attributes, proxies)

    def moments(w):
        centered = attributes - targets
        first = w @ centered
        second = np.einsum("i,ik,ir->kr", w, centered, proxies).ravel()
        return np.concatenate([first, second])

    constraints = [{"type": "ineq", "fun": lambda w: eps * w.sum() - moments(w)},
                   {"type": "ineq", "fun": lambda w: eps * w.sum() + moments(w)}]
    result = scipy.optimize.minimize(lambda w: np.sum((1 - w) ** 2), np.full(60, 0.5),
                                     jac=lambda w: -2 * (1 - w), bounds=[(0, 1)] * 60,
                                     constraints=constraints, method="SLSQP",
                                     options={"maxiter": 500, "ftol": 1e-12})
    assert result.success, result.message
    assert np.sum((1 - ours) ** 2) == pytest.approx(result.fun, rel=1e-3)
    assert np.min(eps * ours.sum() - np.abs(moments(ours))) >= -1e-3


CAPTIONS = {  # (man, woman, occupation) -> caption
    (1, 0, 1): "a man working as a doctor", (1, 0, 0): "a man on a beach",
    (0, 1, 1): "a woman working as a doctor", (0, 1, 0): "a woman on a beach",
    (0, 0, 1): "a doctor in a hospital", (0, 0, 0): "a dog on a beach",
}


def test_filters_a_tf_data_stream():
    """Fitted on the annotations of 3,000 captions, then run as a `filter_fn` over the
    same stream (annotated from the words): the kept captions' shares and association
    are within sampling error of the fitted moments (4 standard errors)."""
    annotate, attribute_names, proxy_names = keyword_annotator(
        {"man": ["man", "men"], "woman": ["woman", "women"]}, {"occupation": ["doctor"]})
    attributes, proxies = biased_annotations(3000, seed=5)
    texts = [CAPTIONS[(int(a[0]), int(a[1]), int(p[0]))] for a, p in zip(attributes, proxies)]
    balancer = MomentMatchingBalancer(attribute_names, proxy_names, annotator=annotate,
                                      seed=1).fit(attributes, proxies[:, :1])
    ds = tf.data.Dataset.from_tensor_slices({"text": texts, "source": ["s"] * len(texts),
                                             "record": np.arange(len(texts))})
    kept = [k for k in ds.map(balancer).as_numpy_iterator()]
    kept = np.asarray(kept)
    n = kept.sum()
    expected = balancer.keep_probabilities(attributes, proxies[:, :1])
    assert abs(n - expected.sum()) < 4 * np.sqrt(np.sum(expected * (1 - expected)))
    shares = attributes[kept].mean(0)
    want = (expected @ attributes) / expected.sum()
    assert np.all(np.abs(shares - want) < 4 * np.sqrt(want * (1 - want) / n)), (shares, want)
    # The same decisions in every epoch.
    again = np.asarray(list(ds.map(balancer).as_numpy_iterator()))
    np.testing.assert_array_equal(kept, again)


def test_bad_input():
    attributes, proxies = biased_annotations(100)
    balancer = MomentMatchingBalancer(["man", "woman"], ["occupation", "outdoor"])
    with pytest.raises(ValueError, match="not fitted"):
        balancer.keep_probabilities(attributes, proxies)
    with pytest.raises(ValueError, match=r"`proxies` must have shape \(N, 2\)"):
        balancer.fit(attributes, proxies[:, :1])
    with pytest.raises(ValueError, match="0/1 annotations"):
        balancer.fit(attributes * 2, proxies)
    with pytest.raises(ValueError, match="100 rows but `proxies` has 99"):
        balancer.fit(attributes, proxies[:99])
    none = attributes.copy()
    none[:, 1] = 0
    with pytest.raises(ValueError, match=r"No example has the attribute\(s\) \['woman'\]"):
        balancer.fit(none, proxies)
    with pytest.raises(ValueError, match="`association_tolerance` must be a number in"):
        MomentMatchingBalancer(["a"], [], association_tolerance=-0.1)
    with pytest.raises(ValueError, match="cannot be met"):
        MomentMatchingBalancer(["man", "woman"], ["occupation", "outdoor"],
                               targets=[0.9, 0.9], representation_tolerance=0.0).fit(
            attributes, proxies)
