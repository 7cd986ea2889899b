"""`siglip2 convert`: a big_vision `.npz`, transformers directory or keras-hub preset
into a complete keras_siglip2 preset directory (`keras_siglip2.convert`), with the
image converter of the source's preprocessing mode."""

import json
import os
import sys

import keras_hub

from keras_siglip2 import convert
from keras_siglip2.preprocessing import SigLIP2Tokenizer
from keras_siglip2.presets import image_converter_for_architecture, match_for_source


def image_converter_for(backbone, match="big_vision"):
    """The image converter matching a backbone's vision tower, in mode `match`."""

    vision = backbone.vision_encoder
    if hasattr(vision, "image_size"):
        spec = {"type": "fixed", "image_size": list(vision.image_size)}
    else:
        spec = {"type": "naflex", "patch_size": vision.patch_size,
                "max_num_patches": vision.max_num_patches}
    return image_converter_for_architecture({"vision": spec}, match=match)


def _tokenizer_from_spm(path, sequence_length):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--tokenizer: SentencePiece model {path} does not exist.")
    return SigLIP2Tokenizer(proto=path, sequence_length=sequence_length)


def convert_checkpoint(source_kind, src, out_dir, tokenizer_path=None, image_size=None,
                       overwrite=False):
    """Converts `src` into a complete preset directory at `out_dir`; returns
    (out_dir, backbone, has_tokenizer)."""

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
