"""SigLIP2Retriever: search scores and recall@k equal the ones computed by hand from
the model's embeddings, the .npz index round-trips, unreadable images are skipped with
a warning, and bad input gets a clear error."""

import numpy as np
import pytest

from keras_siglip2.tasks import SigLIP2Retriever, recall_at_k
from keras_siglip2.tasks.images import UnreadableImageWarning
from keras_siglip2.tasks.retrieval import paired_recalls, read_index
from tests.tasks.conftest import hand_image_embeddings, hand_text_embeddings, read_rgb

TOL = 1e-5
CAPTIONS = [
    "a photo of a cat", "a red square", "two dogs in the park", "a blue circle",
    "a bird on the grass", "a man riding a bicycle", "the quick brown fox", "a red ball",
]


def hand_rank_recall(similarity, k):
    """Recall@k by sorting each row (an independent way of counting)."""
    hits = [i in np.argsort(-similarity[i], kind="stable")[:k] for i in range(similarity.shape[0])]
    return float(np.mean(hits))


@pytest.fixture(scope="module")
def hand(fixed_model, image_dir):
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    return (
        hand_image_embeddings(backbone, preprocessor, [read_rgb(p) for p in paths]),
        hand_text_embeddings(backbone, preprocessor, CAPTIONS),
    )


def test_search_matches_hand_computation(fixed_model, image_dir, hand):
    backbone, preprocessor = fixed_model
    folder, paths = image_dir
    zimg, ztxt = hand
    retriever = SigLIP2Retriever(backbone, preprocessor, batch_size=4, verbose=False)
    assert retriever.add_images(str(folder)) == paths  # ids: the sorted file paths
    assert retriever.add_texts(CAPTIONS) == CAPTIONS
    np.testing.assert_allclose(retriever.image_embeddings, zimg, atol=TOL, rtol=0)
    np.testing.assert_allclose(retriever.text_embeddings, ztxt, atol=TOL, rtol=0)

    # text -> images
    cos = zimg @ ztxt[2]
    assert np.std(cos) > 1e-2
    results = retriever.search(CAPTIONS[2], k=3)
    order = np.argsort(-cos)[:3]
    assert [r[0] for r in results] == [paths[i] for i in order]
    np.testing.assert_allclose([r[1] for r in results], cos[order], atol=TOL, rtol=0)
    # probabilities: sigmoid(exp(t) cos + b)
    t = float(np.asarray(backbone.logit_head.log_temperature)[0])
    b = float(np.asarray(backbone.logit_head.bias)[0])
    probs = retriever.search(CAPTIONS[2], k=3, probabilities=True)
    expected = 1 / (1 + np.exp(-(np.exp(t) * cos[order] + b)))
    np.testing.assert_allclose([p for _, p in probs], expected, atol=TOL, rtol=0)

    # image -> texts (an array query), and image -> images
    query = read_rgb(paths[3])
    cos_t = ztxt @ zimg[3]
    results = retriever.search(query, k=len(CAPTIONS))
    assert [r[0] for r in results] == [CAPTIONS[i] for i in np.argsort(-cos_t)]
    np.testing.assert_allclose([r[1] for r in results], np.sort(cos_t)[::-1], atol=TOL, rtol=0)
    top = retriever.search_image(paths[3], k=1, target="images")
    assert top[0][0] == paths[3] and top[0][1] == pytest.approx(1.0, abs=1e-5)
    assert len(retriever.search("a cat", k=100)) == len(paths)  # k capped


def test_save_and_load(fixed_model, image_dir, tmp_path):
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    retriever = SigLIP2Retriever(backbone, preprocessor, verbose=False)
    retriever.add_images(paths[:5], ids=[f"im{i}" for i in range(5)])
    retriever.add_images([read_rgb(paths[5])])  # an array: its running number as id
    retriever.add_texts(CAPTIONS[:3], ids=[10, 11, 12])
    assert retriever.image_ids == ["im0", "im1", "im2", "im3", "im4", 5]
    path = retriever.save(tmp_path / "index.npz")
    data = read_index(path)
    np.testing.assert_array_equal(data["image_embeddings"], retriever.image_embeddings)
    assert data["image_ids"] == retriever.image_ids and data["text_ids"] == [10, 11, 12]

    loaded = SigLIP2Retriever(backbone, preprocessor, verbose=False).load(path)
    assert loaded.search("a red square", k=6) == retriever.search("a red square", k=6)
    assert loaded.search(read_rgb(paths[0]), k=3) == retriever.search(read_rgb(paths[0]), k=3)

    with pytest.raises(ValueError, match="must end with .npz"):
        retriever.save(tmp_path / "index.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loaded.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a keras_siglip2 retrieval index"):
        loaded.load(tmp_path / "other.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable .npz index"):
        loaded.load(tmp_path / "corrupt.npz")


def test_load_refuses_another_model(fixed_model, tmp_path):
    backbone, preprocessor = fixed_model
    retriever = SigLIP2Retriever(backbone, preprocessor, verbose=False)
    retriever.text_embeddings = np.zeros((2, backbone.embedding_dim + 1), np.float32)
    retriever.text_ids = ["a", "b"]
    path = retriever.save(tmp_path / "wide.npz")
    with pytest.raises(ValueError, match="holds 33-d embeddings but this backbone's are 32-d"):
        SigLIP2Retriever(backbone, preprocessor, verbose=False).load(path)


def test_evaluate_matches_hand_computation(fixed_model, image_dir, hand):
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    zimg, ztxt = hand
    retriever = SigLIP2Retriever(backbone, preprocessor, batch_size=8, verbose=False)
    result = retriever.evaluate(paths, CAPTIONS)
    similarity = zimg @ ztxt.T
    for k in (1, 5, 10):
        assert result["image_to_text"][f"recall@{k}"] == pytest.approx(
            hand_rank_recall(similarity, k), abs=1e-9)
        assert result["text_to_image"][f"recall@{k}"] == pytest.approx(
            hand_rank_recall(similarity.T, k), abs=1e-9)
    assert result["num_pairs"] == len(paths)
    assert result["image_to_text"]["recall@10"] == 1.0  # 8 candidates
    assert retriever.image_embeddings.shape[0] == 0  # the index is untouched


def test_recall_at_k_known_values():
    # Query i's match sits at rank perm[i] (0-based) in a hand-built matrix.
    ranks = np.array([0, 3, 1, 7, 5, 2])
    similarity = np.zeros((6, 9))
    for i, r in enumerate(ranks):
        others = [j for j in range(9) if j != i]
        similarity[i, others] = np.linspace(1.0, 0.1, 8)
        similarity[i, i] = (similarity[i, others[r - 1]] + similarity[i, others[r]]) / 2 if r else 2.0
    result = recall_at_k(similarity, ks=(1, 3, 5, 8))
    assert result == {"recall@1": 1 / 6, "recall@3": 3 / 6, "recall@5": 4 / 6, "recall@8": 1.0}
    both = paired_recalls(np.eye(4), np.eye(4))
    assert both["image_to_text"]["recall@1"] == 1.0 and both["text_to_image"]["recall@1"] == 1.0


def test_unreadable_images_are_skipped(fixed_model, image_dir, tmp_path):
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in paths[:3]:
        (folder / p.rsplit("/", 1)[1]).write_bytes(open(p, "rb").read())
    (folder / "img01_broken.png").write_bytes(b"\x89PNG broken")
    retriever = SigLIP2Retriever(backbone, preprocessor, verbose=False)
    with pytest.warns(UnreadableImageWarning, match="img01_broken.png"):
        ids = retriever.add_images(str(folder))
    assert [i.rsplit("/", 1)[1] for i in ids] == ["img00.png", "img01.png", "img02.png"]
    assert retriever.image_embeddings.shape == (3, backbone.embedding_dim)
    assert retriever.skipped[0][0].endswith("img01_broken.png")
    # evaluate drops the pair of an unreadable image
    images = [paths[0], str(folder / "img01_broken.png"), paths[1]]
    with pytest.warns(UserWarning):
        result = retriever.evaluate(images, ["a", "b", "c"])
    assert result["num_pairs"] == 2


def test_progress_bar(fixed_model, image_dir, capsys):
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    retriever = SigLIP2Retriever(backbone, preprocessor, batch_size=4, verbose=True)
    retriever.add_images(paths)
    out = capsys.readouterr().out
    assert "8/8" in out


def test_bad_input(fixed_model, image_dir, tmp_path):
    backbone, preprocessor = fixed_model
    _, paths = image_dir
    retriever = SigLIP2Retriever(backbone, preprocessor, verbose=False)
    with pytest.raises(ValueError, match="holds no images to search"):
        retriever.search("a cat")
    with pytest.raises(ValueError, match="holds no texts to search"):
        retriever.search(read_rgb(paths[0]))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        retriever.add_images([paths[0], str(tmp_path / "nope.png")])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="contains no images"):
        retriever.add_images(str(empty))
    with pytest.raises(ValueError, match="Got 1 ids for 2 images"):
        retriever.add_images(paths[:2], ids=["a"])
    with pytest.raises(TypeError, match="ids must be str or int"):
        retriever.add_texts(["a"], ids=[1.5])
    with pytest.raises(ValueError, match="`texts` is empty"):
        retriever.add_texts([])
    with pytest.raises(ValueError, match="paired data: got 2 images and 1 texts"):
        retriever.evaluate(paths[:2], ["a"])
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        SigLIP2Retriever(backbone, preprocessor, batch_size=0)
    retriever.add_texts(["a"])
    with pytest.raises(ValueError, match="`k` must be an integer >= 1"):
        retriever.search(read_rgb(paths[0]), k=0)
