"""The `siglip2` command line: list presets and convert checkpoints into presets
(more subcommands arrive with the tasks, training and export parts).

Every subcommand has `--help`; an error prints one line `siglip2: error: ...` and exits
with a non-zero status.
"""

import argparse
import json
import os
import sys


def _quiet_backends():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "jax")


# --------------------------------------------------------------------------- presets


def cmd_presets(args):
    from keras_siglip2.presets import format_presets_table, list_presets

    if args.json:
        print(json.dumps(list_presets(), indent=2))
    else:
        print(format_presets_table())
    return 0


# --------------------------------------------------------------------------- convert


def image_converter_for(backbone):
    """The image converter matching a backbone's vision tower."""
    from keras_siglip2.presets import image_converter_for_architecture

    vision = backbone.vision_encoder
    if hasattr(vision, "image_size"):
        spec = {"type": "fixed", "image_size": list(vision.image_size)}
    else:
        spec = {"type": "naflex", "patch_size": vision.patch_size,
                "max_num_patches": vision.max_num_patches}
    return image_converter_for_architecture({"vision": spec})


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
        image_converter=image_converter_for(backbone),
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
SUBCOMMAND_PARSERS = [add_presets_parser, add_convert_parser]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="siglip2", description="SigLIP 2 for Keras: presets, conversion, tasks, training."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add_parser in SUBCOMMAND_PARSERS:
        add_parser(sub)
    return parser


# --------------------------------------------------------------------------- main


def main(argv=None):
    _quiet_backends()
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
