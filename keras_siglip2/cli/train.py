"""`siglip2 demo` (the whole recipe on synthetic data, `training.recipes.demo`) and
`siglip2 train` (the recipe on a user's data, `training.recipes.train`)."""

import argparse
import json
from argparse import BooleanOptionalAction

from keras_siglip2.cli.common import TaskOutput, positive_int, warning_lines
from keras_siglip2.training.recipes.demo import run_demo
from keras_siglip2.training.recipes.train import train


def cmd_demo(args):
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
    p.add_argument("--steps", type=positive_int, default=None,
                   help="training steps (default 600)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true",
                   help="no progress output; print the main results as JSON")
    p.set_defaults(func=cmd_demo)


def cmd_train(args):
    if args.json:
        with TaskOutput():
            summary = train(**train_kwargs(args), verbose=False)
        keys = ("steps", "start_step", "losses", "final_losses", "final_loss", "preset_path",
                "summary_path", "out_dir", "locca_tasks", "curation", "balancing")
        print(json.dumps({k: summary[k] for k in keys}))
    else:
        with warning_lines():  # e.g. the one LocCa warning for data without boxes
            train(**train_kwargs(args), verbose=True)
    return 0


def names(text):
    """argparse `type=`: "a,b" -> ["a", "b"] (no empty name)."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return parts


def sequence_lengths(text):
    """argparse `type=`: "128,256,576" -> [128, 256, 576] (positive ints)."""
    try:
        return [positive_int(part.strip()) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers (e.g. 128,256,576,784,1024), "
            f"got {text!r}") from None


def train_kwargs(args):
    return dict(
        preset=args.preset, data=args.data, steps=args.steps, batch_size=args.batch_size,
        out_dir=args.out, mesh=args.mesh, decoder=args.decoder,
        self_distillation=args.self_distillation, masked_prediction=args.masked_prediction,
        learning_rate=args.learning_rate, seed=args.seed,
        checkpoint_every=args.checkpoint_every, data_format=args.format,
        default_language=args.default_language, curate_with=args.curate_with,
        curation_ratio=args.curation_ratio, naflex_from=args.naflex_from,
        naflex_lengths=args.naflex_lengths, balance_attributes=args.balance_attributes,
        balance_proxies=args.balance_proxies,
    )


def add_train_parser(sub):
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
    p.add_argument("--steps", type=positive_int, default=1000,
                   help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=positive_int, default=32,
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
    p.add_argument("--checkpoint-every", type=positive_int, default=500,
                   help="steps between backups for resumption (default 500)")
    p.add_argument("--format", choices=["csv", "jsonl", "tfrecord", "webdataset"],
                   default=None, help="data format (default: from the file names)")
    p.add_argument("--default-language", default="",
                   help="language of records without one (e.g. en)")
    p.add_argument("--curate-with", metavar="REFERENCE_PRESET", default=None,
                   help="ACID data curation (paper sec. 2.5) against this reference preset "
                   "(name or directory): each step trains on the most learnable part of a "
                   "larger super-batch")
    p.add_argument("--curation-ratio", type=float, default=None, metavar="R",
                   help="fraction of each super-batch kept, in (0, 1] (default 0.5; needs "
                   "--curate-with)")
    p.add_argument("--naflex-from", type=float, default=None, metavar="F",
                   help="continue a fixed-resolution preset as a NaFlex model from this "
                   "fraction of the steps, in (0, 1) (the paper: 0.9)")
    p.add_argument("--naflex-lengths", type=sequence_lengths, default=None,
                   metavar="N,N,...", help="sequence lengths of the NaFlex stage, one drawn per "
                   "batch (default 128,256,576,784,1024; the saved preset's converter "
                   "takes the largest; needs --naflex-from)")
    p.add_argument("--balance-attributes", type=names, default=None, metavar="A,B,...",
                   help="M4 data balancing (paper sec. 2.5): the sensitive attributes "
                   "annotated in the records' 'attributes' column (needs "
                   "--balance-proxies)")
    p.add_argument("--balance-proxies", type=names, default=None, metavar="P,Q,...",
                   help="M4 data balancing: the proxy concepts annotated in the records' "
                   "'proxies' column (needs --balance-attributes)")
    p.add_argument("--json", action="store_true",
                   help="no progress output; print the summary as JSON")
    p.set_defaults(func=cmd_train)
