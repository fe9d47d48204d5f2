"""Tuning the ``kdlab demo`` recipe: one setting over several disjoint seed ranges.

For every start S in --starts it runs exactly what ``kdlab demo --seed S --seeds N --set ...``
runs (:func:`kdlab.study.demo.run_demo`: a teacher trained with seed S, then N scratch and N
distilled students, batched) and prints one line per range: distilled − scratch on the test set
with its paired-t 95% interval and, with --val-fraction > 0, the same on the validation split
carved from the training set (choose settings on validation, then confirm on test).

    python benchmarks/demo_tuning.py --label baseline --starts 0,10,20,30,40
    python benchmarks/demo_tuning.py --label T5 --val-fraction 0.2 --set distill.temperature=5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from kdlab.device import cpu_model
from kdlab.recipes import load_recipe
from kdlab.study.demo import DEMO_SCRATCH, run_demo
from kdlab.study.stats import paired


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="digits-mlp")
    ap.add_argument("--label", required=True)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--starts", default="0,10,20,30,40")
    ap.add_argument("--val-fraction", type=float, default=0.0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--teacher-cache", default=None)
    ap.add_argument("--jsonl", default=None, help="append one JSON line per range here")
    args = ap.parse_args()
    starts = [int(s) for s in args.starts.split(",")]
    for start in starts:
        overrides = [f"seed={start}", f"dataset.val_fraction={args.val_fraction}"] + args.overrides
        recipe = load_recipe(args.recipe, overrides)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = run_demo(recipe, args.seeds, out=f"{tmp}/demo", progress=False, teacher_cache=args.teacher_cache,
                         log=lambda _line: None)
            wall = time.perf_counter() - t0
        row = {"label": args.label, "overrides": args.overrides, "val_fraction": args.val_fraction, "seeds": args.seeds,
               "start": start, "teacher_test": r.teacher_acc, "scratch_test": r.scratch.mean, "distilled_test": r.distilled.mean,
               "gain_test": r.gain.diff.mean, "ci_test": [r.gain.diff.ci_low, r.gain.diff.ci_high], "wins": r.wins,
               "teacher_reused": r.study.teacher["reused"], "wall": wall, "host": cpu_model()}
        line = (f"{args.label} seeds {start}-{start + args.seeds - 1}: teacher {100 * r.teacher_acc:.2f} "
                f"scratch {100 * r.scratch.mean:.2f} distilled {100 * r.distilled.mean:.2f} "
                f"test {100 * r.gain.diff.mean:+.2f} [{100 * r.gain.diff.ci_low:+.2f}, {100 * r.gain.diff.ci_high:+.2f}]")
        if args.val_fraction > 0:
            val = paired([x.history[-1]["val_acc"] for x in r.study.of(recipe.distill.loss)],
                         [x.history[-1]["val_acc"] for x in r.study.of(DEMO_SCRATCH)]).diff
            row.update(gain_val=val.mean, ci_val=[val.ci_low, val.ci_high])
            line += f" | val {100 * val.mean:+.2f} [{100 * val.ci_low:+.2f}, {100 * val.ci_high:+.2f}]"
        line += f" ({wall:.1f} s{', teacher cached' if row['teacher_reused'] else ''})"
        print(line, flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
