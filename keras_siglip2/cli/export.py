"""`siglip2 export`: a preset as a TensorFlow SavedModel or a LiteRT file
(`keras_siglip2.export`)."""

import json

from keras_siglip2.export import export



def cmd_export(args):

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


