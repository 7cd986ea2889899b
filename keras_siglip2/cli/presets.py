"""`siglip2 presets`: the table (or JSON list) of the released SigLIP 2 checkpoints."""

import json

from keras_siglip2.presets import format_presets_table, list_presets



def cmd_presets(args):

    if args.json:
        print(json.dumps(list_presets(), indent=2))
    else:
        print(format_presets_table())
    return 0


def add_presets_parser(sub):
    p = sub.add_parser("presets", help="list the released SigLIP 2 checkpoints")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_presets)


