"""Image-text retrieval with SigLIP 2 (paper sec. 3.1: COCO / Flickr retrieval,
recall@k in both directions).

`SigLIP2Retriever` embeds image folders and text lists in batches (with a progress bar),
keeps a NumPy index of L2-normalized embeddings that can be saved to / loaded from an
`.npz` file, answers `search(text_or_image, k)` by cosine similarity (a text query
searches the images, an image query the texts), and `evaluate` computes recall@1/5/10
image->text and text->image on a paired set.
"""

import json
import os
import warnings

import numpy as np

from keras_siglip2.tasks.embedding import SigLIP2Embedder, check_texts, sigmoid
from keras_siglip2.media.images import as_image_list, describe
from keras_siglip2.checks import check_positive_int

INDEX_FORMAT = "keras_siglip2.retrieval.v1"
DEFAULT_RECALL_KS = (1, 5, 10)


def ranks_of_matches(similarity):
    """For a (Q, T) similarity matrix whose query i matches target i: the 0-based rank
    of each match, the number of targets scored strictly higher (ties count in the
    match's favour)."""
    similarity = np.asarray(similarity)
    if similarity.ndim != 2 or similarity.shape[0] > similarity.shape[1]:
        raise ValueError(
            "`similarity` must be (Q, T) with Q <= T, query i matching target i; got "
            f"shape {similarity.shape}."
        )
    matched = similarity[np.arange(similarity.shape[0]), np.arange(similarity.shape[0])]
    return np.sum(similarity > matched[:, None], axis=1)


def recall_at_k(similarity, ks=DEFAULT_RECALL_KS):
    """{"recall@k": fraction of queries whose match is among the top k} for a (Q, T)
    similarity matrix in which query i matches target i."""
    ranks = ranks_of_matches(similarity)
    return {f"recall@{k}": float(np.mean(ranks < k)) for k in ks}


def paired_recalls(image_embeddings, text_embeddings, ks=DEFAULT_RECALL_KS):
    """Recall@k both ways for paired normalized embeddings (image i <-> text i)."""
    similarity = np.asarray(image_embeddings) @ np.asarray(text_embeddings).T
    return {
        "image_to_text": recall_at_k(similarity, ks),
        "text_to_image": recall_at_k(similarity.T, ks),
        "num_pairs": int(similarity.shape[0]),
    }


def _check_ids(ids, n, what):
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"Got {len(ids)} ids for {n} {what}; give one id per item.")
    for i, x in enumerate(ids):
        if isinstance(x, np.integer):
            ids[i] = x = int(x)
        if isinstance(x, bool) or not isinstance(x, (str, int)):
            raise TypeError(
                f"`ids[{i}]` = {x!r}: ids must be str or int (they are saved as JSON)."
            )
    return ids


def _check_k(k):
    return check_positive_int("k", k)


def _npz_path(path):
    path = os.path.expanduser(os.fspath(path))
    if not path.endswith(".npz"):
        raise ValueError(f"Index path {path!r} must end with .npz.")
    return path


def read_index(path):
    """The arrays of a saved index: {"image_embeddings", "image_ids", "text_embeddings",
    "text_ids", "logit_scale", "logit_bias"} (NumPy only, no model needed)."""
    path = _npz_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Index file {path!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path!r} is not a readable .npz index: {e}") from None
    if str(data.get("format", "")) != INDEX_FORMAT:
        raise ValueError(
            f"{path!r} is not a keras_siglip2 retrieval index (format "
            f"{str(data.get('format', 'missing'))!r}, expected {INDEX_FORMAT!r}); write "
            "one with SigLIP2Retriever.save or `siglip2 embed --out FILE.npz`."
        )
    return {
        "image_embeddings": data["image_embeddings"].astype(np.float32),
        "image_ids": json.loads(str(data["image_ids"])),
        "text_embeddings": data["text_embeddings"].astype(np.float32),
        "text_ids": json.loads(str(data["text_ids"])),
        "logit_scale": float(data["logit_scale"]),
        "logit_bias": float(data["logit_bias"]),
    }


class SigLIP2Retriever:
    """A searchable index of normalized image and text embeddings.

    Args:
        backbone: a `SigLIP2Backbone`; preprocessor: its `SigLIP2Preprocessor`.
        batch_size: images / texts per forward pass.
        verbose: show a progress bar while embedding.

    Attributes: `image_embeddings` (N_img, D), `image_ids`, `text_embeddings`
    (N_txt, D), `text_ids` (float32 NumPy; ids are str or int).

    Example:
    ```python
    retriever = keras_siglip2.SigLIP2Retriever(backbone, preprocessor)
    retriever.add_images("photos/")                 # ids: the file paths
    retriever.search("a dog on a beach", k=5)       # [(path, cosine), ...]
    retriever.save("photos.npz")
    retriever.evaluate(image_paths, captions)       # recall@1/5/10 both ways
    ```
    """

    def __init__(self, backbone, preprocessor, batch_size=32, verbose=True):
        self.embedder = SigLIP2Embedder(backbone, preprocessor, batch_size=batch_size)
        self.verbose = bool(verbose)
        dim = self.embedder.embedding_dim
        self.image_embeddings = np.zeros((0, dim), np.float32)
        self.image_ids = []
        self.text_embeddings = np.zeros((0, dim), np.float32)
        self.text_ids = []
        self.skipped = []  # (name, reason) of unreadable images met by add_images

    @property
    def embedding_dim(self):
        return self.embedder.embedding_dim

    # ------------------------------------------------------------------ indexing
    def add_images(self, images, ids=None):
        """Embeds and indexes images: folder or file paths, PIL images, arrays, or a
        list of these. `ids` (one per single image, folders expanded): str or int;
        by default the file path, or the running number of an array in the index.
        Unreadable files are skipped with a warning naming them. Returns the ids
        added."""
        items = as_image_list(images)
        if ids is not None:
            ids = _check_ids(ids, len(items), "images")
        out = self.embedder.embed_images(items, verbose=self.verbose, skip_unreadable=True)
        self.skipped.extend(out.skipped)
        if ids is None:
            start = len(self.image_ids)
            ids = [
                describe(items[i], i) if isinstance(items[i], (str, os.PathLike)) else start + n
                for n, i in enumerate(out.kept)
            ]
        else:
            ids = [ids[i] for i in out.kept]
        self.image_embeddings = np.concatenate([self.image_embeddings, out.embeddings])
        self.image_ids.extend(ids)
        return ids

    def add_texts(self, texts, ids=None):
        """Embeds and indexes texts; `ids` default to the texts themselves."""
        texts = check_texts(texts)
        ids = list(texts) if ids is None else _check_ids(ids, len(texts), "texts")
        embeddings = self.embedder.embed_texts(texts, verbose=self.verbose)
        self.text_embeddings = np.concatenate([self.text_embeddings, embeddings])
        self.text_ids.extend(ids)
        return ids

    # ------------------------------------------------------------------ search
    def _scores(self, query_embedding, target, probabilities):
        if target not in ("images", "texts"):
            raise ValueError(f"`target` must be 'images' or 'texts'; got {target!r}.")
        embeddings = self.image_embeddings if target == "images" else self.text_embeddings
        if embeddings.shape[0] == 0:
            adder = "add_images" if target == "images" else "add_texts"
            raise ValueError(
                f"The index holds no {target} to search; call `{adder}` (or `load`) first."
            )
        cos = embeddings @ query_embedding
        if probabilities:
            return sigmoid(self.embedder.logit_scale * cos + self.embedder.logit_bias)
        return cos

    def _top(self, scores, ids, k):
        k = min(_check_k(k), scores.shape[0])
        order = np.argsort(-scores, kind="stable")[:k]
        return [(ids[i], float(scores[i])) for i in order]

    def search_text(self, text, k=5, target="images", probabilities=False):
        """The `k` best `(id, score)` for a text query (default: among the images).
        Score: cosine similarity, or with `probabilities=True` the model's match
        probability sigmoid(exp(t) * cos + b)."""
        if not isinstance(text, str):
            raise TypeError(f"A text query must be a str; got {type(text).__name__}.")
        query = self.embedder.embed_texts([text])[0]
        ids = self.image_ids if target == "images" else self.text_ids
        return self._top(self._scores(query, target, probabilities), ids, k)

    def search_image(self, image, k=5, target="texts", probabilities=False):
        """The `k` best `(id, score)` for an image query (a path, PIL image or
        array), by default among the texts (`target="images"`: similar images)."""
        items = as_image_list(image)
        if len(items) != 1:
            raise ValueError(f"An image query must be one image; got {len(items)}.")
        query = self.embedder.embed_images(items, skip_unreadable=False).embeddings[0]
        ids = self.image_ids if target == "images" else self.text_ids
        return self._top(self._scores(query, target, probabilities), ids, k)

    def search(self, query, k=5, target=None, probabilities=False):
        """`k` best `(id, score)` for a query: a `str` is a text and searches the
        images; anything else (a `pathlib.Path`, PIL image, array) is an image and
        searches the texts. `target` ("images" / "texts") overrides the side
        searched. Use `search_image("cat.jpg")` for an image given as a str path."""
        if isinstance(query, str):
            return self.search_text(query, k, target or "images", probabilities)
        return self.search_image(query, k, target or "texts", probabilities)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, images, texts, ks=DEFAULT_RECALL_KS):
        """Recall@k image->text and text->image on a paired set (image i is described
        by text i). The index is not changed. Pairs whose image cannot be read are
        left out (with a warning). Returns `{"image_to_text": {"recall@1": ...},
        "text_to_image": {...}, "num_pairs": n}`."""
        items = as_image_list(images)
        texts = check_texts(texts)
        if len(items) != len(texts):
            raise ValueError(
                f"`evaluate` needs paired data: got {len(items)} images and {len(texts)} "
                "texts."
            )
        out = self.embedder.embed_images(items, verbose=self.verbose, skip_unreadable=True)
        if out.skipped:
            warnings.warn(
                f"evaluate: left out {len(out.skipped)} pair(s) with unreadable images.",
                stacklevel=2,
            )
        text_embeddings = self.embedder.embed_texts(
            [texts[i] for i in out.kept], verbose=self.verbose
        )
        return paired_recalls(out.embeddings, text_embeddings, ks)

    # ------------------------------------------------------------------ files
    def save(self, path):
        """Writes the index to an `.npz` file (embeddings, ids as JSON, exp(t), b)."""
        path = _npz_path(path)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        np.savez(
            path,
            format=np.array(INDEX_FORMAT),
            image_embeddings=self.image_embeddings,
            image_ids=np.array(json.dumps(self.image_ids, ensure_ascii=False)),
            text_embeddings=self.text_embeddings,
            text_ids=np.array(json.dumps(self.text_ids, ensure_ascii=False)),
            logit_scale=np.float64(self.embedder.logit_scale),
            logit_bias=np.float64(self.embedder.logit_bias),
        )
        return path

    def load(self, path):
        """Replaces the index by one saved with `save`; returns self. Raises
        ValueError if its embedding width differs from the backbone's, and warns if
        it was written with another temperature / bias (another model)."""
        data = read_index(path)
        for key in ("image_embeddings", "text_embeddings"):
            width = data[key].shape[1] if data[key].ndim == 2 else None
            if width != self.embedding_dim:
                raise ValueError(
                    f"Index {path!r} holds {width}-d embeddings but this backbone's are "
                    f"{self.embedding_dim}-d: it was built with another model."
                )
        same = np.isclose(data["logit_scale"], self.embedder.logit_scale, rtol=1e-5) and (
            np.isclose(data["logit_bias"], self.embedder.logit_bias, rtol=1e-5, atol=1e-6)
        )
        if not same:
            warnings.warn(
                f"Index {path!r} was written with exp(t)={data['logit_scale']:g}, "
                f"b={data['logit_bias']:g} but this backbone has "
                f"exp(t)={self.embedder.logit_scale:g}, b={self.embedder.logit_bias:g}: "
                "it was probably built with another model.",
                stacklevel=2,
            )
        self.image_embeddings = data["image_embeddings"]
        self.image_ids = data["image_ids"]
        self.text_embeddings = data["text_embeddings"]
        self.text_ids = data["text_ids"]
        return self


__all__ = [
    "SigLIP2Retriever",
    "paired_recalls",
    "ranks_of_matches",
    "read_index",
    "recall_at_k",
]
