"""`siglip2 embed`, `classify`, `retrieve`: the task helpers of `keras_siglip2.tasks`
(zero-shot classification, retrieval; paper sec. 3) on a preset, with image files
read by `keras_siglip2.media.images` and plots drawn by `keras_siglip2.media.plots`."""

import json
import os
import sys

import numpy as np

from keras_siglip2.cli.common import TaskOutput, positive_int
from keras_siglip2.media.images import expand_image_paths, load_images
from keras_siglip2.media.plots import plot_classification, plot_retrieval_grid
from keras_siglip2.models import SigLIP2Backbone
from keras_siglip2.preprocessing import SigLIP2Preprocessor
from keras_siglip2.presets import resolve_preset
from keras_siglip2.tasks.embedding import sigmoid
from keras_siglip2.tasks.retrieval import SigLIP2Retriever
from keras_siglip2.tasks.zero_shot import (
    SigLIP2ZeroShotClassifier,
    check_class_names,
    check_templates,
    templates_for_language,
    top_k_labels,
)


# `embed`, `classify`, `retrieve`: the task helpers of keras_siglip2.tasks on a preset.

DEFAULT_TASK_PRESET = "siglip2_base_patch16_224"
MAX_PLOTTED_IMAGES = 16


def load_task_model(preset, match=None):
    """(backbone, preprocessor) of a preset name or a local preset directory; `match`:
    the image converter mode to use instead of the preset's (None: the preset's)."""

    path = resolve_preset(preset)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise FileNotFoundError(
            f"--preset {preset}: the preset has no tokenizer (no tokenizer.json), so it "
            "cannot embed text. Converted big_vision checkpoints carry none: convert again "
            "with `siglip2 convert ... --tokenizer gemma_tokenizer.model`."
        )
    backbone = SigLIP2Backbone.from_preset(path)
    try:
        preprocessor = SigLIP2Preprocessor.from_preset(path, match=match)
    except FileNotFoundError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(
            f"--preset {preset}: the preset has no complete preprocessor (tokenizer + "
            f"image converter): {first}"
        ) from None
    return backbone, preprocessor


def build_retriever(preset, batch_size, index=None, paths=(), texts=(), match=None):
    """The preset's `SigLIP2Retriever` with a saved `index` loaded (if given), then the
    image files `paths` and the `texts` embedded and added (`embed` and `retrieve`)."""

    backbone, preprocessor = load_task_model(preset, match)
    retriever = SigLIP2Retriever(backbone, preprocessor, batch_size=batch_size)
    if index:
        retriever.load(index)
    if paths:
        retriever.add_images(paths)
    if texts:
        retriever.add_texts(texts)
    return retriever


def parse_labels(text):
    """`--labels a,b,c` -> ["a", "b", "c"]; empty, blank or duplicate labels are errors."""

    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise ValueError(
            f"--labels {text!r} names no label; give comma-separated class names, e.g. "
            "--labels cat,dog,bird."
        )
    for i, part in enumerate(parts):
        if not part:
            raise ValueError(f"--labels {text!r}: label {i + 1} is empty.")
    return check_class_names(parts, name="--labels")


def _check_plot_path(path):
    if path is not None and not path.lower().endswith(".png"):
        raise ValueError(f"--plot {path!r}: the plot is a PNG; give a path ending in .png.")


def _read_texts(args):
    texts = list(args.texts or [])
    if getattr(args, "texts_file", None):
        if not os.path.isfile(args.texts_file):
            raise FileNotFoundError(f"--texts-file {args.texts_file!r} does not exist.")
        with open(args.texts_file, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f]
        texts += [line for line in lines if line.strip()]
        if not any(line.strip() for line in lines):
            raise ValueError(f"--texts-file {args.texts_file!r} holds no text (one per line).")
    return texts


def _skipped_json(skipped):
    return [{"image": name, "reason": reason} for name, reason in skipped]


def cmd_classify(args):
    labels = parse_labels(args.labels)
    if args.templates and args.lang:
        raise ValueError("Give either --templates or --lang, not both.")
    if args.templates:
        templates = check_templates(args.templates)
    else:
        templates = templates_for_language(args.lang or "en")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1; got {args.top_k}.")
    _check_plot_path(args.plot)
    paths = expand_image_paths(args.images)  # missing files / empty folders: before loading
    with TaskOutput():
        backbone, preprocessor = load_task_model(args.preset, args.match)
        arrays, kept, skipped = load_images(paths, skip_unreadable=True)
        classifier = SigLIP2ZeroShotClassifier(
            backbone, preprocessor, labels, templates, batch_size=args.batch_size,
            verbose=len(arrays) > args.batch_size,
        )
        probabilities = classifier.predict(arrays)

    tops = top_k_labels(probabilities, labels, args.top_k)
    results = [
        {
            "image": paths[i],
            "top_k": [{"label": label, "probability": p} for label, p in top],
            "probabilities": {label: float(p) for label, p in zip(labels, row)},
        }
        for i, top, row in zip(kept, tops, probabilities)
    ]
    plot = None
    if args.plot:
        n = min(len(results), MAX_PLOTTED_IMAGES)
        if n < len(results):
            print(f"siglip2: note: --plot shows the first {n} of {len(results)} images.",
                  file=sys.stderr)
        plot = os.path.abspath(plot_classification(
            arrays[:n], tops[:n], args.plot, title=[paths[i] for i in kept[:n]]
        ))
    if args.json:
        print(json.dumps({
            "preset": args.preset,
            "labels": labels,
            "templates": templates,
            "results": results,
            "skipped": _skipped_json(skipped),
            "plot": plot,
        }, ensure_ascii=False))
        return 0
    width = max(len(label) for label in labels)
    for result in results:
        print(result["image"])
        for entry in result["top_k"]:
            print(f"  {entry['label']:<{width}}  {entry['probability']:.4f}")
    if plot:
        print(f"Wrote {plot}")
    return 0


def cmd_embed(args):
    texts = _read_texts(args)
    if not args.images and not texts:
        raise ValueError("Nothing to embed: give --images, --texts or --texts-file.")
    out = args.out
    if not out.endswith((".npy", ".npz")):
        raise ValueError(f"--out {out!r} must end with .npy (one array) or .npz (an index).")
    if out.endswith(".npy") and args.images and texts:
        raise ValueError(
            "--out .npy holds one array: embed images or texts, or write both to a .npz."
        )
    paths = expand_image_paths(args.images) if args.images else []
    with TaskOutput():
        retriever = build_retriever(args.preset, args.batch_size, paths=paths, texts=texts,
                                    match=args.match)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    if out.endswith(".npz"):
        retriever.save(out)
    else:
        np.save(out, retriever.image_embeddings if paths else retriever.text_embeddings)
    summary = {
        "out": os.path.abspath(out),
        "images": len(retriever.image_ids),
        "texts": len(retriever.text_ids),
        "dim": retriever.embedding_dim,
        "image_ids": retriever.image_ids,
        "skipped": _skipped_json(retriever.skipped),
        "normalized": True,
    }
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(
            f"Wrote {summary['out']}: {summary['images']} image and {summary['texts']} text "
            f"embeddings of dimension {summary['dim']} (L2-normalized)."
        )
    return 0


def _check_retrieve_args(args, texts, queries, image_queries):
    if not args.images and not args.index and not texts:
        raise ValueError("Nothing to search: give --images (a folder or files), --texts or --index.")
    if not queries and not image_queries:
        raise ValueError("Give at least one --query TEXT (or --query-image PATH).")
    if args.k < 1:
        raise ValueError(f"--k must be >= 1; got {args.k}.")
    _check_plot_path(args.plot)
    if args.plot and not queries:
        raise ValueError("--plot draws the images found for text queries; give --query.")
    if args.save_index and not args.save_index.endswith(".npz"):
        raise ValueError(f"--save-index {args.save_index!r} must end with .npz.")


def _search(retriever, queries, query_paths, k):
    """[(kind, query, target, [(id, score)])] for the text and the image queries."""
    answers = []
    for query in queries:
        found = retriever.search_text(query, k=k, target="images")
        answers.append(("text", query, "images", found))
    for query in query_paths:
        target = "texts" if retriever.text_ids else "images"
        found = retriever.search_image(query, k=k, target=target)
        answers.append(("image", query, target, found))
    return answers


def _answers_json(answers, scale, bias):
    return [
        {
            "query": query,
            "kind": kind,
            "target": target,
            "results": [
                {"id": i, "score": s, "probability": float(sigmoid(scale * np.float64(s) + bias))}
                for i, s in found
            ],
        }
        for kind, query, target, found in answers
    ]


def _plot_retrieval(answers, path):
    """The grid of the images found for the text queries, written to `path`."""
    text_answers = [a for a in answers if a[0] == "text"]
    for _, _, _, found in text_answers:
        for image_id, _ in found:
            if not (isinstance(image_id, str) and os.path.isfile(image_id)):
                raise ValueError(
                    f"--plot: result {image_id!r} is not an image file (an index built "
                    "from arrays); cannot draw it."
                )
    return os.path.abspath(plot_retrieval_grid(
        [q for _, q, _, _ in text_answers],
        [[i for i, _ in found] for *_, found in text_answers],
        [[s for _, s in found] for *_, found in text_answers],
        path,
    ))


def cmd_retrieve(args):
    texts = _read_texts(args)
    queries = list(args.query or [])
    image_queries = list(args.query_image or [])
    _check_retrieve_args(args, texts, queries, image_queries)
    paths = expand_image_paths(args.images) if args.images else []
    query_paths = expand_image_paths(image_queries) if image_queries else []
    with TaskOutput():
        retriever = build_retriever(args.preset, args.batch_size, match=args.match,
                                    index=args.index,
                                    paths=paths, texts=texts)
        scale, bias = retriever.embedder.logit_scale, retriever.embedder.logit_bias
        answers = _search(retriever, queries, query_paths, args.k)
    if args.save_index:
        retriever.save(args.save_index)
    out_queries = _answers_json(answers, scale, bias)
    plot = _plot_retrieval(answers, args.plot) if args.plot else None
    summary = {
        "preset": args.preset,
        "indexed_images": len(retriever.image_ids),
        "indexed_texts": len(retriever.text_ids),
        "skipped": _skipped_json(retriever.skipped),
        "index": os.path.abspath(args.save_index) if args.save_index else None,
        "queries": out_queries,
        "plot": plot,
    }
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    for entry in out_queries:
        print(f"{entry['kind']} query: {entry['query']}  ->  {entry['target']}")
        for rank, result in enumerate(entry["results"], start=1):
            print(f"  {rank:>2}. {result['score']:+.4f}  {result['id']}")
    if summary["index"]:
        print(f"Saved index {summary['index']}")
    if plot:
        print(f"Wrote {plot}")
    return 0


def _add_model_arguments(p):
    p.add_argument("--preset", default=DEFAULT_TASK_PRESET,
                   help=f"preset name or local preset directory (default {DEFAULT_TASK_PRESET})")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="images / texts per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--match", choices=["big_vision", "transformers"], default=None,
                   help="preprocess images as big_vision or as Hugging Face transformers "
                   "(PIL) does (default: the mode the preset records)")


def _add_corpus_arguments(p, verb):
    """--images / --texts / --texts-file of `embed` and `retrieve`."""
    p.add_argument("--images", nargs="+", metavar="PATH", help=f"image files or folders to {verb}")
    p.add_argument("--texts", nargs="+", metavar="TEXT", help=f"texts to {verb}")
    p.add_argument("--texts-file", metavar="FILE",
                   help=f"a UTF-8 file of texts to {verb}, one per line")


def add_tasks_parsers(sub):
    p = sub.add_parser(
        "embed",
        help="embed images and/or texts to .npy / .npz",
        description="Embed images (files or folders) and/or texts with a SigLIP 2 preset. "
        ".npy: one (N, D) array of L2-normalized embeddings; .npz: a retrieval index "
        "(embeddings + ids) that `siglip2 retrieve --index` and SigLIP2Retriever.load read.",
    )
    _add_corpus_arguments(p, "embed")
    p.add_argument("--out", required=True, help="output .npy or .npz file")
    _add_model_arguments(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser(
        "classify",
        help="zero-shot classify images against labels",
        description="Zero-shot classification: each label gets an independent sigmoid "
        "probability (SigLIP scores every image-label pair on its own; the probabilities "
        "do not sum to 1). Put the images first: IMAGE... --labels a,b,c.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--labels", required=True, help="comma-separated class names, any language")
    p.add_argument("--lang", help="built-in prompt templates of a language (en, de, fr, es, "
                   "it, pt, nl, ru, zh, ja, ko, hi; default en)")
    p.add_argument("--templates", nargs="+", metavar="TEMPLATE",
                   help="your own prompt templates, each with one {} for the label")
    p.add_argument("--top-k", type=int, default=5, help="labels shown per image (default 5)")
    p.add_argument("--plot", metavar="OUT.png", help="write the images with their top labels")
    _add_model_arguments(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser(
        "retrieve",
        help="index images (and texts) and search them",
        description="Build (or load) an index and search it: --query TEXT finds images, "
        "--query-image PATH finds the indexed texts (or similar images if no text is "
        "indexed). Scores are cosine similarities; the JSON adds the model's match "
        "probability sigmoid(exp(t) cos + b).",
    )
    _add_corpus_arguments(p, "index")
    p.add_argument("--index", metavar="FILE.npz", help="a saved index (siglip2 embed --out X.npz)")
    p.add_argument("--query", nargs="+", metavar="TEXT", help="text queries")
    p.add_argument("--query-image", nargs="+", metavar="PATH", help="image queries")
    p.add_argument("--k", type=int, default=5, help="results per query (default 5)")
    p.add_argument("--save-index", metavar="OUT.npz", help="save the index for later searches")
    p.add_argument("--plot", metavar="OUT.png", help="write a grid of the images found")
    _add_model_arguments(p)
    p.set_defaults(func=cmd_retrieve)
