"""Speed: the same workloads on two source trees of kdlab, alternating A B A B, each run in a fresh process.

For a change to kdlab's training core: every figure is measured on both trees in one invocation,
on one host, run after run in turn, so a drift of the machine's speed hits both sides alike.
Prints, per workload, each side's median and the median of the paired ratios A/B with their range.

Workloads (each a fresh ``python`` with ``PYTHONPATH=<tree>/src``):

* ``mlp-distill``: seconds of one mnist-mlp distillation epoch (closed form, cached teacher logits),
  the median of 3 epochs' ``train_seconds``;
* ``grid``: seconds of one epoch of a 5 × 5 batched grid of mnist-mlp students (``kdlab compare``,
  4 codings + scratch, 5 seeds);
* ``fitnets-cnn``: seconds of one mnist-cnn FitNets epoch (``mnist-cnn-fitnets`` recipe, the
  teacher online, hint layer features.5) on the first 12,800 training images;
* ``demo``: wall seconds of ``kdlab demo`` with its teacher already cached;
* ``cold-study``: wall seconds of ``kdlab compare mnist-mlp --losses hinton,softmax-input,extra-T
  --seeds 1`` with an empty teacher cache (the teacher is trained in the run).

    git worktree add /tmp/kdlab-before <commit>
    python benchmarks/trees_ab.py --a /tmp/kdlab-before --b . --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

# Each child prints one JSON number: seconds. It uses only API both sides have (recipes, pipeline, compare).
CHILD = {
    "mlp-distill": """
import json, sys
from kdlab.recipes import load_recipe
from kdlab.pipeline import run_distill
r = load_recipe("mnist-mlp", ["student.train.epochs=3", f"dataset.data_dir={json.dumps(sys.argv[1])}"])
res = run_distill(r, sys.argv[2], out=False, progress=False)
print(json.dumps(sorted(h["train_seconds"] for h in res.fit.history)[1]))
""",
    "grid": """
import json, sys
from kdlab.recipes import load_recipe
from kdlab.study.compare import compare
r = load_recipe("mnist-mlp", ["student.train.epochs=2", f"dataset.data_dir={json.dumps(sys.argv[1])}"])
res = compare(r, "hinton,softmax-input,softmax-input-no-T2,extra-T", 5, teacher_cache=sys.argv[2], batched=True,
              progress=False, log=lambda *a: None, profile=False)
per_epoch = [sum(run.history[e]["train_seconds"] for run in res.runs.values()) for e in range(2)]
print(json.dumps(min(per_epoch)))
""",
    "fitnets-cnn": """
import json, sys, torch
from kdlab.recipes import load_recipe
from kdlab.pipeline import prepare_data, run_distill
r = load_recipe("mnist-cnn-fitnets", ["student.train.epochs=1", f"dataset.data_dir={json.dumps(sys.argv[1])}"])
data = prepare_data(r)
data.train = data.train.subset(torch.arange(12800))
res = run_distill(r, sys.argv[3], data=data, out=False, progress=False)
print(json.dumps(res.fit.history[0]["train_seconds"]))
""",
}


def child(tree: Path, code: str, *args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def wall(tree: Path, argv: List[str]) -> float:
    """Wall seconds of ``kdlab argv`` (``--cpu``: the child's user + system CPU seconds instead)."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    t0, c0 = time.perf_counter(), _child_cpu()
    subprocess.run([sys.executable, "-m", "kdlab", *argv], env=env, capture_output=True, text=True, check=True)
    return _child_cpu() - c0 if CPU_TIME else time.perf_counter() - t0


CPU_TIME = False  # set by --cpu


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def teacher_checkpoint(tree: Path, recipe: str, data_dir: str, folder: Path, epochs: int) -> str:
    """A teacher trained once (by tree A) for the distillation workloads; its quality does not matter here."""
    out = folder / f"{recipe}-teacher"
    if not (out / "best.pt").exists():
        wall(tree, ["train-teacher", recipe, "--data-dir", data_dir, "--epochs", str(epochs), "--out", str(out), "--no-progress"])
    return str(out / "best.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="tree A (e.g. the commit before the change)")
    ap.add_argument("--b", required=True, help="tree B (e.g. this checkout)")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--reps", type=int, default=3, help="runs per side and workload")
    ap.add_argument("--only", help="comma-separated workloads (default: all)")
    ap.add_argument("--cpu", action="store_true",
                    help="time the whole-command workloads (demo, cold-study) in CPU seconds (user + system) instead "
                         "of wall seconds: less sensitive to other jobs on a busy host, blind to idle waits")
    args = ap.parse_args()
    global CPU_TIME
    CPU_TIME = args.cpu
    a, b = Path(args.a).resolve(), Path(args.b).resolve()
    names = args.only.split(",") if args.only else ["mlp-distill", "grid", "fitnets-cnn", "demo", "cold-study"]
    work = Path(tempfile.mkdtemp(prefix="kdlab-ab-"))
    mlp_teacher = teacher_checkpoint(a, "mnist-mlp", args.data_dir, work, 3) if "mlp-distill" in names else ""
    cnn_teacher = teacher_checkpoint(a, "mnist-cnn", args.data_dir, work, 1) if "fitnets-cnn" in names else ""
    results: Dict[str, Dict[str, List[float]]] = {}
    for name in names:
        side: Dict[str, List[float]] = {"a": [], "b": []}
        for rep in range(args.reps + 1):  # the first pair warms caches (teacher cache, page cache) and is not counted
            for key, tree in (("a", a), ("b", b)):
                cache = work / f"cache-{key}"
                if name == "mlp-distill":
                    t = child(tree, CHILD[name], args.data_dir, mlp_teacher)
                elif name == "grid":
                    t = child(tree, CHILD[name], args.data_dir, str(cache))
                elif name == "fitnets-cnn":
                    t = child(tree, CHILD[name], args.data_dir, str(cache), cnn_teacher)
                elif name == "demo":
                    t = wall(tree, ["demo", "--teacher-cache", str(cache), "--out", str(work / f"demo-{key}-{rep}"),
                                    "--no-progress"])
                else:  # cold-study: an empty teacher cache every run
                    shutil.rmtree(work / f"cold-{key}", ignore_errors=True)
                    t = wall(tree, ["compare", "mnist-mlp", "--losses", "hinton,softmax-input,extra-T", "--seeds", "1",
                                    "--data-dir", args.data_dir, "--teacher-cache", str(work / f"cold-{key}"),
                                    "--out", str(work / f"study-{key}-{rep}"), "--no-progress"])
                if rep:
                    side[key].append(t)
        results[name] = side
        ratios = [x / y for x, y in zip(side["a"], side["b"])]
        print(f"{name}: A median {statistics.median(side['a']):.3f} s, B median {statistics.median(side['b']):.3f} s, "
              f"A/B median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} pairs)",
              flush=True)
    print(json.dumps(results))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
