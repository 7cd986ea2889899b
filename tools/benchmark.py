#!/usr/bin/env python
"""Benchmark of keras-siglip2 (issue 8): measured speed against keras-hub, transformers
and the machine's own matmul peak, for the SigLIP 2 models (arXiv 2502.14786: the
towers of sec. 2, NaFlex of sec. 2.4, the training recipe of sec. 2.1-2.3).

One run on the current machine prints one table and writes it as JSON and Markdown
(`docs/benchmarks.json`, `docs/benchmarks.md` by default). Ratios stay meaningful on a
noisy shared machine: the contenders of a row are timed in alternation (round-robin,
the order rotating every round), several rounds, and each ratio is the median of the
per-round ratios (paired), each throughput the median of its rounds.

Rows are functions in a registry (`ROWS`), one module per family of rows in
`tools/bench/`; a row whose code has not landed yet in the
package reports "not available" instead of failing. Usage:

    KERAS_BACKEND=jax python tools/benchmark.py                 # everything (make bench)
    KERAS_BACKEND=jax python tools/benchmark.py --quick --out /tmp/b   # smoke run
    KERAS_BACKEND=jax python tools/benchmark.py --rows inference,flops
"""

import argparse
import datetime
import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runs from a clean clone without installing
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The rows register themselves in ROWS on import, in table order.
from tools.bench import (  # noqa: E402,F401  (this order)
    rows_inference, rows_profile, rows_naflex, rows_training, rows_locca, rows_precision,
    rows_memory, rows_scaling, rows_gpu,
)
# Re-exported: the names the tests and users reach as `benchmark.X`.
from tools.bench.common import (  # noqa: E402,F401
    ROWS, NotAvailable, _now, alternate, free_memory, paired_ratio, progress, require,
    text_flops, vision_flops,
)
from tools.bench.config import B16_VISION, B_TEXT, FULL, QUICK  # noqa: E402,F401
from tools.bench.rows_memory import CHILDREN  # noqa: E402
from tools.bench.report import machine_info, print_table, table_rows, write_reports  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny models and few rounds: the smoke run of the test suite")
    p.add_argument("--rows", default=",".join(ROWS),
                   help=f"comma-separated rows to run, from: {', '.join(ROWS)}")
    p.add_argument("--out", default=None,
                   help="directory for benchmarks.json and benchmarks.md (default: docs/, "
                        "or build/bench-quick/ with --quick so that a smoke run never "
                        "replaces the published figures)")
    p.add_argument("--repeats", type=int, default=None, help="rounds per row (override)")
    p.add_argument("--caveat", default=None,
                   help="a sentence printed with the results (e.g. machine load)")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be >= 1; got {args.repeats}")
    args.rows = rows
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        CHILDREN[args.child](json.loads(args.child_args))
        return 0
    cfg = dict(QUICK if args.quick else FULL)
    if args.repeats is not None:
        cfg["repeats"] = args.repeats
        for key in ("naflex", "training", "scaling"):
            cfg[key] = dict(cfg[key], repeats=args.repeats)
        cfg["precision"] = dict(cfg["precision"],
                                step=dict(cfg["precision"]["step"], repeats=args.repeats))
    start = _now()
    out = Path(args.out) if args.out else ROOT / ("build/bench-quick" if args.quick else "docs")
    ctx = {"notes": {}, "out": out, "plots": []}  # rows may write plots into `out`
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "config": cfg["name"],
        "repeats": cfg["repeats"],
        "caveat": args.caveat,
        "meta": machine_info(),
        "rows": {},
        "notes": ctx["notes"],
        "plots": ctx["plots"],  # PNG files in `out`, shown in benchmarks.md
    }
    failed = False
    for name in args.rows:
        title, fn = ROWS[name]
        t0 = _now()
        progress(f"row {name}: {title}")
        try:
            result = {"status": "ok", "entries": fn(cfg, ctx)}
        except NotAvailable as e:
            result = {"status": "not available", "reason": str(e)}
        except Exception as e:  # report it, keep going, exit non-zero at the end
            traceback.print_exc()
            failed = True
            result = {"status": "error", "reason": f"{type(e).__name__}: {e}"[:300]}
        result.update(title=title, seconds=round(_now() - t0, 1))
        for line in table_rows({"rows": {name: result}}):
            progress("  " + " | ".join(c for c in line[1:6] if c))
        report["rows"][name] = result
        free_memory()
        write_reports(report, out, _now() - start, final=False)  # survives a later crash
    write_reports(report, out, _now() - start, final=True)
    print_table(report)
    progress(f"wrote {out / 'benchmarks.json'} and {out / 'benchmarks.md'} "
             f"({report['seconds']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
