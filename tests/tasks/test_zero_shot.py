"""SigLIP2ZeroShotClassifier: probabilities equal the ones computed by hand from the
model's embeddings (prompt ensembling, sigmoid not softmax), fixed and NaFlex towers,
any language, every image input form, and clear errors on bad input."""

import numpy as np
import pytest
from PIL import Image

from keras_siglip2.tasks import SigLIP2ZeroShotClassifier, templates_for_language
from keras_siglip2.tasks.zero_shot import DEFAULT_TEMPLATES, TEMPLATES
from tests.tasks.conftest import (
    hand_image_embeddings,
    hand_text_embeddings,
    logit_params,
    read_rgb,
    write_images,
)

# jit-compiled batched forward passes vs eager ones, float32.
TOL = 1e-5


def hand_probabilities(backbone, preprocessor, arrays, class_names, templates):
    """Prompt ensembling and sigmoid probabilities in NumPy (float64)."""
    zimg = hand_image_embeddings(backbone, preprocessor, arrays)
    classes = []
    for name in class_names:
        z = hand_text_embeddings(backbone, preprocessor, [t.replace("{}", name) for t in templates])
        mean = z.mean(axis=0)
        classes.append(mean / (np.linalg.norm(mean) + 1e-8))
    scale, bias = logit_params(backbone)
    logits = scale * zimg @ np.stack(classes).T + bias
    return logits, 1.0 / (1.0 + np.exp(-logits))


def test_probabilities_match_hand_computation(fixed_model, image_dir):
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    names = ["cat", "dog", "bird", "a red square"]
    templates = ["a photo of a {}.", "{}", "a blue circle with a {}"]
    clf = SigLIP2ZeroShotClassifier(backbone, preprocessor, names, templates, batch_size=3)
    logits, probs = hand_probabilities(
        backbone, preprocessor, [read_rgb(p) for p in paths], names, templates
    )
    assert np.std(probs) > 0.02  # the comparison is not between constants
    np.testing.assert_allclose(clf.predict_logits(paths), logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(clf.predict(paths), probs, atol=TOL, rtol=0)
    assert clf.class_embeddings.shape == (4, backbone.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(clf.class_embeddings, axis=1), 1.0, atol=1e-6)


def test_sigmoid_scores_each_label_independently(fixed_model, image_dir):
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    two = SigLIP2ZeroShotClassifier(backbone, preprocessor, ["cat", "dog"]).predict(paths)
    three = SigLIP2ZeroShotClassifier(backbone, preprocessor, ["cat", "dog", "bird"]).predict(paths)
    # Adding a class changes nothing for the others (a softmax would renormalize).
    np.testing.assert_allclose(three[:, :2], two, atol=1e-6, rtol=0)
    assert np.max(np.abs(three.sum(axis=1) - 1.0)) > 1e-2


def test_single_template_is_the_plain_text_embedding(fixed_model):
    backbone, preprocessor = fixed_model
    clf = SigLIP2ZeroShotClassifier(backbone, preprocessor, ["cat", "dog"], templates=["{}"])
    expected = hand_text_embeddings(backbone, preprocessor, ["cat", "dog"])
    np.testing.assert_allclose(clf.class_embeddings, expected, atol=TOL, rtol=0)


def test_default_templates_and_top_k(fixed_model, image_dir):
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    names = ["cat", "dog", "bird"]
    clf = SigLIP2ZeroShotClassifier(backbone, preprocessor, names)
    assert clf.templates == list(DEFAULT_TEMPLATES)
    probs = clf.predict(paths[:3])
    top = clf.top_k(paths[:3], k=2)
    assert len(top) == 3
    for row, pairs in zip(probs, top):
        order = np.argsort(-row)[:2]
        assert [label for label, _ in pairs] == [names[j] for j in order]
        np.testing.assert_allclose([p for _, p in pairs], row[order], atol=1e-6)
    assert len(clf.top_k(paths[:1], k=10)[0]) == 3  # k capped at the number of classes


@pytest.mark.parametrize("lang,names", [("fr", ["chat", "chien"]), ("zh", ["猫", "狗"])])
def test_other_languages(fixed_model, image_dir, lang, names):
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    templates = templates_for_language(lang)
    assert templates == list(TEMPLATES[lang])
    clf = SigLIP2ZeroShotClassifier(backbone, preprocessor, names, templates)
    _, probs = hand_probabilities(
        backbone, preprocessor, [read_rgb(p) for p in paths[:2]], names, templates
    )
    np.testing.assert_allclose(clf.predict(paths[:2]), probs, atol=TOL, rtol=0)


def test_naflex(naflex_model, image_dir):
    backbone, preprocessor = naflex_model
    _, paths = image_dir  # images of several aspect ratios
    names = ["cat", "dog", "bird"]
    clf = SigLIP2ZeroShotClassifier(backbone, preprocessor, names, ["a photo of a {}."],
                                    batch_size=4)
    _, probs = hand_probabilities(
        backbone, preprocessor, [read_rgb(p) for p in paths], names, ["a photo of a {}."]
    )
    assert np.std(probs) > 0.02
    np.testing.assert_allclose(clf.predict(paths), probs, atol=TOL, rtol=0)


def test_image_input_forms_agree(fixed_model, image_dir):
    backbone, preprocessor = fixed_model
    folder, paths = image_dir
    clf = SigLIP2ZeroShotClassifier(backbone, preprocessor, ["cat", "dog"])
    by_path = clf.predict(paths[:2])
    arrays = [read_rgb(p) for p in paths[:2]]
    np.testing.assert_allclose(clf.predict(arrays), by_path, atol=1e-6)
    np.testing.assert_allclose(clf.predict([Image.fromarray(a) for a in arrays]), by_path, atol=1e-6)
    np.testing.assert_allclose(clf.predict(arrays[0])[0], by_path[0], atol=1e-6)
    assert clf.predict(str(folder)).shape == (len(paths), 2)  # a folder: all its images
    same = [read_rgb(paths[0]), read_rgb(paths[5])]  # both 16 x 16: a (B, H, W, 3) batch
    np.testing.assert_allclose(clf.predict(np.stack(same))[0], by_path[0], atol=1e-6)


def test_evaluate_accuracy_matches_hand_computation(fixed_model, image_dir):
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    names = ["cat", "dog", "bird"]
    clf = SigLIP2ZeroShotClassifier(backbone, preprocessor, names, ["a photo of a {}."])
    logits, _ = hand_probabilities(
        backbone, preprocessor, [read_rgb(p) for p in paths], names, ["a photo of a {}."]
    )
    labels = [i % 3 for i in range(len(paths))]
    expected = float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))
    result = clf.evaluate(paths, labels)
    assert result["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert result["num_images"] == len(paths)
    assert clf.evaluate(paths, [names[i] for i in labels])["accuracy"] == result["accuracy"]
    with pytest.raises(ValueError, match="not one of the class names"):
        clf.evaluate(paths[:1], ["horse"])
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        clf.evaluate(paths[:2], ["cat"])


def test_bad_input(fixed_model, naflex_model, image_dir, tmp_path):
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    with pytest.raises(ValueError, match="is empty"):
        SigLIP2ZeroShotClassifier(backbone, preprocessor, [])
    with pytest.raises(ValueError, match="duplicate class names: 'cat'"):
        SigLIP2ZeroShotClassifier(backbone, preprocessor, ["cat", "dog", " cat"])
    with pytest.raises(ValueError, match="empty class name"):
        SigLIP2ZeroShotClassifier(backbone, preprocessor, ["cat", " "])
    with pytest.raises(TypeError, match="not one string"):
        SigLIP2ZeroShotClassifier(backbone, preprocessor, "cat,dog")
    with pytest.raises(ValueError, match="exactly once"):
        SigLIP2ZeroShotClassifier(backbone, preprocessor, ["cat"], ["a photo"])
    with pytest.raises(ValueError, match="No built-in prompt templates for language 'xx'"):
        templates_for_language("xx")
    with pytest.raises(ValueError, match="NaFlex image tower"):
        SigLIP2ZeroShotClassifier(naflex_model[0], preprocessor, ["cat"])
    clf = SigLIP2ZeroShotClassifier(backbone, preprocessor, ["cat", "dog"])
    with pytest.raises(ValueError, match="`k` must be an integer >= 1"):
        clf.top_k(paths[:1], k=0)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        clf.predict([paths[0], str(tmp_path / "missing.png")])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="Cannot read image .*bad.png"):
        clf.predict([paths[0], str(bad)])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        clf.predict(str(empty))
    with pytest.raises(ValueError, match=r"expected raw pixels in \[0, 255\]"):
        clf.predict(np.full((16, 16, 3), -1.0, np.float32))


def test_unreadable_images_are_skipped_by_the_loader(tmp_path):
    from keras_siglip2.tasks.images import UnreadableImageWarning, load_images

    good = write_images(tmp_path, [(8, 8), (8, 12)])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.warns(UnreadableImageWarning, match="broken.jpg"):
        arrays, kept, skipped = load_images(str(tmp_path))
    assert kept == [1, 2] and len(arrays) == 2  # broken.jpg sorts first
    assert skipped[0][0].endswith("broken.jpg")
    assert [a.shape for a in arrays] == [(8, 8, 3), (8, 12, 3)]
    np.testing.assert_array_equal(arrays[0], read_rgb(good[0]))
    with pytest.warns(UnreadableImageWarning), pytest.raises(
        ValueError, match="None of the 1 images could be read"
    ):
        load_images([str(tmp_path / "broken.jpg")])


@pytest.mark.large
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_same_results_on_other_backends(backend, spm_proto, image_dir, tmp_path):
    from keras_siglip2.models import SigLIP2Backbone
    from keras_siglip2.preprocessing import SigLIP2Preprocessor
    from keras_siglip2.tasks import SigLIP2Retriever
    from tests.conftest import run_in_backend
    from tests.tasks.conftest import make_tiny_preset

    _, paths = image_dir
    preset = make_tiny_preset(tmp_path / "preset", spm_proto)
    code = f"""
import json
import keras
from keras_siglip2.models import SigLIP2Backbone
from keras_siglip2.preprocessing import SigLIP2Preprocessor
from keras_siglip2.tasks import SigLIP2Retriever, SigLIP2ZeroShotClassifier
b = SigLIP2Backbone.from_preset({preset!r})
p = SigLIP2Preprocessor.from_preset({preset!r})
probs = SigLIP2ZeroShotClassifier(b, p, ["cat", "dog", "bird"]).predict({paths!r})
r = SigLIP2Retriever(b, p, batch_size=4, verbose=False)
r.add_images({paths!r})
print(json.dumps({{"backend": keras.backend.backend(), "probs": probs.tolist(),
                  "images": r.image_embeddings.tolist()}}))
"""
    result = run_in_backend(backend, code)
    assert result["backend"] == backend
    backbone = SigLIP2Backbone.from_preset(preset)
    preprocessor = SigLIP2Preprocessor.from_preset(preset)
    probs = SigLIP2ZeroShotClassifier(backbone, preprocessor, ["cat", "dog", "bird"]).predict(paths)
    retriever = SigLIP2Retriever(backbone, preprocessor, batch_size=4, verbose=False)
    retriever.add_images(paths)
    np.testing.assert_allclose(result["probs"], probs, atol=TOL, rtol=0)
    np.testing.assert_allclose(result["images"], retriever.image_embeddings, atol=TOL, rtol=0)


def test_warns_when_prompts_tokenize_alike(fixed_model, image_dir):
    """Two long names that differ only after the sequence length: one warning naming
    both and the length; their probabilities are then equal (what the warning says).
    Names that differ within the length give no warning."""
    import warnings

    from tests.tasks.conftest import SEQUENCE_LENGTH

    backbone, preprocessor = fixed_model
    _, paths = image_dir
    stem = " ".join(["cat"] * (2 * SEQUENCE_LENGTH))
    names = [f"{stem} red", f"{stem} blue", "dog"]
    with pytest.warns(UserWarning) as caught:
        clf = SigLIP2ZeroShotClassifier(backbone, preprocessor, names, templates=["{}"])
    messages = [str(w.message) for w in caught if "identical token ids" in str(w.message)]
    assert len(messages) == 1, messages
    assert repr(names[0]) in messages[0] and repr(names[1]) in messages[0]
    assert repr("dog") not in messages[0]
    assert f"all {SEQUENCE_LENGTH} tokens" in messages[0] and "cut off" in messages[0]
    probs = clf.predict(paths)
    np.testing.assert_array_equal(probs[:, 0], probs[:, 1])
    assert np.max(np.abs(probs[:, 0] - probs[:, 2])) > 1e-4

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        SigLIP2ZeroShotClassifier(backbone, preprocessor, ["red cat", "blue cat"],
                                  templates=["{}"])
