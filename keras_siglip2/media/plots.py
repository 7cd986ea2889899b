"""Pictures of what SigLIP 2 does (paper sec. 3: zero-shot classification, retrieval,
dense features): an image with its top labels, a grid of retrieved images, an
image-text similarity heatmap and a patch-similarity overlay.

Every function writes one PNG and returns its path. Figures are drawn with
matplotlib's Agg canvas directly (no pyplot, the global backend is left alone), so they
work headless, in scripts and in notebooks. Sizes are in pixels (`size=(width, height)`
with documented defaults) so a caller knows what it gets.
"""

import os
import textwrap
import warnings

import numpy as np

from keras_siglip2.tasks.embedding import normalize, sigmoid
from keras_siglip2.media.images import to_rgb_array

DPI = 100


def _check_path(path):
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"Plot path {path!r} must end with .png (the plots are PNG images).")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return path


def _check_size(size):
    width, height = (int(s) for s in size)
    if width < 50 or height < 50:
        raise ValueError(f"`size` must be at least (50, 50) pixels; got {tuple(size)}.")
    return width, height


def _figure(size):
    # lazy: optional heavy dependency (matplotlib), only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # lazy: optional heavy dependency

    width, height = _check_size(size)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    with warnings.catch_warnings():
        # Fonts without CJK / Devanagari glyphs draw boxes; do not warn per glyph.
        warnings.filterwarnings("ignore", message=".*Glyph.*missing.*")
        warnings.filterwarnings("ignore", message=".*[Tt]ight.*layout.*")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=DPI)
    return path


def _display_array(image, where="image"):
    array = to_rgb_array(image, where=where)
    if array.dtype != np.uint8:
        array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    return array


def _short(label, width=28):
    label = str(label)
    base = os.path.basename(label) if os.sep in label else label
    return base if len(base) <= width else base[: width - 1] + "…"


def _text_panel(ax, text):
    ax.axis("off")
    ax.text(
        0.5, 0.5, "\n".join(textwrap.wrap(str(text), 18)) or " ",
        ha="center", va="center", fontsize=10, wrap=True, transform=ax.transAxes,
    )


def _is_many(x):
    return isinstance(x, (list, tuple))


# --------------------------------------------------------------------------- classification


def plot_classification(image, labels_probs, path, title=None, size=None):
    """The image beside a bar chart of its labels' probabilities.

    Args:
        image: an image (path, PIL image, array in [0, 255]) or a list of images.
        labels_probs: list of `(label, probability)` (e.g. from
            `SigLIP2ZeroShotClassifier.top_k`), or one such list per image.
        path: the `.png` to write.
        title: optional title (per image when a list).
        size: (width, height) pixels; default (800, 300 * number of images).
    Returns `path`.
    """
    path = _check_path(path)
    images = list(image) if _is_many(image) else [image]
    rows = list(labels_probs) if _is_many(image) else [labels_probs]
    if len(rows) != len(images):
        raise ValueError(f"Got {len(images)} images but {len(rows)} label lists.")
    titles = list(title) if _is_many(title) else [title] * len(images)
    fig = _figure(size or (800, 300 * len(images)))
    for r, (img, pairs, ttl) in enumerate(zip(images, rows, titles)):
        pairs = list(pairs)
        if not pairs:
            raise ValueError(f"`labels_probs` for image {r} is empty.")
        labels = [_short(label) for label, _ in pairs]
        probs = np.asarray([float(p) for _, p in pairs])
        if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
            raise ValueError(
                f"Probabilities must lie in [0, 1]; got {probs.tolist()} for image {r}."
            )
        ax_img = fig.add_subplot(len(images), 2, 2 * r + 1)
        ax_img.imshow(_display_array(img, f"image {r}"))
        ax_img.axis("off")
        if ttl:
            ax_img.set_title(_short(ttl, 40), fontsize=9)
        ax_bar = fig.add_subplot(len(images), 2, 2 * r + 2)
        y = np.arange(len(labels))
        ax_bar.barh(y, probs, color="tab:blue")
        ax_bar.set_yticks(y, labels, fontsize=9)
        ax_bar.invert_yaxis()
        ax_bar.set_xlim(0, 1)
        ax_bar.set_xlabel("probability (sigmoid, per label)", fontsize=8)
        for yi, p in zip(y, probs):
            ax_bar.text(min(p + 0.02, 0.85), yi, f"{p:.3f}", va="center", fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------- retrieval


def plot_retrieval_grid(query, images, scores, path, ids=None, size=None):
    """A row with the query (text or image) followed by the retrieved images and
    their scores.

    Args:
        query: a text (str) or an image; or a list of queries (one row each).
        images: the retrieved images (paths, PIL images, arrays), best first; one list
            per query when `query` is a list.
        scores: one score per retrieved image (same nesting as `images`).
        path: the `.png` to write.
        ids: optional captions per image (default: file names of path images).
        size: (width, height) pixels; default (200 * (1 + most results), 250 * rows).
    Returns `path`.
    """
    path = _check_path(path)
    many = _is_many(query)
    queries = list(query) if many else [query]
    image_rows = [list(r) for r in images] if many else [list(images)]
    score_rows = [list(r) for r in scores] if many else [list(scores)]
    if ids is None:
        id_rows = [[None] * len(r) for r in image_rows]
    else:
        id_rows = [list(r) for r in ids] if many else [list(ids)]
    if not (len(queries) == len(image_rows) == len(score_rows) == len(id_rows)):
        raise ValueError("`query`, `images`, `scores` (and `ids`) must have one row per query.")
    for r, (imgs, scs, cap) in enumerate(zip(image_rows, score_rows, id_rows)):
        if not imgs:
            raise ValueError(f"Query {r} has no retrieved images to show.")
        if not (len(imgs) == len(scs) == len(cap)):
            raise ValueError(
                f"Query {r}: {len(imgs)} images, {len(scs)} scores and {len(cap)} ids; "
                "give one score (and id) per image."
            )
    columns = 1 + max(len(r) for r in image_rows)
    fig = _figure(size or (200 * columns, 250 * len(queries)))
    for r, (q, imgs, scs, cap) in enumerate(zip(queries, image_rows, score_rows, id_rows)):
        ax = fig.add_subplot(len(queries), columns, r * columns + 1)
        if isinstance(q, str):
            _text_panel(ax, f"query:\n{q}")
        else:
            ax.imshow(_display_array(q, "query image"))
            ax.axis("off")
            ax.set_title("query", fontsize=9)
        for c, (img, score, name) in enumerate(zip(imgs, scs, cap)):
            ax = fig.add_subplot(len(queries), columns, r * columns + c + 2)
            ax.imshow(_display_array(img, f"result {c}"))
            ax.axis("off")
            if name is None and isinstance(img, (str, os.PathLike)):
                name = os.fspath(img)
            caption = f"#{c + 1}  {float(score):.3f}"
            if name is not None:
                caption += f"\n{_short(name, 22)}"
            ax.set_title(caption, fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------- heatmap


def similarity_matrix(image_embeddings, text_embeddings, logit_scale=None, logit_bias=None):
    """Cosine similarities (N_img, N_txt) of the (re)normalized embeddings; with
    `logit_scale` (exp(t)) and `logit_bias` (b) the probabilities
    sigmoid(exp(t) * cos + b) instead."""
    zimg = normalize(image_embeddings)
    ztxt = normalize(text_embeddings)
    if zimg.ndim != 2 or ztxt.ndim != 2 or zimg.shape[1] != ztxt.shape[1]:
        raise ValueError(
            "Embeddings must be (N_img, D) and (N_txt, D) of the same D; got shapes "
            f"{zimg.shape} and {ztxt.shape}."
        )
    cos = zimg @ ztxt.T
    if logit_scale is None:
        return cos
    if logit_bias is None:
        raise ValueError("Give `logit_bias` with `logit_scale`.")
    return sigmoid(float(logit_scale) * cos + float(logit_bias))


def similarity_heatmap(image_embeddings, text_embeddings, image_labels, text_labels, path,
                       logit_scale=None, logit_bias=None, size=(800, 600)):
    """A heatmap of image-text similarities: rows are images, columns texts.

    Args:
        image_embeddings: (N_img, D); text_embeddings: (N_txt, D).
        image_labels, text_labels: names of the rows / columns, or None (numbers).
        path: the `.png` to write.
        logit_scale, logit_bias: exp(t) and b of the model to show match
            probabilities sigmoid(exp(t) * cos + b) instead of cosines.
        size: (width, height) pixels, default (800, 600).
    Values are written in the cells when the matrix has at most 20 x 20 entries.
    Returns `path`.
    """
    path = _check_path(path)
    values = similarity_matrix(image_embeddings, text_embeddings, logit_scale, logit_bias)
    n_img, n_txt = values.shape
    image_labels = [str(i) for i in range(n_img)] if image_labels is None else list(image_labels)
    text_labels = [str(j) for j in range(n_txt)] if text_labels is None else list(text_labels)
    if len(image_labels) != n_img or len(text_labels) != n_txt:
        raise ValueError(
            f"Got {len(image_labels)} image labels for {n_img} images and "
            f"{len(text_labels)} text labels for {n_txt} texts."
        )
    fig = _figure(size)
    ax = fig.add_subplot(1, 1, 1)
    probability = logit_scale is not None
    im = ax.imshow(values, cmap="viridis", aspect="auto",
                   vmin=0.0 if probability else None, vmax=1.0 if probability else None)
    ax.set_xticks(np.arange(n_txt), [_short(t, 20) for t in text_labels], rotation=45,
                  ha="right", fontsize=8)
    ax.set_yticks(np.arange(n_img), [_short(t, 20) for t in image_labels], fontsize=8)
    ax.set_xlabel("texts")
    ax.set_ylabel("images")
    ax.set_title("match probability sigmoid(exp(t) cos + b)" if probability else "cosine similarity",
                 fontsize=10)
    if n_img * n_txt <= 400:
        mid = (np.nanmax(values) + np.nanmin(values)) / 2
        for i in range(n_img):
            for j in range(n_txt):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if values[i, j] > mid else "white")
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


# --------------------------------------------------------------------------- dense features


def patch_similarity(feature_map, query_patch):
    """Cosine similarity (h, w) of every patch feature with the one at
    `query_patch` = (row, col) of an (h, w, D) feature map."""
    fmap = np.asarray(feature_map, np.float32)
    if fmap.ndim != 3:
        raise ValueError(
            f"`feature_map` must be one (h, w, D) map (see patch_features); got shape {fmap.shape}."
        )
    row, col = (int(v) for v in query_patch)
    h, w = fmap.shape[:2]
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(
            f"`query_patch` = {tuple(query_patch)} is outside the {h} x {w} patch grid."
        )
    z = normalize(fmap)
    return z @ z[row, col]


def patch_similarity_overlay(image, feature_map, query_patch, path, alpha=0.55, size=(800, 400)):
    """The image with the query patch outlined, beside the image overlaid with the
    cosine similarity of every patch feature to the query patch's.

    Args:
        image: the image the features were computed from (path, PIL, array).
        feature_map: (h, w, D), e.g. one image of `patch_features(...)`.
        query_patch: (row, col) on the patch grid.
        path: the `.png` to write.
        alpha: opacity of the heatmap.
        size: (width, height) pixels, default (800, 400).
    Returns `path`.
    """
    path = _check_path(path)
    similarity = patch_similarity(feature_map, query_patch)
    array = _display_array(image)
    height, width = array.shape[:2]
    h, w = similarity.shape
    row, col = (int(v) for v in query_patch)
    extent = (0, width, height, 0)
    cell_h, cell_w = height / h, width / w

    from matplotlib.patches import Rectangle  # lazy: optional heavy dependency

    fig = _figure(size)
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(array, extent=extent)
    ax.add_patch(Rectangle((col * cell_w, row * cell_h), cell_w, cell_h, fill=False,
                           edgecolor="red", linewidth=2))
    ax.set_title(f"query patch ({row}, {col})", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(1, 2, 2)
    ax.imshow(array, extent=extent)
    im = ax.imshow(similarity, extent=extent, cmap="magma", alpha=alpha, vmin=-1.0, vmax=1.0,
                   interpolation="bilinear")
    ax.add_patch(Rectangle((col * cell_w, row * cell_h), cell_w, cell_h, fill=False,
                           edgecolor="cyan", linewidth=1.5))
    ax.set_title("cosine similarity to the query patch", fontsize=9)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


__all__ = [
    "patch_similarity",
    "patch_similarity_overlay",
    "plot_classification",
    "plot_retrieval_grid",
    "similarity_heatmap",
    "similarity_matrix",
]
