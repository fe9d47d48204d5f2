"""The methods table in docs/methods.md: every method on mnist-cnn and fashion-cnn, paired by seed.

    python benchmarks/methods_table.py --data-dir ../shared/data           # both recipes, 3 seeds

Each method is one ``kdlab compare --methods <method>`` study (with its own scratch students) on
the recipe's cached CNN teacher; ``multi-teacher`` adds an MLP teacher to the same CNN (two
architectures). Students of a seed start from the same weights and see the same batches in every
study, so every method is paired with hinton by seed. Each study's per-seed results are written to
``--results`` (docs/methods.json) as soon as it ends and are not re-run, so an interrupted table
resumes. The protocol is shortened to fit a 2-core CPU (PROTOCOL, written into the table's header);
the numbers are what this command measured, on the host it names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdlab.device import cpu_model  # noqa: E402
from kdlab.recipes import load_recipe  # noqa: E402
from kdlab.study.compare import compare  # noqa: E402
from kdlab.study.stats import paired, summarize  # noqa: E402
import torch  # noqa: E402

# Shortened protocol (the recipes' own: teacher 6 epochs and student 6 epochs at batch 32, lr 1e-4). The teacher
# gets 5 epochs: after 1 it was no better than a student trained alone for 3 (mnist-cnn 98.48% vs 98.52%,
# fashion-cnn 88.35% vs 88.91%, AMD EPYC 2026-12-01), so the table would have measured distilling from a peer.
PROTOCOL = [
    "teacher.train.epochs=5", "teacher.train.batch_size=64", "teacher.train.optimizer.lr=0.001",
    "teacher.train.precision=bf16", "teacher.train.channels_last=true",
    "student.train.epochs=5", "student.train.batch_size=64", "student.train.optimizer.lr=0.002",
    # bf16 autocast + channels_last for students and the online teacher: ~2.3x faster CNN teacher steps on
    # hosts with native bf16 (benchmarks/precision_cnn.py); every method, scratch and hinton included, runs the same way.
    "student.train.precision=bf16", "student.train.channels_last=true",
]
SECTIONS = [
    "distill.fitnets={pairs: {features.5: features.5}}",  # 16 -> 256 channels at 7x7: a 1x1 conv + BN adapter
    "distill.at={pairs: {features.2: features.2, features.5: features.5}}",  # both stages' attention maps
    "distill.crd={negatives: 4096}",  # 16384 in the paper (CIFAR); 4096 keeps CRD near 100 s / epoch here
    "distill.dkd={warmup: 1}",  # the paper warms up over 20 of 240 epochs; here over the first of 5
]
METHODS = "hinton,fitnets,at,rkd,crd,dkd,self-ema"
TEACHER_TRAIN = ("{epochs: 5, batch_size: 64, optimizer: {name: adam, lr: 0.001}, precision: bf16, "
                 "channels_last: true}")  # = the protocol's teacher settings
SECOND_TEACHER = (f"teachers=[{{model: {{name: cnn, channels: [64, 256]}}, train: {TEACHER_TRAIN}}}, "
                  f"{{model: {{name: mlp, hidden: [1200, 1200]}}, train: {TEACHER_TRAIN}}}]")


def _run(recipe_name: str, method: str, seeds: int, cache: Path, data_dir: str) -> dict:
    """One ``compare --methods <method>`` study (scratch is always trained with it, batched and cheap)."""
    base = [f"dataset.data_dir={data_dir}", *PROTOCOL, *SECTIONS]
    if method == "multi-teacher":  # the same CNN teacher (a cache hit) plus an MLP teacher
        base.append(SECOND_TEACHER)
    result = compare(load_recipe(recipe_name, base), None, seeds, methods=method, teacher_cache=cache, progress=False,
                     profile=False)
    out = {"teacher_acc": result.teacher["test_acc"], "mode": result.mode, "host": cpu_model(), "seeds": result.seeds,
           "threads": torch.get_num_threads(),
           "protocol": PROTOCOL + SECTIONS}
    for v in result.variants:
        runs = result.of(v)
        out[v] = {"final_acc": [r.final_acc for r in runs],
                  "s_per_epoch": sum(r.wall_seconds for r in runs) / sum(len(r.history) for r in runs)}
    return out


def study(recipe_name: str, seeds: int, cache: Path, data_dir: str, store: Path,
          only: Optional[List[str]] = None) -> Optional[Dict[str, dict]]:
    """Every method on one recipe; each method's study is saved to ``store`` as soon as it ends, so an
    interrupted table resumes where it stopped (students of a seed are identical across studies).
    ``only``: run just these studies and return None (the table needs them all)."""
    done = json.loads(store.read_text()) if store.exists() else {}
    for method in [*METHODS.split(","), "multi-teacher"]:
        key = f"{recipe_name}/{method}"
        if only is not None and method not in only:
            continue
        if key in done and len(done[key]["seeds"]) == seeds and done[key].get("protocol") == PROTOCOL + SECTIONS:
            continue
        print(f"{key}: running", flush=True)
        done[key] = _run(recipe_name, method, seeds, cache, data_dir)
        tmp = store.with_suffix(".tmp")
        tmp.write_text(json.dumps(done, indent=1))
        tmp.replace(store)
        print(f"{key}: {[round(100 * a, 2) for a in done[key][method]['final_acc']]}", flush=True)
    if only is not None:
        return None
    hinton = done[f"{recipe_name}/hinton"]
    scratch = hinton["scratch"]["final_acc"]  # the same students (seed, weights, batches) in every study
    rows: Dict[str, dict] = {"scratch": _row(hinton["scratch"], None, hinton["hinton"]["final_acc"], hinton["teacher_acc"])}
    for method in [*METHODS.split(","), "multi-teacher"]:
        entry = done[f"{recipe_name}/{method}"]
        rows[method] = _row(entry[method], scratch, None if method == "hinton" else hinton["hinton"]["final_acc"],
                            entry["teacher_acc"])
        rows[method]["threads"] = entry.get("threads", "not recorded")
    return rows


def _row(entry: dict, scratch, hinton, teacher_acc: float) -> dict:
    accs = entry["final_acc"]
    return {"acc": summarize(accs), "vs_scratch": None if scratch is None else paired(accs, scratch).diff,
            "vs_hinton": None if hinton is None else paired(accs, hinton).diff,
            "s_per_epoch": entry["s_per_epoch"], "teacher": teacher_acc}


def _diff(d) -> str:
    return "—" if d is None else f"{100 * d.mean:+.2f} [{100 * d.ci_low:+.2f}, {100 * d.ci_high:+.2f}]"


def table(recipe_name: str, rows: Dict[str, dict]) -> List[str]:
    lines = [f"### {recipe_name}", "",
             f"Teacher (CNN) test accuracy {100 * rows['hinton']['teacher']:.2f}%; the CNN + MLP pair's mean-logit "
             f"ensemble {100 * rows['multi-teacher']['teacher']:.2f}%.", "",
             "| method | final test acc % (mean ± std) | vs scratch (points, 95% CI) | vs hinton (points, 95% CI) "
             "| s / epoch |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for v, r in rows.items():
        lines.append(f"| {v} | {100 * r['acc'].mean:.2f} ± {100 * r['acc'].std:.2f} | {_diff(r['vs_scratch'])} | "
                     f"{_diff(r['vs_hinton'])} | {r['s_per_epoch']:.1f} |")
    return lines + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("KDLAB_DATA_DIR", "../shared/data"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--recipes", default="mnist-cnn,fashion-cnn")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "teachers"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "methods.md"))
    ap.add_argument("--results", default=str(ROOT / "docs" / "methods.json"),
                    help="per-study results, written as each study ends; studies already in it are not re-run")
    ap.add_argument("--only", help="comma-separated studies to run now (e.g. dkd,multi-teacher); writes no table")
    args = ap.parse_args()
    only = args.only.split(",") if args.only else None
    unknown = sorted(set(only or ()) - {*METHODS.split(","), "multi-teacher"})
    if unknown:
        ap.error(f"--only: unknown studies {', '.join(unknown)}; choose from {METHODS},multi-teacher")
    body: List[str] = []
    threads: set = set()
    for name in args.recipes.split(","):
        rows = study(name, args.seeds, Path(args.cache), str(Path(args.data_dir).resolve()), Path(args.results), only)
        if rows is None:
            continue
        threads |= {r["threads"] for m, r in rows.items() if m != "scratch"}
        body += table(name, rows)
        print("\n".join(table(name, rows)), flush=True)
    if only is not None:
        return 0
    header = [
        "# Methods compared", "",
        f"Measured with `python benchmarks/methods_table.py --data-dir ../shared/data --seeds {args.seeds}` on "
        f"{cpu_model()} ({os.cpu_count()} cores), torch {torch.__version__}; per-study results in `docs/methods.json` "
        "(each study is one `compare --methods <method>` with its own scratch students; an interrupted table resumes). "
        f"Intra-op threads per study: {', '.join(sorted(map(str, threads)))} (s / epoch is that many threads' time).", "",
        "Protocol (shortened from the recipes' own to fit a 2-core CPU): " + ", ".join(f"`{x}`" for x in PROTOCOL)
        + ". Method settings: " + ", ".join(f"`{x}`" for x in SECTIONS) + "; all others the methods' defaults (see "
        "`kdlab methods`). Every method keeps the recipe's hard/soft weights (0.3 CE + 0.7 Hinton KD at T = 7) and adds "
        "its own terms; `scratch` is cross-entropy only. Final = last-epoch test accuracy. `vs scratch` / `vs hinton`: paired by seed "
        "(same initial weights and batch order), mean difference with its 95% t-interval; with 3 seeds an interval "
        "must be wide, so read one that excludes 0 as evidence and one that includes 0 as 'not shown'. "
        "`multi-teacher`: equal-weight mixture of the CNN teacher and a 784-1200-1200 MLP teacher. `self-ema`: the "
        "student's own exponential moving average is its teacher (no CNN teacher). s / epoch: training + evaluation, "
        "batched variants share one step (their time is divided among them).", "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(header + body))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
