"""A procedurally generated image-text dataset for demos and tests of the SigLIP 2 recipe
(paper sec. 2): every loss of the recipe gets real targets, on a CPU, in minutes.

Each image shows one or two coloured shapes (circle / square / triangle / cross in red /
green / blue / yellow / purple / white) on a dark, noisy background, at random known
positions and sizes. Each example has
- a caption naming its shapes ("a photo of a red circle and a blue square") in English
  (90 %) or French / German / Spanish (10 %, evenly), with correct grammatical gender
  and agreement in each language (the paper's 90 / 10 English / multilingual mixture);
- one box per shape, (ymin, xmin, ymax, xmax) normalized to [0, 1], and its region
  caption ("a red circle") in the same language: LocCa's captioning, ARef (region
  caption -> box) and GCap (box -> region caption) all have targets;
- `num_local_views` random local crops (for SILC), each 40-75 % of the image side,
  resized to the image size.
Everything is deterministic from `seed`: the same seed gives the same images, captions,
crops and task choices.

`synthetic_dataset` turns the examples into a `tf.data.Dataset` of pretrainer batches
(tokenized, with local crops and LocCa targets). `heldout_split` renders evaluation data
from another seed: single-shape images labelled with one of the 24 (colour, shape)
classes, for which `class_names()` and `prompts(language)` give zero-shot prompts in
every language, and image / caption pairs for retrieval.

`train_tokenizer` trains a tiny Gemma-style SentencePiece model (ids <pad>=0, <eos>=1,
<bos>=2, <unk>=3) on every phrase the generator can produce, for a `SigLIP2Tokenizer`.
"""

import io

import numpy as np

from keras_siglip2.checks import check_positive_int

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
LANGUAGES = ("en", "fr", "de", "es")
ENGLISH_FRACTION = 0.9

_RGB = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 220, 40),
    "purple": (150, 60, 205),
    "white": (240, 240, 240),
}

# Per language: noun and gender of each shape, colour adjective per gender, articles,
# the conjunction and the caption templates ("{}" = the object phrase(s)).
_LEXICON = {
    "en": {
        "nouns": {s: (s, "-") for s in SHAPES},
        "colours": {c: {"-": c} for c in COLOURS},
        "articles": {"-": "a"},
        "adjective_first": True,
        "and": "and",
        "templates": ("a photo of {}", "{}", "an image of {}", "{} on a dark background"),
        "prompt": "a photo of {}",
    },
    "fr": {
        "nouns": {"circle": ("cercle", "m"), "square": ("carré", "m"),
                  "triangle": ("triangle", "m"), "cross": ("croix", "f")},
        "colours": {
            "red": {"m": "rouge", "f": "rouge"}, "green": {"m": "vert", "f": "verte"},
            "blue": {"m": "bleu", "f": "bleue"}, "yellow": {"m": "jaune", "f": "jaune"},
            "purple": {"m": "violet", "f": "violette"},
            "white": {"m": "blanc", "f": "blanche"},
        },
        "articles": {"m": "un", "f": "une"},
        "adjective_first": False,
        "and": "et",
        "templates": ("une photo de {}", "{}", "une image de {}", "{} sur un fond sombre"),
        "prompt": "une photo de {}",
    },
    "de": {
        "nouns": {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"),
                  "triangle": ("Dreieck", "n"), "cross": ("Kreuz", "n")},
        "colours": {
            c: {"m": stem + "er", "n": stem + "es"}
            for c, stem in (("red", "rot"), ("green", "grün"), ("blue", "blau"),
                            ("yellow", "gelb"), ("purple", "violett"), ("white", "weiß"))
        },
        "articles": {"m": "ein", "n": "ein"},
        "adjective_first": True,
        "and": "und",
        "templates": ("Foto: {}", "{}", "hier ist {}", "{} auf dunklem Hintergrund"),
        "prompt": "Foto: {}",
    },
    "es": {
        "nouns": {"circle": ("círculo", "m"), "square": ("cuadrado", "m"),
                  "triangle": ("triángulo", "m"), "cross": ("cruz", "f")},
        "colours": {
            "red": {"m": "rojo", "f": "roja"}, "green": {"m": "verde", "f": "verde"},
            "blue": {"m": "azul", "f": "azul"},
            "yellow": {"m": "amarillo", "f": "amarilla"},
            "purple": {"m": "morado", "f": "morada"},
            "white": {"m": "blanco", "f": "blanca"},
        },
        "articles": {"m": "un", "f": "una"},
        "adjective_first": False,
        "and": "y",
        "templates": ("una foto de {}", "{}", "una imagen de {}", "{} sobre un fondo oscuro"),
        "prompt": "una foto de {}",
    },
}


def _check_language(language):
    if language not in _LEXICON:
        raise ValueError(f"`language` must be one of {LANGUAGES}; got {language!r}.")


def object_phrase(colour, shape, language="en"):
    """"a red circle" / "un cercle rouge" / "ein roter Kreis" / "un círculo rojo"."""
    _check_language(language)
    lex = _LEXICON[language]
    if colour not in _RGB or shape not in SHAPES:
        raise ValueError(
            f"Unknown object ({colour!r}, {shape!r}); colours {COLOURS}, shapes {SHAPES}."
        )
    noun, gender = lex["nouns"][shape]
    adjective = lex["colours"][colour][gender]
    words = (adjective, noun) if lex["adjective_first"] else (noun, adjective)
    return " ".join((lex["articles"][gender],) + words)


def _fill(template, phrase, language):
    text = template.format(phrase)
    if language == "fr":  # elision: "de un" -> "d'un"
        text = text.replace("de un ", "d'un ").replace("de une ", "d'une ")
    return text


def caption(objects, language="en", template=0):
    """Caption of a list of (colour, shape) objects in `language`."""
    lex = _LEXICON[language]
    phrases = [object_phrase(c, s, language) for c, s in objects]
    joined = f" {lex['and']} ".join(phrases)
    return _fill(lex["templates"][template % len(lex["templates"])], joined, language)


def class_names():
    """The 24 zero-shot classes, "<colour> <shape>" (class i = colour i // 4, shape i % 4)."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def prompts(language="en"):
    """One zero-shot prompt per class in `language` ("a photo of a red circle")."""
    _check_language(language)
    template = _LEXICON[language]["prompt"]
    return [
        _fill(template, object_phrase(c, s, language), language)
        for c in COLOURS
        for s in SHAPES
    ]


def all_phrases():
    """Every caption / region caption / prompt the generator can produce (for the
    tokenizer): all templates x all single objects and pairs, in every language."""
    texts = []
    objects = [(c, s) for c in COLOURS for s in SHAPES]
    for language in LANGUAGES:
        n_templates = len(_LEXICON[language]["templates"])
        for i, a in enumerate(objects):
            texts.append(object_phrase(*a, language))
            for t in range(n_templates):
                texts.append(caption([a], language, t))
            for j, b in enumerate(objects):
                if (i * 7 + j) % 5 == 0:  # a sample of the pairs covers every word
                    texts.append(caption([a, b], language, (i + j) % n_templates))
        texts.extend(prompts(language))
    return texts


def train_tokenizer(texts=None, vocab_size=320, model_type="bpe"):
    """A tiny SentencePiece model (serialized bytes) with Gemma's special ids
    (<pad>=0, <eos>=1, <bos>=2, <unk>=3), trained on `texts` (default: every phrase of
    the synthetic dataset, lowercased as `SigLIP2Tokenizer` lowercases). Pass it as
    `SigLIP2Tokenizer(proto=...)`."""
    import sentencepiece as spm  # lazy: optional dependency, only to train a tokenizer

    texts = [t.lower() for t in (all_phrases() if texts is None else texts)]
    if not texts:
        raise ValueError("`texts` is empty: the tokenizer needs training sentences.")
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=writer,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        character_coverage=1.0,
        byte_fallback=False,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    return writer.getvalue()


# --------------------------------------------------------------------------- rendering


def _shape_mask(shape, yy, xx, cy, cx, r):
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "square":
        side = 0.85 * r  # about the circle's area
        return (np.abs(dy) <= side) & (np.abs(dx) <= side)
    if shape == "triangle":  # apex up, base at the bottom of the box
        rel = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
        return (rel >= 0) & (rel <= 1) & (np.abs(dx) <= rel * r)
    if shape == "cross":
        arm = 0.38 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | (
            (np.abs(dy) <= arm) & (np.abs(dx) <= r)
        )
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def render(objects, image_size, rng):
    """One uint8 (S, S, 3) image of `objects` [(colour, shape, (cy, cx, r)), ...] in
    pixels, on a dark noisy background."""
    s = image_size
    background = rng.uniform(0, 70, size=3)
    image = background + rng.normal(0, 6, size=(s, s, 3))
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    for colour, shape, (cy, cx, r) in objects:
        rgb = np.asarray(_RGB[colour], np.float64) + rng.uniform(-15, 15, size=3)
        # 2x2 supersampling for smooth edges.
        cover = np.zeros((s, s))
        for oy in (-0.25, 0.25):
            for ox in (-0.25, 0.25):
                cover += _shape_mask(shape, yy + oy, xx + ox, cy, cx, r)
        cover = (cover / 4.0)[..., None]
        image = image * (1 - cover) + rgb * cover
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _place(num_objects, image_size, rng, max_tries=100):
    """Non-overlapping (cy, cx, r) in pixels."""
    s = image_size
    for _ in range(max_tries):
        placed = []
        for _ in range(num_objects):
            lo, hi = (0.16, 0.26) if num_objects > 1 else (0.2, 0.36)
            r = rng.uniform(lo, hi) * s
            cy, cx = rng.uniform(r, s - r, size=2)
            if all(abs(cy - py) > r + pr or abs(cx - px) > r + pr for py, px, pr in placed):
                placed.append((cy, cx, r))
        if len(placed) == num_objects:
            return placed
    raise RuntimeError("Could not place the shapes without overlap.")


def generate_examples(num_examples, image_size=48, seed=0, max_objects=2,
                      english_fraction=ENGLISH_FRACTION, template=None):
    """NumPy arrays of `num_examples` synthetic examples.

    Returns a dict:
        images: uint8 (N, S, S, 3);
        captions: str (N,); languages: str (N,);
        boxes: float32 (N, max_objects, 4) (ymin, xmin, ymax, xmax) in [0, 1],
            zero rows beyond `num_objects`;
        region_captions: str (N, max_objects) ("" beyond `num_objects`);
        num_objects: int32 (N,);
        labels: int32 (N,) class of the first object (`class_names()` index).

    `template`: None draws a caption template per example; an int fixes it.
    """
    check_positive_int("num_examples", num_examples)
    if image_size < 16:
        raise ValueError(f"`image_size` must be at least 16 pixels; got {image_size!r}.")
    if max_objects not in (1, 2):
        raise ValueError(f"`max_objects` must be 1 or 2; got {max_objects!r}.")
    if not 0 <= english_fraction <= 1:
        raise ValueError(f"`english_fraction` must lie in [0, 1]; got {english_fraction!r}.")
    rng = np.random.default_rng(seed)
    n, s = num_examples, image_size
    images = np.zeros((n, s, s, 3), np.uint8)
    boxes = np.zeros((n, max_objects, 4), np.float32)
    captions, languages = [], []
    region_captions = np.full((n, max_objects), "", dtype=object)
    counts = np.zeros((n,), np.int32)
    labels = np.zeros((n,), np.int32)
    others = [lang for lang in LANGUAGES if lang != "en"]
    for i in range(n):
        k = int(rng.integers(1, max_objects + 1))
        kinds = []
        while len(kinds) < k:
            kind = (COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))])
            if kind not in kinds:
                kinds.append(kind)
        places = _place(k, s, rng)
        images[i] = render([(c, sh, p) for (c, sh), p in zip(kinds, places)], s, rng)
        language = "en" if rng.uniform() < english_fraction else others[rng.integers(len(others))]
        template_index = int(rng.integers(len(_LEXICON[language]["templates"])))
        if template is not None:
            template_index = int(template)
        captions.append(caption(kinds, language, template_index))
        languages.append(language)
        for j, ((c, sh), (cy, cx, r)) in enumerate(zip(kinds, places)):
            boxes[i, j] = np.clip([(cy - r) / s, (cx - r) / s, (cy + r) / s, (cx + r) / s], 0, 1)
            region_captions[i, j] = object_phrase(c, sh, language)
        counts[i] = k
        labels[i] = COLOURS.index(kinds[0][0]) * len(SHAPES) + SHAPES.index(kinds[0][1])
    return {
        "images": images,
        "captions": np.array(captions, dtype=object),
        "languages": np.array(languages, dtype=object),
        "boxes": boxes,
        "region_captions": region_captions,
        "num_objects": counts,
        "labels": labels,
    }


def to_model_range(images):
    """uint8 [0, 255] -> float32 [-1, 1] (as `SigLIP2ImageConverter`)."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


# --------------------------------------------------------------------------- datasets


def synthetic_dataset(
    tokenizer,
    batch_size,
    num_examples=4096,
    image_size=48,
    seed=0,
    num_local_views=2,
    local_crop_scale=(0.2, 0.6),
    locca=True,
    num_bins=32,
    english_fraction=ENGLISH_FRACTION,
    repeat=True,
    shuffle=True,
    examples=None,
    locca_tasks="all",
):
    """A `tf.data.Dataset` of pretrainer batches of synthetic examples.

    Args:
        tokenizer: a `SigLIP2Tokenizer` (e.g. over `train_tokenizer()`).
        batch_size: int, examples per batch (the last partial batch is dropped).
        num_examples: int, size of the pool of distinct images (rendered once).
        image_size: int, the side of the images (and of the local crops); the
            pretrainer resizes them to its resolution when it differs.
        seed: int; the images, captions, order, crops and LocCa tasks follow from it.
        num_local_views: int, SILC local crops per image ("local_images"); 0 for none.
        local_crop_scale: area fraction range of the local crops.
        locca: bool, add the LocCa fields ("decoder_token_ids", "decoder_targets",
            "decoder_weights", "decoder_prefix_mask"), with `locca_tasks="all"`
            the three tasks captioning / ARef / GCap of every example on one random
            shape's box, (B, 3, L) (`locca_fields.locca_batch_fields`); "sampled":
            one task per example drawn uniformly, (B, L) (the demo before issue 17).
        num_bins: int, LocCa location bins (the decoder vocabulary is the tokenizer's
            plus `num_bins`, as `locca_decoder_for(..., num_location_bins=num_bins)`).
        repeat, shuffle: repeat forever / reshuffle every pass (seeded).
        examples: optional output of `generate_examples` to use instead of rendering.

    Each batch: "images" (B, S, S, 3) float32 in [-1, 1], "token_ids" (B, L) int32,
    "local_images" (B, V, S, S, 3), the LocCa fields, and "labels" (B,) (class of the
    first shape, for inspection).
    """
    # lazy: TensorFlow (and the modules built on it) only for the tf.data dataset;
    # rendering the examples needs numpy alone.
    import tensorflow as tf  # lazy: see above

    check_positive_int("batch_size", batch_size)
    if num_local_views < 0:
        raise ValueError(f"`num_local_views` must be >= 0; got {num_local_views!r}.")
    if examples is None:
        examples = generate_examples(
            num_examples, image_size, seed=seed, english_fraction=english_fraction
        )
    if examples["images"].shape[0] < batch_size:
        raise ValueError(
            f"`num_examples`={examples['images'].shape[0]} is smaller than "
            f"`batch_size`={batch_size}."
        )
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "images": examples["images"],
            "texts": examples["captions"].astype(str),
            "boxes": examples["boxes"],
            "box_texts": examples["region_captions"].astype(str),
            "num_boxes": examples["num_objects"],
            "labels": examples["labels"],
        }
    )
    if shuffle:
        ds = ds.shuffle(len(examples["labels"]), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    base_seed = tf.constant([seed, 12345], tf.int64)
    per_example = _per_example_fn(base_seed, num_local_views, examples["images"].shape[1],
                                  local_crop_scale)
    ds = ds.enumerate().map(per_example, num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    per_batch = _per_batch_fn(base_seed, tokenizer, locca, num_bins, locca_tasks)
    ds = ds.enumerate().map(per_batch, num_parallel_calls=1, deterministic=True)
    return ds.prefetch(2)


def _per_example_fn(base_seed, num_local_views, size, local_crop_scale):
    """Model-range image and SILC local crops of one synthetic example."""
    import tensorflow as tf  # lazy: see `synthetic_dataset`

    from keras_siglip2.training.data.augment import fold_seed, local_crops  # lazy: TF

    def per_example(index, example):
        out = dict(example)
        image = example["images"]
        if num_local_views:
            crops = local_crops(
                image, fold_seed(base_seed, index), num_local_views, (size, size),
                scale=local_crop_scale,
            )
            out["local_images"] = crops / 127.5 - 1.0
        out["images"] = tf.cast(image, tf.float32) / 127.5 - 1.0
        return out

    return per_example


def _per_batch_fn(base_seed, tokenizer, locca, num_bins, locca_tasks):
    """Token ids and LocCa fields of one synthetic batch."""
    import tensorflow as tf  # lazy: see `synthetic_dataset`

    from keras_siglip2.training.data.augment import fold_seed  # lazy: TF
    from keras_siglip2.training.data.locca_fields import locca_batch_fields  # lazy: TF

    def per_batch(index, batch):
        out = {k: v for k, v in batch.items() if k not in ("texts", "boxes", "box_texts",
                                                             "num_boxes")}
        out["token_ids"] = tf.cast(tokenizer(batch["texts"]), tf.int32)
        if locca:
            fields = locca_batch_fields(
                {**batch, "token_ids": out["token_ids"]}, tokenizer,
                fold_seed(base_seed, -1 - index), num_bins=num_bins, tasks=locca_tasks,
            )
            fields.pop("locca_task", None)
            fields.pop("locca_regions", None)
            out.update(fields)
        return out

    return per_batch


def heldout_split(num_examples=240, image_size=48, seed=10_000):
    """Held-out evaluation data, rendered from another seed than any training data.

    Returns a dict with
        "classification": one shape per image, `generate_examples` fields plus
            "class_names" (the label of each image is its shape's class);
        "retrieval": image / English caption pairs with one or two shapes, one example
            per distinct set of shapes and one caption template ("a photo of ..."),
            so that caption i describes image i and no other image (recall@1 has one
            right answer; chance 1 / N).
    """
    classification = generate_examples(
        num_examples, image_size, seed=seed, max_objects=1, english_fraction=1.0
    )
    classification["class_names"] = class_names()
    pool = generate_examples(
        4 * num_examples, image_size, seed=seed + 1, max_objects=2, english_fraction=1.0,
        template=0,
    )
    seen, keep = set(), []
    for i in range(len(pool["captions"])):
        content = frozenset(pool["region_captions"][i][: pool["num_objects"][i]])
        if content not in seen:
            seen.add(content)
            keep.append(i)
        if len(keep) == num_examples:
            break
    retrieval = {k: v[np.asarray(keep)] for k, v in pool.items()}
    return {"classification": classification, "retrieval": retrieval}
