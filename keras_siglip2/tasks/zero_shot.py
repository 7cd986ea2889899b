"""Zero-shot image classification with SigLIP 2 (paper sec. 3.1, zero-shot
classification with prompt ensembling; any language, sec. 2 / 3.3 multilinguality).

Each class name is written into a few prompt templates ("a photo of a {}."); its text
embedding is the mean of the normalized template embeddings, normalized again (prompt
ensembling, as CLIP and SigLIP evaluate). An image gets one probability per class,
sigmoid(exp(t) * cos(image, class) + b): SigLIP's sigmoid loss scores every
(image, text) pair on its own, so the probabilities are independent (several labels can
be likely, or none) and are NOT a softmax over the classes.
"""

import warnings

import numpy as np

from keras_siglip2.tasks.embedding import SigLIP2Embedder, normalize, sigmoid
from keras_siglip2.checks import check_positive_int

# Small prompt sets per language. "{}" is replaced by the class name. The phrasings
# avoid articles / cases that depend on the noun where the language has them.
TEMPLATES = {
    "en": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a close-up photo of a {}.",
        "a good photo of a {}.",
        "a low resolution photo of a {}.",
    ),
    "de": ("ein Foto von {}.", "ein Bild von {}.", "eine Nahaufnahme von {}."),
    "fr": ("une photo de {}.", "une image de {}.", "une photo en gros plan de {}."),
    "es": ("una foto de {}.", "una imagen de {}.", "una foto de cerca de {}."),
    "it": ("una foto di {}.", "un'immagine di {}."),
    "pt": ("uma foto de {}.", "uma imagem de {}."),
    "nl": ("een foto van {}.", "een afbeelding van {}."),
    "ru": ("фотография: {}.", "изображение: {}."),
    "zh": ("一张{}的照片。", "{}的图片。"),
    "ja": ("{}の写真。", "{}の画像。"),
    "ko": ("{}의 사진.", "{}의 이미지."),
    "hi": ("{} की एक तस्वीर।", "{} की फ़ोटो।"),
}
DEFAULT_LANGUAGE = "en"
DEFAULT_TEMPLATES = TEMPLATES[DEFAULT_LANGUAGE]


def templates_for_language(lang):
    """The built-in prompt templates of a language code ("en", "de", "zh", ...)."""
    key = str(lang).strip().lower().replace("_", "-").split("-")[0]
    if key not in TEMPLATES:
        raise ValueError(
            f"No built-in prompt templates for language {lang!r}; available: "
            f"{', '.join(sorted(TEMPLATES))}. Pass your own `templates` (each with one "
            "'{}' for the class name)."
        )
    return list(TEMPLATES[key])


def check_class_names(class_names, name="class_names"):
    """A non-empty list of distinct, non-empty strings (surrounding spaces removed)."""
    if isinstance(class_names, str):
        raise TypeError(
            f"`{name}` must be a list of class names, not one string {class_names!r} "
            "(split it first, e.g. 'cat,dog'.split(','))."
        )
    try:
        names = list(class_names)
    except TypeError:
        raise TypeError(
            f"`{name}` must be a list of str; got {type(class_names).__name__}."
        ) from None
    if not names:
        raise ValueError(f"`{name}` is empty; give at least one class name.")
    cleaned = []
    for i, c in enumerate(names):
        if not isinstance(c, str):
            raise TypeError(f"`{name}[{i}]` must be a str; got {type(c).__name__}: {c!r}.")
        c = c.strip()
        if not c:
            raise ValueError(f"`{name}[{i}]` is an empty class name.")
        cleaned.append(c)
    seen, duplicates = set(), []
    for c in cleaned:
        if c in seen and c not in duplicates:
            duplicates.append(c)
        seen.add(c)
    if duplicates:
        raise ValueError(
            f"`{name}` has duplicate class names: {', '.join(repr(d) for d in duplicates)}; "
            "each class must appear once."
        )
    return cleaned


def check_templates(templates):
    """A non-empty list of strings, each with exactly one '{}'."""
    if isinstance(templates, str):
        templates = [templates]
    templates = list(templates)
    if not templates:
        raise ValueError("`templates` is empty; give at least one template such as 'a photo of a {}.'.")
    for i, t in enumerate(templates):
        if not isinstance(t, str):
            raise TypeError(f"`templates[{i}]` must be a str; got {type(t).__name__}.")
        if t.count("{}") != 1:
            raise ValueError(
                f"`templates[{i}]` = {t!r} must contain '{{}}' exactly once (where the "
                "class name goes)."
            )
    return templates


def alike_prompt_groups(token_ids):
    """Groups (lists of class indices, two or more) whose prompts give identical token
    ids in every template; `token_ids` is (C, T, L)."""
    groups = {}
    for index, ids in enumerate(np.asarray(token_ids)):
        groups.setdefault(ids.tobytes(), []).append(index)
    return [group for group in groups.values() if len(group) > 1]


def warn_alike_prompts(class_names, token_ids, pad_id=0):
    """Warns (UserWarning) for each group of classes whose prompts tokenize alike:
    the text tower then gives them one embedding and every image the same probability
    for each. Names the classes and the sequence length, and says whether the prompts
    were cut off at that length."""
    token_ids = np.asarray(token_ids)
    length = token_ids.shape[-1]
    for group in alike_prompt_groups(token_ids):
        names = ", ".join(repr(class_names[i]) for i in group)
        cut = bool(np.all(token_ids[group[0], :, -2] != pad_id))
        reason = (f"the prompts fill all {length} tokens, so the names were cut off at "
                  "the sequence length: shorten them" if cut else
                  f"at sequence length {length}; the tokenizer maps them to the same "
                  "pieces: rename them")
        warnings.warn(
            f"The classes {names} give identical token ids in every prompt ({reason}). "
            "The model cannot tell them apart: each image gets the same probability "
            "for all of them.", UserWarning, stacklevel=3)


def ensemble_text_embeddings(template_embeddings):
    """Prompt ensembling: (C, T, D) normalized embeddings of C classes in T templates
    -> (C, D): the mean over templates, normalized again."""
    return normalize(np.mean(np.asarray(template_embeddings, np.float32), axis=1))


class SigLIP2ZeroShotClassifier:
    """Zero-shot classifier over any set of class names (any language).

    Args:
        backbone: a `SigLIP2Backbone` (fixed-resolution or NaFlex).
        preprocessor: its `SigLIP2Preprocessor`.
        class_names: list of distinct class names, e.g. `["cat", "dog"]` or
            `["chat", "chien"]`.
        templates: list of prompt templates with one "{}" each, or None for
            `DEFAULT_TEMPLATES` (English). `templates_for_language("fr")` gives the
            built-in set of another language.
        batch_size: images / texts per forward pass.
        verbose: show a progress bar while embedding images.

    `predict(images)` -> (N, C) independent sigmoid probabilities;
    `predict_logits(images)` -> exp(t) * cos + b; `top_k(images, k)` -> for each
    image a list of `(class_name, probability)`, most likely first;
    `evaluate(images, labels)` -> top-1 accuracy. `images`: file or folder paths,
    PIL images, arrays (H, W, C) in [0, 255], a (B, H, W, C) batch, or a list of these.

    Example:
    ```python
    clf = keras_siglip2.SigLIP2ZeroShotClassifier(backbone, preprocessor, ["cat", "dog"])
    clf.top_k(["cat.jpg"], k=2)   # [[("cat", 0.93), ("dog", 0.0004)]]
    ```
    """

    def __init__(self, backbone, preprocessor, class_names, templates=None, batch_size=32,
                 verbose=False):
        self.class_names = check_class_names(class_names)
        self.templates = check_templates(DEFAULT_TEMPLATES if templates is None else templates)
        self.embedder = SigLIP2Embedder(backbone, preprocessor, batch_size=batch_size)
        self.verbose = bool(verbose)
        prompts = [t.replace("{}", c) for c in self.class_names for t in self.templates]
        token_ids = self.embedder.tokenize(prompts)
        warn_alike_prompts(self.class_names, token_ids.reshape(
            len(self.class_names), len(self.templates), -1))
        per_prompt = self.embedder.embed_token_ids(token_ids)
        per_prompt = per_prompt.reshape(len(self.class_names), len(self.templates), -1)
        self.class_embeddings = ensemble_text_embeddings(per_prompt)

    @property
    def backbone(self):
        return self.embedder.backbone

    @property
    def preprocessor(self):
        return self.embedder.preprocessor

    def embed_images(self, images):
        """Normalized image embeddings (N, D). Unreadable files raise ValueError (use
        `media.images.load_images` first to skip them)."""
        return self.embedder.embed_images(
            images, verbose=self.verbose, skip_unreadable=False
        ).embeddings

    def logits_from_embeddings(self, image_embeddings):
        """exp(t) * cos(image, class) + b for normalized image embeddings: (N, C)."""
        return self.embedder.logits(image_embeddings, self.class_embeddings)

    def predict_logits(self, images):
        """(N, C) logits exp(t) * cos + b."""
        return self.logits_from_embeddings(self.embed_images(images))

    def predict(self, images):
        """(N, C) per-class sigmoid probabilities (independent, not a softmax)."""
        return sigmoid(self.predict_logits(images))

    def top_k(self, images, k=5):
        """For each image, the `k` most likely `(class_name, probability)`, most
        likely first (k is capped at the number of classes)."""
        check_positive_int("k", k)
        probs = self.predict(images)
        return top_k_labels(probs, self.class_names, k)

    def evaluate(self, images, labels):
        """Top-1 accuracy on labelled images: `labels` are class names or class
        indices, one per image. Returns `{"accuracy", "num_images", "predictions"}`."""
        logits = self.predict_logits(images)
        labels = list(labels)
        if len(labels) != logits.shape[0]:
            raise ValueError(
                f"Got {logits.shape[0]} images but {len(labels)} labels; give one label "
                "per image."
            )
        index = {c: i for i, c in enumerate(self.class_names)}
        targets = []
        for i, label in enumerate(labels):
            if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
                if not 0 <= label < len(self.class_names):
                    raise ValueError(
                        f"`labels[{i}]` = {label} is not a class index in "
                        f"[0, {len(self.class_names)})."
                    )
                targets.append(int(label))
            elif isinstance(label, str) and label.strip() in index:
                targets.append(index[label.strip()])
            else:
                raise ValueError(
                    f"`labels[{i}]` = {label!r} is not one of the class names "
                    f"{self.class_names}."
                )
        predictions = np.argmax(logits, axis=1)
        return {
            "accuracy": float(np.mean(predictions == np.asarray(targets))),
            "num_images": int(len(targets)),
            "predictions": [self.class_names[p] for p in predictions],
        }


def top_k_labels(probabilities, class_names, k):
    """(N, C) scores -> for each row the k highest `(class_name, score)` pairs."""
    probabilities = np.asarray(probabilities)
    k = min(int(k), probabilities.shape[1])
    # Stable sort of the negated scores: ties keep the class order.
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [(class_names[j], float(probabilities[i, j])) for j in row]
        for i, row in enumerate(order)
    ]


__all__ = [
    "DEFAULT_TEMPLATES",
    "SigLIP2ZeroShotClassifier",
    "TEMPLATES",
    "check_class_names",
    "check_templates",
    "ensemble_text_embeddings",
    "templates_for_language",
    "top_k_labels",
]
