"""The plot helpers write valid PNGs of the documented pixel size; the numbers they draw
(similarities, patch similarities) equal hand computations; bad input is refused."""

import numpy as np
import pytest
from PIL import Image

from keras_siglip2.tasks import plots
from tests.tasks.conftest import write_images


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes the whole file: a truncated PNG fails here
        return image.size


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    return write_images(folder, [(32, 48), (40, 40), (20, 64), (30, 30)])


def test_plot_classification(pictures, tmp_path):
    pairs = [("cat", 0.91), ("dog", 0.05), ("a very long label " * 4, 0.0)]
    out = plots.plot_classification(pictures[0], pairs, tmp_path / "one.png", title="x")
    assert out == str(tmp_path / "one.png") and png_size(out) == (800, 300)
    out = plots.plot_classification(
        [pictures[1], np.zeros((10, 20, 3), np.uint8)], [pairs, pairs[:1]],
        tmp_path / "sub" / "two.png",
    )
    assert png_size(out) == (800, 600)
    assert png_size(plots.plot_classification(pictures[0], pairs, tmp_path / "s.png",
                                              size=(640, 200))) == (640, 200)
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
        plots.plot_classification(pictures[0], [("cat", 1.5)], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="must end with .png"):
        plots.plot_classification(pictures[0], pairs, tmp_path / "bad.jpg")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        plots.plot_classification(str(tmp_path / "missing.png"), pairs, tmp_path / "m.png")


def test_plot_retrieval_grid(pictures, tmp_path):
    out = plots.plot_retrieval_grid("a red square", pictures[:3], [0.3, 0.2, 0.1],
                                    tmp_path / "grid.png")
    assert png_size(out) == (800, 250)
    out = plots.plot_retrieval_grid(
        ["a cat", pictures[3]], [pictures[:2], pictures[1:4]], [[0.5, 0.4], [0.9, 0.8, 0.7]],
        tmp_path / "grid2.png", ids=[["a", "b"], ["c", "d", "e"]],
    )
    assert png_size(out) == (800, 500)
    with pytest.raises(ValueError, match="one score"):
        plots.plot_retrieval_grid("q", pictures[:2], [0.1], tmp_path / "g.png")


def test_similarity_heatmap_values(tmp_path):
    rng = np.random.RandomState(0)
    zimg, ztxt = rng.normal(size=(3, 8)), rng.normal(size=(5, 8))
    cos = plots.similarity_matrix(zimg, ztxt)
    hand = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in ztxt] for a in zimg])
    np.testing.assert_allclose(cos, hand, atol=1e-6)
    prob = plots.similarity_matrix(zimg, ztxt, logit_scale=10.0, logit_bias=-2.0)
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-(10 * hand - 2))), atol=1e-6)
    out = plots.similarity_heatmap(zimg, ztxt, ["i0", "i1", "i2"], list("abcde"),
                                   tmp_path / "heat.png")
    assert png_size(out) == (800, 600)
    out = plots.similarity_heatmap(zimg, ztxt, None, None, tmp_path / "heat2.png",
                                   logit_scale=10.0, logit_bias=-2.0, size=(500, 400))
    assert png_size(out) == (500, 400)
    with pytest.raises(ValueError, match="2 image labels for 3 images"):
        plots.similarity_heatmap(zimg, ztxt, ["a", "b"], None, tmp_path / "h.png")
    with pytest.raises(ValueError, match="same D"):
        plots.similarity_matrix(zimg, rng.normal(size=(2, 4)))


def test_patch_similarity_overlay(pictures, tmp_path):
    rng = np.random.RandomState(0)
    fmap = rng.normal(size=(4, 6, 16))
    sim = plots.patch_similarity(fmap, (1, 4))
    q = fmap[1, 4] / np.linalg.norm(fmap[1, 4])
    hand = np.einsum("hwd,d->hw", fmap / np.linalg.norm(fmap, axis=-1, keepdims=True), q)
    np.testing.assert_allclose(sim, hand, atol=1e-6)
    assert sim[1, 4] == pytest.approx(1.0, abs=1e-6) and sim.shape == (4, 6)
    out = plots.patch_similarity_overlay(pictures[0], fmap, (1, 4), tmp_path / "overlay.png")
    assert png_size(out) == (800, 400)
    with pytest.raises(ValueError, match="outside the 4 x 6 patch grid"):
        plots.patch_similarity(fmap, (4, 0))
    with pytest.raises(ValueError, match="one \\(h, w, D\\) map"):
        plots.patch_similarity(fmap[None], (0, 0))
