"""The `siglip2` command line, one module per subcommand family: `presets`
(cli/presets.py), `embed` / `classify` / `retrieve` (cli/tasks.py), `convert`
(cli/convert.py), `export` (cli/export.py), `demo` / `train` (cli/train.py); what they
share is in cli/common.py. The top layer of the package: it may import every other.

Every subcommand has `--help`; an error prints one line `siglip2: error: ...` and exits
with a non-zero status. `keras_siglip2.cli:main` is the `siglip2` entry point.
"""

import argparse
import os
import sys

from keras_siglip2 import console
from keras_siglip2.cli.common import TaskOutput, positive_int, quiet_backends
from keras_siglip2.cli.convert import (
    add_convert_parser,
    cmd_convert,
    convert_checkpoint,
    image_converter_for,
)
from keras_siglip2.cli.export import add_export_parser, cmd_export
from keras_siglip2.cli.presets import add_presets_parser, cmd_presets
from keras_siglip2.cli.tasks import (
    DEFAULT_TASK_PRESET,
    MAX_PLOTTED_IMAGES,
    add_tasks_parsers,
    build_retriever,
    cmd_classify,
    cmd_embed,
    cmd_retrieve,
    load_task_model,
    parse_labels,
)
from keras_siglip2.cli.train import (
    add_demo_parser,
    add_train_parser,
    cmd_demo,
    cmd_train,
    train_kwargs,
)

# Each entry adds one or more subcommands to the parser (in `--help` order). A new
# subcommand family gets its own module with an `add_*_parser` / `cmd_*` pair.
SUBCOMMAND_PARSERS = [add_presets_parser, add_tasks_parsers, add_convert_parser,
                      add_export_parser, add_demo_parser, add_train_parser]

# Deprecated aliases of the single-module cli.py's private names, kept for one release.
_quiet_backends = quiet_backends
_positive_int = positive_int
_TaskOutput = TaskOutput
_train_kwargs = train_kwargs


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


def main(argv=None):
    quiet_backends(sys.argv[1:] if argv is None else argv)
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


__all__ = [
    "DEFAULT_TASK_PRESET", "MAX_PLOTTED_IMAGES", "SUBCOMMAND_PARSERS", "build_parser",
    "build_retriever", "cmd_classify", "cmd_convert", "cmd_demo", "cmd_embed",
    "cmd_export", "cmd_presets", "cmd_retrieve", "cmd_train", "convert_checkpoint",
    "image_converter_for", "load_task_model", "main", "parse_labels",
]
