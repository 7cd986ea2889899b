"""The `siglip2` command line: `presets`, `embed`, `classify`, `retrieve`, `convert`,
`export`, `demo` and `train` (the library's tasks, converters, export and training
recipe, each with one section below).

Every subcommand has `--help`; an error prints one line `siglip2: error: ...` and exits
with a non-zero status.
"""

import argparse
import json
import os
import sys

from keras_siglip2 import console


def _quiet_backends(argv):
    """Quiet framework logs unless `--verbose` (keras_siglip2/console.py silenced the
    native start-up lines while the package was imported)."""
    if console.VERBOSE_FLAG not in argv:
        console.quiet_environment()
        console.silence_absl()


# --------------------------------------------------------------------------- presets


def cmd_presets(args):
    from keras_siglip2.presets import format_presets_table, list_presets

    if args.json:
        print(json.dumps(list_presets(), indent=2))
    else:
        print(format_presets_table())
    return 0


# --------------------------------------------------------------------------- convert


def image_converter_for(backbone, match="big_vision"):
    """The image converter matching a backbone's vision tower, in mode `match`."""
    from keras_siglip2.presets import image_converter_for_architecture

    vision = backbone.vision_encoder
    if hasattr(vision, "image_size"):
        spec = {"type": "fixed", "image_size": list(vision.image_size)}
    else:
        spec = {"type": "naflex", "patch_size": vision.patch_size,
                "max_num_patches": vision.max_num_patches}
    return image_converter_for_architecture({"vision": spec}, match=match)


def _tokenizer_from_spm(path, sequence_length):
    from keras_siglip2.preprocessing import SigLIP2Tokenizer

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--tokenizer: SentencePiece model {path} does not exist.")
    return SigLIP2Tokenizer(proto=path, sequence_length=sequence_length)


def convert_checkpoint(source_kind, src, out_dir, tokenizer_path=None, image_size=None,
                       overwrite=False):
    """Converts `src` into a complete preset directory at `out_dir`; returns
    (out_dir, backbone, has_tokenizer)."""
    from keras_siglip2 import convert
    from keras_siglip2.presets import match_for_source

    if source_kind == "big_vision":
        backbone = convert.from_big_vision(src, image_size=image_size)
    elif source_kind == "transformers":
        backbone = convert.from_transformers(src)
        bundled = os.path.join(src, "tokenizer.model")
        if tokenizer_path is None and os.path.isfile(bundled):
            tokenizer_path = bundled
    elif source_kind == "keras_hub":
        backbone = convert.from_keras_hub(src)
    else:
        raise ValueError(f"--from {source_kind!r}: expected big_vision, transformers or keras_hub.")
    length = backbone.text_encoder.max_sequence_length
    tokenizer = None
    if tokenizer_path is not None:
        tokenizer = _tokenizer_from_spm(tokenizer_path, length)
    elif source_kind == "keras_hub":
        tokenizer = _keras_hub_tokenizer(src, length)
    convert.save_preset(
        backbone,
        out_dir,
        tokenizer=tokenizer,
        # A checkpoint converted from transformers is preprocessed as HF does it; the
        # others as big_vision does (keras-hub's SigLIP presets follow big_vision too).
        image_converter=image_converter_for(backbone, match=match_for_source(source_kind)),
        overwrite=overwrite,
    )
    return out_dir, backbone, tokenizer is not None


def _keras_hub_tokenizer(src, sequence_length):
    """Our tokenizer over the SentencePiece proto of a keras-hub SigLIP preset."""
    import keras_hub

    from keras_siglip2.preprocessing import SigLIP2Tokenizer

    if not isinstance(src, str):
        return None
    try:
        source = keras_hub.tokenizers.SigLIPTokenizer.from_preset(src)
    except Exception:  # a preset without tokenizer: the user passes --tokenizer
        return None
    return SigLIP2Tokenizer(proto=source.proto, sequence_length=sequence_length)


def cmd_convert(args):
    out_dir, backbone, has_tokenizer = convert_checkpoint(
        args.source, args.src, args.out_dir, args.tokenizer, args.image_size, args.overwrite
    )
    summary = {
        "out_dir": os.path.abspath(out_dir),
        "source": args.source,
        "params": int(backbone.count_params()),
        "vision": type(backbone.vision_encoder).__name__,
        "tokenizer": has_tokenizer,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"Wrote preset {summary['out_dir']} ({summary['params']:,} parameters).")
        if not has_tokenizer:
            print(
                "Note: no tokenizer attached (big_vision .npz files carry none); pass "
                "--tokenizer gemma_tokenizer.model for a complete preset.",
                file=sys.stderr,
            )
    return 0


# --------------------------------------------------------------------------- tasks
# `embed`, `classify`, `retrieve`: the task helpers of keras_siglip2.tasks on a preset.

DEFAULT_TASK_PRESET = "siglip2_base_patch16_224"
MAX_PLOTTED_IMAGES = 16


def _print_warning(message, category, filename, lineno, file=None, line=None):
    print(f"siglip2: warning: {message}", file=sys.stderr)


class _TaskOutput:
    """While the work runs: warnings become `siglip2: warning: ...` lines and
    everything written to stdout (keras' progress bars) goes to stderr, so that stdout
    holds only the result (e.g. the `--json` document)."""

    def __enter__(self):
        import contextlib
        import warnings

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = _print_warning
        self._stdout = contextlib.redirect_stdout(sys.stderr)
        self._stdout.__enter__()
        return self

    def __exit__(self, *exc):
        self._stdout.__exit__(*exc)
        self._warnings.__exit__(*exc)
        return False


def load_task_model(preset, match=None):
    """(backbone, preprocessor) of a preset name or a local preset directory; `match`:
    the image converter mode to use instead of the preset's (None: the preset's)."""
    from keras_siglip2.models import SigLIP2Backbone
    from keras_siglip2.preprocessing import SigLIP2Preprocessor
    from keras_siglip2.presets import resolve_preset

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
    from keras_siglip2.tasks.retrieval import SigLIP2Retriever

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
    from keras_siglip2.tasks.zero_shot import check_class_names

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
    from keras_siglip2.tasks.images import expand_image_paths, load_images
    from keras_siglip2.tasks.zero_shot import (
        SigLIP2ZeroShotClassifier,
        check_templates,
        templates_for_language,
    )

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
    with _TaskOutput():
        backbone, preprocessor = load_task_model(args.preset, args.match)
        arrays, kept, skipped = load_images(paths, skip_unreadable=True)
        classifier = SigLIP2ZeroShotClassifier(
            backbone, preprocessor, labels, templates, batch_size=args.batch_size,
            verbose=len(arrays) > args.batch_size,
        )
        probabilities = classifier.predict(arrays)
    from keras_siglip2.tasks.zero_shot import top_k_labels

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
        from keras_siglip2.tasks.plots import plot_classification

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
    import numpy as np

    from keras_siglip2.tasks.images import expand_image_paths

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
    with _TaskOutput():
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


def cmd_retrieve(args):
    import numpy as np

    from keras_siglip2.tasks.embedding import sigmoid
    from keras_siglip2.tasks.images import expand_image_paths

    texts = _read_texts(args)
    queries = list(args.query or [])
    image_queries = list(args.query_image or [])
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
    paths = expand_image_paths(args.images) if args.images else []
    query_paths = expand_image_paths(image_queries) if image_queries else []
    with _TaskOutput():
        retriever = build_retriever(args.preset, args.batch_size, match=args.match,
                                    index=args.index,
                                    paths=paths, texts=texts)
        scale, bias = retriever.embedder.logit_scale, retriever.embedder.logit_bias
        answers = []
        for query in queries:
            found = retriever.search_text(query, k=args.k, target="images")
            answers.append(("text", query, "images", found))
        for query in query_paths:
            target = "texts" if retriever.text_ids else "images"
            found = retriever.search_image(query, k=args.k, target=target)
            answers.append(("image", query, target, found))
    if args.save_index:
        retriever.save(args.save_index)
    out_queries = [
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
    plot = None
    if args.plot:
        from keras_siglip2.tasks.plots import plot_retrieval_grid

        text_answers = [a for a in answers if a[0] == "text"]
        for _, _, _, found in text_answers:
            for image_id, _ in found:
                if not (isinstance(image_id, str) and os.path.isfile(image_id)):
                    raise ValueError(
                        f"--plot: result {image_id!r} is not an image file (an index built "
                        "from arrays); cannot draw it."
                    )
        plot = os.path.abspath(plot_retrieval_grid(
            [q for _, q, _, _ in text_answers],
            [[i for i, _ in found] for *_, found in text_answers],
            [[s for _, s in found] for *_, found in text_answers],
            args.plot,
        ))
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


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_model_arguments(p):
    p.add_argument("--preset", default=DEFAULT_TASK_PRESET,
                   help=f"preset name or local preset directory (default {DEFAULT_TASK_PRESET})")
    p.add_argument("--batch-size", type=_positive_int, default=32,
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


# --------------------------------------------------------------------------- export


def cmd_export(args):
    from keras_siglip2.export import export

    out_path = export(args.preset, args.out, format=args.format, tower=args.tower)
    if args.json:
        print(json.dumps({"out_path": out_path, "format": args.format, "tower": args.tower}))
    else:
        print(f"Wrote {args.format} export {out_path}.")
    return 0


def add_export_parser(sub):
    p = sub.add_parser(
        "export",
        help="export a preset for serving (TF SavedModel or LiteRT)",
        description="Export a SigLIP 2 preset for serving. saved_model: a TensorFlow "
        "SavedModel with the signatures embed_images, embed_texts (L2-normalized "
        "embeddings) and score (logits and probabilities); litert: a .tflite file of one "
        "tower (the image tower by default). Both load without keras_siglip2.",
    )
    p.add_argument("preset", metavar="PRESET_OR_DIR", help="preset name or local preset directory")
    p.add_argument("out", metavar="OUT", help="SavedModel directory or .tflite file to write "
                   "(must not exist)")
    p.add_argument("--format", choices=["saved_model", "litert"], default="saved_model",
                   help="export format (default saved_model)")
    p.add_argument("--tower", choices=["vision", "text", "both"], default=None,
                   help="which tower(s) to export (default: both for saved_model, vision "
                   "for litert)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_export)


# --------------------------------------------------------------------------- demo


def cmd_demo(args):
    from keras_siglip2.training.demo import run_demo

    summary = run_demo(args.out, steps=args.steps, seed=args.seed, verbose=not args.json)
    if args.json:
        keys = ("zero_shot_accuracy", "chance_accuracy", "recall_at_1", "recall_chance",
                "final_losses", "export_path", "preset_path", "plot_path")
        print(json.dumps({k: summary[k] for k in keys}))
    return 0


def add_demo_parser(sub):
    p = sub.add_parser(
        "demo",
        help="train a tiny SigLIP 2 on synthetic data through the whole recipe",
        description="Train a tiny SigLIP 2 from scratch on the built-in synthetic "
        "coloured-shapes dataset through every stage of the recipe (sigmoid + LocCa, then "
        "+ SILC/TIPS at 80%%, then the resolution switch at 95%%), evaluate zero-shot "
        "classification in four languages and retrieval, save the model as a preset, plot "
        "the losses and write OUT/summary.json. A few minutes on a laptop CPU.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="training steps (default 600)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true",
                   help="no progress output; print the main results as JSON")
    p.set_defaults(func=cmd_demo)


# --------------------------------------------------------------------------- train


def cmd_train(args):
    from keras_siglip2.training.run import train

    if args.json:
        with _TaskOutput():
            summary = train(**_train_kwargs(args), verbose=False)
        keys = ("steps", "start_step", "losses", "final_losses", "final_loss", "preset_path",
                "summary_path", "out_dir")
        print(json.dumps({k: summary[k] for k in keys}))
    else:
        train(**_train_kwargs(args), verbose=True)
    return 0


def _train_kwargs(args):
    return dict(
        preset=args.preset, data=args.data, steps=args.steps, batch_size=args.batch_size,
        out_dir=args.out, mesh=args.mesh, decoder=args.decoder,
        self_distillation=args.self_distillation, masked_prediction=args.masked_prediction,
        learning_rate=args.learning_rate, seed=args.seed,
        checkpoint_every=args.checkpoint_every, data_format=args.format,
        default_language=args.default_language,
    )


def add_train_parser(sub):
    from argparse import BooleanOptionalAction

    p = sub.add_parser(
        "train",
        help="train / fine-tune a preset on image-caption data with the SigLIP 2 recipe",
        description="Train a preset on your image-caption data with the SigLIP 2 recipe: "
        "sigmoid loss, LocCa decoder, and SILC self-distillation + TIPS masked prediction "
        "from 80%% of the steps (each can be switched off). Writes OUT/preset (loadable "
        "with --preset by every subcommand) and OUT/train_summary.json; an interrupted run "
        "resumes from OUT/backup when started again with the same arguments.",
    )
    p.add_argument("--preset", required=True, help="preset name or local preset directory")
    p.add_argument("--data", required=True, nargs="+", metavar="PATH",
                   help="CSV / JSONL of image_path,caption, TFRecord or WebDataset shards "
                   "(files, folders or glob patterns)")
    p.add_argument("--steps", type=_positive_int, default=1000,
                   help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=_positive_int, default=32,
                   help="global batch size (default 32)")
    p.add_argument("--out", default="siglip2_train", metavar="DIR",
                   help="output directory (default ./siglip2_train)")
    p.add_argument("--mesh", default=None,
                   help="device mesh, e.g. batch=4,model=2 (JAX; also starts the "
                   "multi-host runtime on a pod)")
    p.add_argument("--decoder", action=BooleanOptionalAction, default=True,
                   help="LocCa decoder loss (default on)")
    p.add_argument("--self-distillation", action=BooleanOptionalAction, default=None,
                   help="SILC self-distillation from 80%% of the steps (default on; off "
                   "for NaFlex presets, as in the paper)")
    p.add_argument("--masked-prediction", action=BooleanOptionalAction, default=None,
                   help="TIPS masked prediction from 80%% of the steps (default on; off "
                   "for NaFlex presets, as in the paper)")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="peak learning rate (default 1e-3, the paper's pretraining value; "
                   "use ~1e-5 to fine-tune a released model)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=500,
                   help="steps between backups for resumption (default 500)")
    p.add_argument("--format", choices=["csv", "jsonl", "tfrecord", "webdataset"],
                   default=None, help="data format (default: from the file names)")
    p.add_argument("--default-language", default="",
                   help="language of records without one (e.g. en)")
    p.add_argument("--json", action="store_true",
                   help="no progress output; print the summary as JSON")
    p.set_defaults(func=cmd_train)


# --------------------------------------------------------------------------- parser


def add_presets_parser(sub):
    p = sub.add_parser("presets", help="list the released SigLIP 2 checkpoints")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_presets)


def add_convert_parser(sub):
    p = sub.add_parser(
        "convert",
        help="convert a big_vision / transformers / keras-hub checkpoint to a preset",
        description="Convert a checkpoint into a keras_siglip2 preset directory.",
    )
    p.add_argument("--from", dest="source", required=True,
                   choices=["big_vision", "transformers", "keras_hub"])
    p.add_argument("src", help=".npz file, transformers directory, or keras-hub preset")
    p.add_argument("out_dir", help="preset directory to write (must not exist or be empty)")
    p.add_argument("--tokenizer", help="SentencePiece model to attach (e.g. gemma_tokenizer.model)")
    p.add_argument("--image-size", type=int, default=None,
                   help="big_vision fixed resolution override (So400m/14 at 384: 384)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_convert)


# Each entry adds one or more subcommands to the parser (in `--help` order). Feature
# areas keep their `add_*_parser` / `cmd_*` pair in their own section of this file.
SUBCOMMAND_PARSERS = [add_presets_parser, add_tasks_parsers, add_convert_parser,
                      add_export_parser, add_demo_parser, add_train_parser]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="siglip2", description="SigLIP 2 for Keras: presets, conversion, tasks, training."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add_parser in SUBCOMMAND_PARSERS:
        add_parser(sub)
    for p in (parser, *sub.choices.values()):
        p.add_argument(console.VERBOSE_FLAG, action="store_true",
                       help="show TensorFlow / XLA start-up and log output (hidden by default)")
    return parser


# --------------------------------------------------------------------------- main


def main(argv=None):
    _quiet_backends(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("siglip2: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line, non-zero exit
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"siglip2: error: {message}", file=sys.stderr)
        if os.environ.get("SIGLIP2_DEBUG"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
