"""The tasks on the model a user trains with `siglip2 demo` (paper sec. 3.1 zero-shot
classification and retrieval, on the synthetic held-out split of the demo): the
zero-shot classifier's probabilities and accuracy, the retriever's recall@1/5/10 both
ways, and the demo summary's own figures all equal what NumPy computes by hand from the
trained backbone's embeddings.

The demo trains briefly (8 steps, tiny towers; the run the demo's smoke test checks,
shared through the `tiny_demo_run` fixture); its figures are near chance, which does not matter here: what is checked
is that every number the tasks report is the one the embeddings imply.

Tolerances: probabilities 1e-5 (the tasks' batched, jit-compiled float32 forward
passes vs one eager forward pass normalized in float64; the cosines differ by ~3e-7).
Accuracy and recall count argmax / rank comparisons, and this briefly trained model's
scores lie close together: a comparison whose two sides are within COS_MARGIN (1e-5 in
cosine, exp(t) * 1e-5 in logits) may go either way between the two computations. So
the reported figure must lie between the share of comparisons that surely hold and
that share plus the undecided ones (equal bounds when none is undecided), and the
undecided ones must stay rare for the check to mean something.
"""

import numpy as np
import pytest

from keras_siglip2.training.data import synthetic

PROB_TOL = 1e-5
COS_MARGIN = 1e-5  # cosines this close may order differently in the two computations
MAX_UNDECIDED = 0.1  # at most this share of undecided comparisons
TEMPLATES = ["a photo of {}", "an image of {}"]  # caption templates of the dataset

# The demo model comes from `tiny_demo_run` (tests/conftest.py), shared with the demo's
# smoke test.


@pytest.fixture(scope="session")
def demo(tiny_demo_run):
    """(summary, backbone, preprocessor, held-out split) of the 8-step tiny demo; the
    model is read back from the preset the demo wrote (`OUT/preset`)."""
    from keras_siglip2.models import SigLIP2Backbone
    from keras_siglip2.preprocessing import SigLIP2Preprocessor

    out, summary = tiny_demo_run
    preset = str(out / "preset")
    backbone = SigLIP2Backbone.from_preset(preset)
    preprocessor = SigLIP2Preprocessor.from_preset(preset)
    cfg = summary["config"]
    heldout = synthetic.heldout_split(cfg["num_heldout"], cfg["target_image_size"],
                                      seed=summary["heldout_seed"])
    size = tuple(backbone.vision_encoder.image_size)
    assert size == (cfg["target_image_size"],) * 2  # the images need no resizing
    hand = {
        "classification": hand_images(backbone, heldout["classification"]["images"]),
        "retrieval": hand_images(backbone, heldout["retrieval"]["images"]),
    }
    return summary, backbone, preprocessor, heldout, hand


# --------------------------------------------------------------------------- by hand


def unit(z):
    z = np.asarray(z, np.float64)
    return z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)


def hand_images(backbone, images):
    """Normalized image embeddings of uint8 images already at the model's resolution:
    pixels mapped to [-1, 1] by hand, one eager forward pass over the whole batch (no
    preprocessor, batching, padding or jit)."""
    x = np.asarray(images, np.float32) / 127.5 - 1.0
    return unit(backbone.get_vision_embeddings({"images": x}))


def hand_texts(backbone, preprocessor, texts):
    token_ids = np.asarray(preprocessor.tokenizer(list(texts)))
    return unit(backbone.get_text_embeddings(token_ids))


def scale_bias(backbone):
    t = float(np.asarray(backbone.logit_head.log_temperature).reshape(-1)[0])
    return np.exp(t), float(np.asarray(backbone.logit_head.bias).reshape(-1)[0])


def hand_class_embeddings(backbone, preprocessor, class_names, templates):
    """Prompt ensembling as the classifier documents it: each class's normalized
    template embeddings averaged, normalized again."""
    rows = [hand_texts(backbone, preprocessor, [t.replace("{}", c) for t in templates])
            for c in class_names]
    return unit(np.stack([r.mean(axis=0) for r in rows]))


def near_ties(logits, margin):
    """Rows whose two highest values lie within `margin` (the argmax may differ)."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] <= margin


def accuracy_bounds(logits, labels, margin):
    """(lowest, highest) top-1 accuracy when every logit may move by `margin`; the
    hand argmax accuracy lies between them."""
    n = len(labels)
    true = logits[np.arange(n), labels]
    others = logits.copy()
    others[np.arange(n), labels] = -np.inf
    gap = true - others.max(axis=1)
    sure, undecided = gap > margin, np.abs(gap) <= margin
    assert undecided.mean() <= MAX_UNDECIDED, f"{undecided.sum()} undecided images"
    bounds = (sure.sum() / n, (sure.sum() + undecided.sum()) / n)
    accuracy = np.mean(np.argmax(logits, axis=1) == labels)
    assert bounds[0] <= accuracy <= bounds[1]
    return bounds


def recall_bounds(similarity, k, margin):
    """(lowest, highest) recall@k for queries i matching target i when every score may
    move by `margin`; the recall of the NumPy ranking (the match's position in the
    targets sorted by score) lies between them."""
    n = similarity.shape[0]
    matched = similarity[np.arange(n), np.arange(n)][:, None]
    others = similarity.copy()
    others[np.arange(n), np.arange(n)] = -np.inf
    surely_above = np.sum(others > matched + margin, axis=1)
    maybe_above = np.sum(others >= matched - margin, axis=1)
    sure, undecided = maybe_above < k, (surely_above < k) & (maybe_above >= k)
    assert undecided.mean() <= MAX_UNDECIDED, f"{undecided.sum()} undecided queries"
    bounds = (sure.sum() / n, (sure.sum() + undecided.sum()) / n)
    order = np.argsort(-similarity, axis=1, kind="stable")
    ranks = np.array([int(np.flatnonzero(order[i] == i)[0]) for i in range(n)])
    assert bounds[0] <= np.mean(ranks < k) <= bounds[1]
    return bounds


def assert_within(value, bounds, what):
    assert bounds[0] - 1e-12 <= value <= bounds[1] + 1e-12, (what, value, bounds)


# --------------------------------------------------------------------------- tests


def test_zero_shot_classifier_matches_numpy(demo):
    from keras_siglip2.tasks import SigLIP2ZeroShotClassifier

    _, backbone, preprocessor, heldout, hand = demo
    cls = heldout["classification"]
    names = synthetic.class_names()
    images, labels = cls["images"], np.asarray(cls["labels"])
    # 48 images in batches of 16, 24 classes x 2 templates.
    classifier = SigLIP2ZeroShotClassifier(backbone, preprocessor, names, TEMPLATES,
                                           batch_size=16)
    probabilities = classifier.predict(images)

    zcls = hand_class_embeddings(backbone, preprocessor, names, TEMPLATES)
    scale, bias = scale_bias(backbone)
    logits = scale * hand["classification"] @ zcls.T + bias
    expected = 1.0 / (1.0 + np.exp(-logits))
    assert probabilities.shape == (len(images), len(names))
    assert np.std(expected) > 1e-3  # the model's scores differ between pairs
    np.testing.assert_allclose(probabilities, expected, atol=PROB_TOL, rtol=0)

    margin = scale * COS_MARGIN
    result = classifier.evaluate(images, [int(v) for v in labels])
    assert result["num_images"] == len(images)
    assert_within(result["accuracy"], accuracy_bounds(logits, labels, margin), "accuracy")
    decided = ~near_ties(logits, margin)
    assert decided.mean() >= 1 - MAX_UNDECIDED
    predicted = np.array([names.index(p) for p in result["predictions"]])
    np.testing.assert_array_equal(predicted[decided], np.argmax(logits, axis=1)[decided])
    # Labels given as class names count the same as indices.
    by_name = classifier.evaluate(images, [names[v] for v in labels])
    assert by_name["accuracy"] == result["accuracy"]


def test_retriever_recall_matches_numpy(demo):
    from keras_siglip2.tasks import SigLIP2Retriever

    _, backbone, preprocessor, heldout, hand = demo
    ret = heldout["retrieval"]
    images, captions = ret["images"], [str(c) for c in ret["captions"]]
    retriever = SigLIP2Retriever(backbone, preprocessor, batch_size=16, verbose=False)
    got = retriever.evaluate(images, captions)
    assert got["num_pairs"] == len(captions)

    similarity = hand["retrieval"] @ hand_texts(backbone, preprocessor, captions).T
    assert np.std(similarity) > 1e-3
    for direction, sim in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        assert set(got[direction]) == {"recall@1", "recall@5", "recall@10"}
        for k in (1, 5, 10):
            assert_within(got[direction][f"recall@{k}"],
                          recall_bounds(sim, k, COS_MARGIN), (direction, k))
    # evaluate leaves the index as it was (empty).
    assert retriever.image_ids == [] and retriever.text_ids == []


def test_demo_summary_matches_numpy(demo):
    """The summary's zero-shot accuracy per language (each class's full prompt, no
    template) and recall@1 are the figures the saved model's embeddings give."""
    import os

    summary, backbone, preprocessor, heldout, hand = demo
    cls, ret = heldout["classification"], heldout["retrieval"]
    labels = np.asarray(cls["labels"])
    assert summary["num_classification_images"] == len(labels)
    assert summary["chance_accuracy"] == pytest.approx(1 / len(synthetic.class_names()))
    assert summary["num_retrieval_pairs"] == len(ret["captions"])
    assert summary["recall_chance"] == pytest.approx(1 / len(ret["captions"]))
    assert os.path.exists(summary["export_path"])

    scale, bias = scale_bias(backbone)
    reported = summary["zero_shot_accuracy"]
    for language in synthetic.LANGUAGES:
        zcls = hand_texts(backbone, preprocessor, synthetic.prompts(language))
        logits = scale * hand["classification"] @ zcls.T + bias
        assert_within(reported[language],
                      accuracy_bounds(logits, labels, scale * COS_MARGIN), language)
    assert reported["overall"] == pytest.approx(
        np.mean([reported[lang] for lang in synthetic.LANGUAGES]), abs=1e-12)

    captions = [str(c) for c in ret["captions"]]
    similarity = hand["retrieval"] @ hand_texts(backbone, preprocessor, captions).T
    for direction, sim in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        assert_within(summary["recall_at_1"][direction],
                      recall_bounds(sim, 1, COS_MARGIN), direction)
