"""The methods table in docs/methods.md: every method on mnist-cnn and fashion-cnn, paired by seed.

    python benchmarks/methods_table.py --data-dir ../shared/data           # both recipes, 3 seeds
    python benchmarks/methods_table.py --protocol small-data               # mnist-cnn-5pct: 5% of the labels

Each method is one ``kdlab compare --methods <method>`` study (with its own scratch students) on
the recipe's cached CNN teacher; ``multi-teacher`` adds an MLP teacher to the same CNN (two
architectures). Students of a seed start from the same weights and see the same batches in every
study, so every method is paired with hinton by seed. Each study's per-seed results are written to
``--results`` (docs/methods.json) as soon as it ends and are not re-run, so an interrupted table
resumes. The protocol is shortened to fit a 2-core CPU (PROTOCOL, written into the table's header);
the numbers are what this command measured, on the host it names.

``--protocol small-data`` runs the same studies on ``mnist-cnn-5pct`` (every student on the same
class-stratified 5% of MNIST's training images, the teacher on all of them) with the recipe's own
settings, as one ``compare`` for every method but multi-teacher, into
``benchmarks/methods_small_data/``: ``results.json`` (per study), ``reports/`` (each study's
``kdlab compare`` report), ``table.md``; the table also replaces the small-data section of
docs/methods.md, which the default protocol keeps when it rewrites the page.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdlab.device import cpu_model  # noqa: E402
from kdlab.recipes import load_recipe  # noqa: E402
from kdlab.study.compare import compare  # noqa: E402
from kdlab.study.report import write_report  # noqa: E402
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


def second_teacher(teacher_train: str) -> str:
    """The multi-teacher study's ``teachers``: the CNN teacher (a cache hit) and an MLP, trained alike."""
    return (f"teachers=[{{model: {{name: cnn, channels: [64, 256]}}, train: {teacher_train}}}, "
            f"{{model: {{name: mlp, hidden: [1200, 1200]}}, train: {teacher_train}}}]")


SECOND_TEACHER = second_teacher(TEACHER_TRAIN)


@dataclass
class Protocol:
    """What one table runs: recipe overrides, method sections, the multi-teacher pair, where results go."""

    overrides: List[str]
    sections: List[str]
    second_teacher: str
    recipes: str
    out: Path
    results: Path
    reports: Optional[Path] = None  # each study's kdlab compare report, under <reports>/<recipe>/<method>
    # one compare for every method but multi-teacher (which needs its own teachers): one set of scratch students
    # (and, with augmentation or feature methods, one teacher signal store for all of them)
    joint: bool = False
    teacher: str = "CNN"  # how the tables name the recipe's teacher
    section: Optional[tuple] = None  # (begin, end, title): the protocol's section of docs/methods.md
    command: str = ""  # the command that measures it, as the page quotes it (before --seeds)


LEAD = ("Three protocols, each every registered method over 3 seeds, paired by seed against scratch and Hinton KD: "
        "[Fashion-MNIST with a ResNet-18 teacher and crop + flip](#fashion-mnist-a-resnet-18-teacher-crop-flip), where "
        "the teacher stands far above the student; [small data](#small-data-students-on-a-share-of-mnists-training-labels), "
        "students on 5% of MNIST's labels; and the short protocol first below (a CNN teacher barely above its student, "
        "5 epochs, no augmentation), where no method is shown to help.")
SMALL = ROOT / "benchmarks" / "methods_small_data"
SMALL_BEGIN, SMALL_END = "<!-- small-data-table -->", "<!-- /small-data-table -->"
RESNET = ROOT / "benchmarks" / "methods_fashion_resnet18"
RESNET_BEGIN, RESNET_END = "<!-- fashion-resnet18-table -->", "<!-- /fashion-resnet18-table -->"
# fashion-resnet18 (torchvision ResNet-18 teacher, the 9,098-parameter CNN student, crop + flip), every method
# from the stored teacher signal. The teacher: the recipe's schedule (SGD 0.1, cosine, batch 128) over 5 of its
# 15 epochs, in bf16 (a 5-epoch teacher already stands ~7 points above the students; 15 epochs are ~2.8 h of one
# CPU thread here). The students: Adam 2e-3, batch 64, RESNET_EPOCHS epochs (why: the README of
# benchmarks/methods_fashion_resnet18), 4 stored views per sample.
RESNET_EPOCHS = 10
RESNET_TEACHER = ("{epochs: 5, batch_size: 128, optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.0005}, "
                  "scheduler: {name: cosine}, precision: bf16}")
RESNET_PROTOCOL = [
    "teacher.train.epochs=5", "teacher.train.precision=bf16",
    f"student.train.epochs={RESNET_EPOCHS}", "student.train.batch_size=64", "student.train.optimizer.lr=0.002",
    "teacher_signals.views=4",
]
RESNET_SECTIONS = [
    "distill.fitnets={pairs: {features.5: layer3}}",  # 16 -> 256 channels at 7x7: a 1x1 conv + BN adapter
    "distill.at={pairs: {features.2: layer2, features.5: layer3}}",  # the 14x14 and 7x7 stages' attention maps
    "distill.crd={negatives: 4096}",
    "distill.dkd={warmup: 1}",
]
PROTOCOLS = {
    "short": Protocol(PROTOCOL, SECTIONS, SECOND_TEACHER, "mnist-cnn,fashion-cnn", ROOT / "docs" / "methods.md",
                      ROOT / "docs" / "methods.json"),
    # mnist-cnn-5pct as bundled (teacher 3 epochs on all 60,000 images; students 30 epochs on the same 3,000):
    # no overrides; add a recipe name here for another share; the sections as above, DKD's warm-up over 3 epochs (the paper: 20 of 240)
    "small-data": Protocol([], [*SECTIONS[:3], "distill.dkd={warmup: 3}"],
                           second_teacher("{epochs: 3, batch_size: 64, optimizer: {name: adam, lr: 0.001}, precision: auto, "
                                          "channels_last: true}"),
                           "mnist-cnn-5pct", SMALL / "table.md", SMALL / "results.json", SMALL / "reports", joint=True,
                           section=(SMALL_BEGIN, SMALL_END, "Small data: students on a share of MNIST's training labels"),
                           command="OMP_NUM_THREADS=1 python benchmarks/methods_table.py --protocol small-data"),
    "fashion-resnet18": Protocol(
        RESNET_PROTOCOL, RESNET_SECTIONS,
        "teachers=[{model: {name: \"torchvision:resnet18\", small_input: true}, train: " + RESNET_TEACHER + "}, "
        "{model: {name: mlp, hidden: [1200, 1200]}, train: " + RESNET_TEACHER + "}]",
        "fashion-resnet18", RESNET / "table.md", RESNET / "results.json", RESNET / "reports", joint=True,
        teacher="ResNet-18", section=(RESNET_BEGIN, RESNET_END, "Fashion-MNIST, a ResNet-18 teacher, crop + flip"),
        command="OMP_NUM_THREADS=1 python benchmarks/methods_table.py --protocol fashion-resnet18"),
}


def _run(recipe_name: str, method: str, seeds: int, cache: Path, data_dir: str, protocol: Protocol = PROTOCOLS["short"]) -> dict:
    """One ``compare --methods <method>`` study (scratch is always trained with it, batched and cheap)."""
    base = [f"dataset.data_dir={data_dir}", *protocol.overrides, *protocol.sections]
    if method == "multi-teacher":  # the same CNN teacher (a cache hit) plus an MLP teacher
        base.append(protocol.second_teacher)
    start = time.perf_counter()
    result = compare(load_recipe(recipe_name, base), None, seeds, methods=method, teacher_cache=cache, progress=False,
                     profile=False)
    out = {"teacher_acc": result.teacher["test_acc"], "mode": result.mode, "host": cpu_model(), "seeds": result.seeds,
           "threads": torch.get_num_threads(),
           "protocol": protocol.overrides + protocol.sections}
    if protocol.reports is not None:
        out.update(wall_seconds=time.perf_counter() - start, notes=result.notes, load=os.getloadavg(),
                   finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        write_report(result, protocol.reports / recipe_name / ("methods" if "," in method else method), plots=False)
    for v in result.variants:
        runs = result.of(v)
        out[v] = {"final_acc": [r.final_acc for r in runs],
                  "s_per_epoch": sum(r.wall_seconds for r in runs) / sum(len(r.history) for r in runs)}
    return out


def study(recipe_name: str, seeds: int, cache: Path, data_dir: str, store: Path,
          only: Optional[List[str]] = None, protocol: Protocol = PROTOCOLS["short"]) -> Optional[Dict[str, dict]]:
    """Every method on one recipe; each method's study is saved to ``store`` as soon as it ends, so an
    interrupted table resumes where it stopped (students of a seed are identical across studies).
    ``only``: run just these studies and return None (the table needs them all)."""
    done = json.loads(store.read_text()) if store.exists() else {}
    studies = [METHODS, "multi-teacher"] if protocol.joint else [*METHODS.split(","), "multi-teacher"]
    if protocol.joint and only is not None:  # a joint study of just the methods asked for (e.g. one process each)
        studies = [",".join(m for m in METHODS.split(",") if m in only), "multi-teacher"]
    for method in studies:
        members = [m for m in method.split(",") if m]
        if not members or only is not None and not set(members) & set(only):
            continue
        if all(f"{recipe_name}/{m}" in done and len(done[f"{recipe_name}/{m}"]["seeds"]) == seeds
               and done[f"{recipe_name}/{m}"].get("protocol") == protocol.overrides + protocol.sections for m in members):
            continue
        key = f"{recipe_name}/{'methods' if len(members) > 1 else method}"
        print(f"{key}: running", flush=True)
        entry = _run(recipe_name, ",".join(members), seeds, cache, data_dir, protocol)
        done = _save(store, {f"{recipe_name}/{m}": entry for m in members})  # a joint study: one entry per method
        method = members[-1]
        print(f"{key}: {[round(100 * a, 2) for a in done[f'{recipe_name}/{method}'][method]['final_acc']]}", flush=True)
    if only is not None:
        return None
    done = json.loads(store.read_text())  # with what studies in other processes added
    hinton = done[f"{recipe_name}/hinton"]
    scratch = hinton["scratch"]["final_acc"]  # the same students (seed, weights, batches) in every study
    rows: Dict[str, dict] = {"scratch": _row(hinton["scratch"], None, hinton["hinton"]["final_acc"], hinton["teacher_acc"])}
    for method in [*METHODS.split(","), "multi-teacher"]:
        entry = done[f"{recipe_name}/{method}"]
        rows[method] = _row(entry[method], scratch, None if method == "hinton" else hinton["hinton"]["final_acc"],
                            entry["teacher_acc"])
        rows[method]["threads"] = entry.get("threads", "not recorded")
    return rows


def _save(path: Path, entries: Dict[str, dict]) -> Dict[str, dict]:
    """Add ``entries`` to the results file, re-read under a lock: studies running in parallel processes
    (``--only``) each add their own without dropping the others'. Returns the file's new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = json.loads(path.read_text()) if path.exists() else {}
        done.update(entries)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(done, indent=1))
        tmp.replace(path)
    return done


def _row(entry: dict, scratch, hinton, teacher_acc: float) -> dict:
    accs = entry["final_acc"]
    return {"acc": summarize(accs), "vs_scratch": None if scratch is None else paired(accs, scratch).diff,
            "vs_hinton": None if hinton is None else paired(accs, hinton).diff,
            "s_per_epoch": entry["s_per_epoch"], "teacher": teacher_acc}


def _diff(d) -> str:
    return "—" if d is None else f"{100 * d.mean:+.2f} [{100 * d.ci_low:+.2f}, {100 * d.ci_high:+.2f}]"


def table(recipe_name: str, rows: Dict[str, dict], teacher: str = "CNN") -> List[str]:
    lines = [f"### {recipe_name}", "",
             f"Teacher ({teacher}) test accuracy {100 * rows['hinton']['teacher']:.2f}%; the {teacher} + MLP pair's mean-logit "
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
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), default="short",
                    help="short: the shortened recipes' protocol (docs/methods.md); small-data: mnist-cnn-5pct "
                         "(benchmarks/methods_small_data); fashion-resnet18: a ResNet-18 teacher with crop + flip "
                         "(benchmarks/methods_fashion_resnet18); each with its section of docs/methods.md")
    ap.add_argument("--recipes", default=None, help="default: the protocol's")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "teachers"))
    ap.add_argument("--out", default=None, help="default: the protocol's page")
    ap.add_argument("--results", default=None,
                    help="per-study results, written as each study ends; studies already in it are not re-run "
                         "(default: the protocol's)")
    ap.add_argument("--only", help="comma-separated studies to run now (e.g. dkd,multi-teacher); writes no table")
    args = ap.parse_args()
    protocol = PROTOCOLS[args.protocol]
    args.recipes = args.recipes or protocol.recipes
    args.out = args.out or str(protocol.out)
    args.results = args.results or str(protocol.results)
    only = args.only.split(",") if args.only else None
    unknown = sorted(set(only or ()) - {*METHODS.split(","), "multi-teacher"})
    if unknown:
        ap.error(f"--only: unknown studies {', '.join(unknown)}; choose from {METHODS},multi-teacher")
    body: List[str] = []
    threads: set = set()
    tables: Dict[str, Dict[str, dict]] = {}
    for name in args.recipes.split(","):
        rows = study(name, args.seeds, Path(args.cache), str(Path(args.data_dir).resolve()), Path(args.results), only, protocol)
        if rows is None:
            continue
        threads |= {r["threads"] for m, r in rows.items() if m != "scratch"}
        body += table(name, rows, protocol.teacher)
        tables[name] = rows
        print("\n".join(table(name, rows, protocol.teacher)), flush=True)
    if only is not None:
        return 0
    if protocol is not PROTOCOLS["short"]:
        return write_section(args, protocol, tables, threads)
    header = [
        "# Methods compared", "",
        LEAD, "",
        "## Short protocol: the whole MNIST and Fashion-MNIST training sets, no augmentation", "",
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
    old = Path(args.out).read_text() if Path(args.out).exists() else ""
    kept = [b for p in PROTOCOLS.values() if p.section and (b := _block(old, p.section))]  # the other sections stay
    Path(args.out).write_text("\n".join(header + body) + "".join("\n" + b + "\n" for b in kept))
    print(f"wrote {args.out}")
    return 0


def _block(text: str, section: tuple) -> Optional[str]:
    """A protocol's section of docs/methods.md, markers included (None when absent)."""
    begin, end, _title = section
    m = re.search(rf"{re.escape(begin)}.*?{re.escape(end)}", text, re.S)
    return m.group(0) if m else None


def verdict(rows: Dict[str, dict], key: str, what: str) -> str:
    """The table's paired intervals in words: above 0, including 0, below 0."""
    groups: Dict[str, List[str]] = {"above": [], "around": [], "below": []}
    for method, r in rows.items():
        d = r[key]
        if d is not None:
            groups["above" if d.ci_low > 0 else "below" if d.ci_high < 0 else "around"].append(f"`{method}`")
    said = [f"better than {what} (interval above 0): {', '.join(groups['above'])}" if groups["above"] else "",
            f"no difference shown (interval includes 0): {', '.join(groups['around'])}" if groups["around"] else "",
            f"worse (interval below 0): {', '.join(groups['below'])}" if groups["below"] else ""]
    return f"Against {what}: " + "; ".join(x for x in said if x) + "."


COMMON = ("Every method keeps 0.3 CE + 0.7 Hinton KD at T = 7 and adds its own terms; `scratch` is cross-entropy only "
          "(the registered `ce` method). Final = last-epoch test accuracy; `vs scratch` / `vs hinton`: paired by seed "
          "(same initial weights, batch order and examples), mean difference with its 95% t-interval (3 seeds: an "
          "interval that excludes 0 is evidence, one that includes 0 is 'not shown'). s / epoch: training + evaluation "
          "on one thread of a shared machine; batched variants share one step.")


def _measured(args: argparse.Namespace, protocol: Protocol, threads: set) -> str:
    folder = protocol.results.parent.relative_to(ROOT)
    # the host the studies ran on, as their results record it (a later render may run elsewhere)
    hosts = sorted({e["host"] for e in json.loads(Path(args.results).read_text()).values()})
    return (f"Measured with `{protocol.command} --seeds {args.seeds}` on {', '.join(hosts)} "
            f"({os.cpu_count()} cores), torch {torch.__version__}, intra-op threads {', '.join(sorted(map(str, threads)))}; "
            f"results in `{folder}/` (each study's `kdlab compare` report under `reports/`; how the epochs were chosen: "
            "its README).")


def small_data_text(args: argparse.Namespace, protocol: Protocol, name: str, threads: set) -> tuple:
    """The small-data section's introduction and each recipe's line on its teacher, students and share."""
    done = json.loads(Path(args.results).read_text())
    intro = (
        _measured(args, protocol, threads) + " Each recipe as bundled: the CNN teacher "
        "trained on the whole training split, every student, scratch or distilled, on the same class-stratified share "
        "of it (`dataset.student_subset`, the same examples for every method and seed), all tested on the 10,000 test "
        "images. The intervals cover the seeds (initial weights, batch order) on that one share; another share is "
        "not sampled. Method settings: "
        + ", ".join(f"`{x}`" for x in protocol.sections)
        + " (CRD draws at most all the other examples of the share as negatives); all others the methods' defaults. "
        + COMMON)
    r = load_recipe(name, protocol.overrides)
    t, st, sub = r.teacher.train, r.student.train, r.dataset.student_subset
    note = next(n for n in done[f"{name}/hinton"]["notes"] if "student_subset" in n)
    share = note.split(" (")[0].replace("every student trained on ", "")
    return intro, (f"Teacher: {t.epochs} epochs, Adam lr {t.optimizer.lr}, batch {t.batch_size}. Students: "
                   f"{st.epochs} epochs, Adam lr {st.optimizer.lr}, batch {st.batch_size}, on {share} "
                   f"({100 * sub.fraction:g}%, seed {sub.seed}).")


def resnet_text(args: argparse.Namespace, protocol: Protocol, name: str, threads: set) -> tuple:
    """The fashion-resnet18 section's introduction and its line on the teacher, the students and the store."""
    done = json.loads(Path(args.results).read_text())
    r = load_recipe(name, protocol.overrides)
    t, st = r.teacher.train, r.student.train
    store = next((n for n in done[f"{name}/hinton"]["notes"] if n.startswith("teacher signal store")), "")
    intro = (
        _measured(args, protocol, threads) + " The recipe `fashion-resnet18`: torchvision's ResNet-18 "
        "(11.2M parameters, greyscale CIFAR-style stem, trained from scratch by kdlab on the un-augmented training "
        "set) teaches the 9,098-parameter CNN; every student, scratch or distilled, trains on all 60,000 training "
        "images with random crop (4 px) and horizontal flip, tested on the 10,000 test images. The teacher's side "
        "comes from teacher signal stores, 4 stored views per sample (so the "
        f"{st.epochs} epochs replay each view {st.epochs / 4:g} times), every seed and method replaying the same views: "
        "one store for the joint study (line below), and CRD's and the multi-teacher's studies their own "
        "(the README of the results). Deviations from the recipe: "
        + ", ".join(f"`{x}`" for x in protocol.overrides) + ". Method settings: "
        + ", ".join(f"`{x}`" for x in protocol.sections) + "; all others the methods' defaults. `multi-teacher`: "
        "the ResNet-18 and a 784-1200-1200 MLP trained alike, equal weights. " + COMMON)
    return intro, (f"Teacher: {t.epochs} epochs, SGD lr {t.optimizer.lr} cosine, batch {t.batch_size}, {t.precision}. "
                   f"Students: {st.epochs} epochs, Adam lr {st.optimizer.lr}, batch {st.batch_size}. "
                   + (store[0].upper() + store[1:] + "." if store else ""))


TEXTS = {"small-data": small_data_text, "fashion-resnet18": resnet_text}


def write_section(args: argparse.Namespace, protocol: Protocol, tables: Dict[str, Dict[str, dict]], threads: set) -> int:
    """``table.md`` beside the results, and the same tables as the protocol's section of docs/methods.md."""
    begin, end, title = protocol.section
    text_of = TEXTS[args.protocol]
    body: List[str] = []
    intro = ""
    for name, rows in tables.items():
        intro, line = text_of(args, protocol, name, threads)
        lines = table(name, rows, protocol.teacher)
        lines[1:1] = ["", line]
        body += lines + [verdict(rows, "vs_scratch", "scratch"), "", verdict(rows, "vs_hinton", "Hinton KD"), ""]
    protocol.out.parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join([f"# Methods compared — {title}", "", intro, "", *body]))
    page = ROOT / "docs" / "methods.md"
    section = "\n".join([begin, f"## {title}", "", intro, "", *body, end])
    text = page.read_text()
    old = _block(text, protocol.section)
    page.write_text(text.replace(old, section) if old else text.rstrip("\n") + "\n\n" + section + "\n")
    print(f"wrote {args.out} and the section '{title}' of {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
