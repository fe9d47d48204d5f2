"""Do ``kdlab.distill``'s defaults sink a small student on small data?

A user's own small CNN pair on the digits data (``tests/user_models.py`` ``TinyCNN``: by default a
1→16→32-channel teacher and a 1→4→8-channel student, 10 classes; ``--teacher-width``/``--student-width``), trained through ``kdlab.distill``
as a user would: a teacher with ``method="ce"``, then students from scratch (``ce``), with Hinton
KD and with FitNets (``block2 → block2``, the hint weight at its default and at 1), each setting
over several seeds. Per seed one teacher (seed s) and one student initialisation shared by every
method and setting (paired comparisons).

Selection on validation: the 1,437 training images are split into 1,150 train / 287 validation
(``load_dataset("digits", val_fraction=0.2, seed=s)``); settings are compared on the final
epoch's validation accuracy and the fixed 360-image test set is reported beside it.

    OMP_NUM_THREADS=1 PYTHONPATH=src:. python benchmarks/api_defaults.py --seeds 0,1,2,3,4 --jsonl /tmp/api_defaults.jsonl

Prints one line per (setting, method, seed) and a summary table (means over seeds, and the
paired distilled − scratch difference per setting).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Dict, List, Tuple

import torch
from torch.utils.data import TensorDataset

import kdlab
from kdlab.data import load_dataset
from kdlab.device import cpu_model
from tests.user_models import TinyCNN

PAIRS = {"block2": "block2"}
#: (label, kdlab.distill keyword arguments besides the method's); "defaults" passes none.
SETTINGS: List[Tuple[str, Dict[str, Any]]] = [
    ("defaults", {}),
    ("epochs=8", {"epochs": 8}),
    ("lr=3e-3", {"lr": 3e-3}),
    ("lr=1e-2", {"lr": 1e-2}),
    ("epochs=30", {"epochs": 30}),
    ("epochs=30 lr=3e-3", {"epochs": 30, "lr": 3e-3}),
    ("hard=0.9 soft=0.1", {"hard_weight": 0.9, "soft_weight": 0.1}),
    ("hard=0.1 soft=0.9", {"hard_weight": 0.1, "soft_weight": 0.9}),
    ("T=2", {"T": 2.0}),
]
#: (label, method, method parameters)
METHODS: List[Tuple[str, str, Dict[str, Any]]] = [
    ("scratch", "ce", {}),
    ("hinton", "hinton", {}),
    ("fitnets", "fitnets", {"pairs": PAIRS}),
    ("fitnets w=10", "fitnets", {"pairs": PAIRS, "weight": 10.0}),
    ("fitnets w=1", "fitnets", {"pairs": PAIRS, "weight": 1.0}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--teacher-epochs", type=int, default=30)
    ap.add_argument("--teacher-lr", type=float, default=3e-3)
    ap.add_argument("--teacher-width", type=int, default=16, help="TinyCNN width of the teacher")
    ap.add_argument("--student-width", type=int, default=4, help="TinyCNN width of the student")
    ap.add_argument("--settings", default=None, help="comma-separated labels of SETTINGS to run (default: all)")
    ap.add_argument("--jsonl", default=None, help="append one JSON line per run here")
    ap.add_argument("--report", default=None, metavar="JSONL", help="print the tables of a finished --jsonl file and exit")
    args = ap.parse_args()
    if args.report:
        report([json.loads(line) for line in open(args.report)])
        return
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = SETTINGS if args.settings is None else [s for s in SETTINGS if s[0] in args.settings.split(",")]
    rows: List[Dict[str, Any]] = []
    cpu0 = time.process_time()
    for seed in seeds:
        d = load_dataset("digits", val_fraction=0.2, seed=seed)
        train, val, test = (TensorDataset(s.x, s.y) for s in (d.train, d.val, d.test))
        torch.manual_seed(seed)
        teacher = TinyCNN(args.teacher_width, 10)
        t = kdlab.distill(teacher, None, train, val, test_loader=test, method="ce", epochs=args.teacher_epochs,
                          lr=args.teacher_lr, seed=seed, out=False, progress=False)
        print(f"seed {seed}: teacher val {100 * t.final['val_acc']:.1f} test {100 * t.final['test_acc']:.1f}", flush=True)
        torch.manual_seed(1000 + seed)
        init = TinyCNN(args.student_width, 10).state_dict()
        for label, kwargs in settings:
            for mlabel, method, params in METHODS:
                student = TinyCNN(args.student_width, 10)
                student.load_state_dict(init)
                r = kdlab.distill(student, None if method == "ce" else teacher, train, val, test_loader=test, method=method,
                                  seed=seed, out=False, progress=False, **kwargs, **params)
                first = r.history[0]
                row = {"setting": label, "method": mlabel, "seed": seed, "widths": [args.teacher_width, args.student_width], "val": r.final["val_acc"], "test": r.final["test_acc"],
                       "teacher_test": t.final["test_acc"], "epoch1": {k: v for k, v in first.items() if k.startswith(("loss_", "share_"))},
                       "notes": [n for h in r.history for n in h.get("notes", [])], "host": cpu_model()}
                rows.append(row)
                print(f"{label:>18} {mlabel:>13} seed {seed}: val {100 * row['val']:.1f} test {100 * row['test']:.1f}", flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(row) + "\n")
    print(f"\nCPU time {time.process_time() - cpu0:.0f} s on {cpu_model()}, torch {torch.__version__}\n")
    summary(rows, [s[0] for s in settings])


def summary(rows: List[Dict[str, Any]], settings: List[str]) -> None:
    """Markdown table: mean val/test per method, and distilled − scratch (val) with its seed range."""
    methods = [m[0] for m in METHODS]
    print("| setting | " + " | ".join(f"{m} val / test" for m in methods) + " |")
    print("|---|" + "---|" * len(methods))
    for s in settings:
        cells = []
        for m in methods:
            got = [r for r in rows if r["setting"] == s and r["method"] == m]
            cells.append(f"{100 * statistics.mean(r['val'] for r in got):.1f} / {100 * statistics.mean(r['test'] for r in got):.1f}")
        print(f"| {s} | " + " | ".join(cells) + " |")
    print("\nPaired distilled − scratch on validation (mean over seeds [min, max]):\n")
    for s in settings:
        scratch = {r["seed"]: r["val"] for r in rows if r["setting"] == s and r["method"] == "scratch"}
        parts = []
        for m in methods[1:]:
            diff = [r["val"] - scratch[r["seed"]] for r in rows if r["setting"] == s and r["method"] == m]
            parts.append(f"{m} {100 * statistics.mean(diff):+.1f} [{100 * min(diff):+.1f}, {100 * max(diff):+.1f}]")
        print(f"* {s}: " + "; ".join(parts))


def epoch1_share(row: Dict[str, Any], term: str) -> float:
    """A term's share of epoch 1's loss from its recorded means (the defaults' weights 0.5/0.5, hint weight per variant)."""
    e = row["epoch1"]
    w = {"hard": 0.5, "soft": 0.5, "hint": {"fitnets": 100.0, "fitnets w=10": 10.0, "fitnets w=1": 1.0}.get(row["method"], 0.0)}
    if row["setting"].startswith("hard="):
        w["hard"], w["soft"] = (float(x.split("=")[1]) for x in row["setting"].split())
    parts = {t: w[t] * e[f"loss_{t}"] for t in w if f"loss_{t}" in e and w[t]}
    return parts.get(term, 0.0) / sum(parts.values())


def report(rows: List[Dict[str, Any]]) -> None:
    """Summary tables, then every seed's final val / test accuracy and epoch 1's largest term share."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    summary(rows, settings)
    seeds = sorted({r["seed"] for r in rows})
    print("\n| setting | method | " + " | ".join(f"seed {s} val / test" for s in seeds) + " | epoch-1 share of the largest term |")
    print("|---|---|" + "---|" * (len(seeds) + 1))
    for s in settings:
        for m in [m[0] for m in METHODS]:
            got = {r["seed"]: r for r in rows if r["setting"] == s and r["method"] == m}
            if not got:
                continue
            share = ""
            if m != "scratch":
                term = max(("hard", "soft", "hint"), key=lambda t: epoch1_share(got[seeds[0]], t))
                share = f"{term} {100 * min(epoch1_share(r, term) for r in got.values()):.0f}–{100 * max(epoch1_share(r, term) for r in got.values()):.0f}%"
            cells = " | ".join(f"{100 * got[k]['val']:.1f} / {100 * got[k]['test']:.1f}" for k in seeds)
            print(f"| {s} | {m} | {cells} | {share} |")


if __name__ == "__main__":
    main()
