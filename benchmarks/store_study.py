"""A whole `compare` study from the stored teacher signal vs the same study with the teacher online.

Two measurements on ``fashion-cnn`` with random crop (2 px) + horizontal flip, on the first
``--images`` training images (the teacher is trained once on them and cached before any timing):

1. **Speed, end to end**: ``compare`` of scratch + 6 methods (Hinton KD, FitNets, AT, RKD, CRD,
   DKD) × ``--seeds`` seeds, ``--epochs`` student epochs: the store side (its one-time store cost
   included: the store is deleted before each store study) against the same study with
   ``teacher_signals.online: true``. Wall and CPU seconds (``time.process_time``; this process
   only, one thread), so the ratio can be read on a loaded machine too. Order: store, online, store.
2. **Accuracy**: Hinton KD with crop+flip, ``--acc-epochs`` epochs, ``--seeds`` seeds, teacher
   online vs from the store at V = 1, 4, 16: final test accuracy per seed, paired differences
   (store − online) with a 95% t interval.

    OMP_NUM_THREADS=1 python benchmarks/store_study.py --data-dir ../shared/data --json benchmarks/store_study.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from kdlab.pipeline import load_teacher, prepare_data, run_teacher
from kdlab.recipes import load_recipe
from kdlab.study.compare import compare
from kdlab.study.stats import paired, summarize
from kdlab.teacher_cache import cached_teacher
from kdlab.device import cpu_model

METHODS = "hinton,fitnets,at,rkd,crd,dkd"
SECTIONS = ["distill.fitnets.pairs={features.5: features.5}", "distill.fitnets.weight=100",
            "distill.at.pairs={features.2: features.2}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder with fashion-mnist/ (default: $KDLAB_DATA_DIR)")
    ap.add_argument("--images", type=int, default=6000, help="training images (the first N)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2, help="student epochs of the speed study")
    ap.add_argument("--acc-epochs", type=int, default=16, help="student epochs of the accuracy study")
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: speed, accuracy")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    data_dir = args.data_dir or os.environ.get("KDLAB_DATA_DIR")
    base = [f"dataset.data_dir={json.dumps(str(data_dir))}"] if data_dir else []
    base += ["augment.crop=2", "augment.flip=true", f"teacher.train.epochs={args.teacher_epochs}"]
    cache = Path(tempfile.mkdtemp(prefix="kdlab-store-study-"))
    recipe = load_recipe("fashion-cnn", base)
    data = prepare_data(recipe)
    data.train = data.train.subset(torch.arange(args.images))
    out = {"host": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(), "images": args.images,
           "seeds": args.seeds, "load_start": os.getloadavg()[0]}
    print(f"{out['host']}, torch {torch.__version__}, {out['threads']} thread(s), load {out['load_start']:.2f}", flush=True)

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))

    t0 = time.perf_counter()
    teacher = cached_teacher(recipe, data, cache, False, print, train=run_teacher, load=load_teacher)
    out["teacher"] = {"seconds": time.perf_counter() - t0, "test_acc": teacher.test_acc}
    print(f"teacher: {teacher.describe()} in {out['teacher']['seconds']:.0f} s", flush=True)

    def study(sets, methods=None, losses=None, fresh=True):
        if fresh:
            shutil.rmtree(cache / "signals", ignore_errors=True)
        r = load_recipe("fashion-cnn", base + sets)
        w, c = time.perf_counter(), time.process_time()
        res = compare(r, losses, seeds=args.seeds, methods=methods, data=data, teacher_cache=cache, progress=False,
                      log=lambda m: None, profile=False)
        return res, time.perf_counter() - w, time.process_time() - c

    if "speed" not in args.skip:
        speed = out["speed"] = {"epochs": args.epochs, "methods": METHODS, "runs": []}
        for side in ("store", "online", "store"):
            sets = SECTIONS + [f"student.train.epochs={args.epochs}"] + (["teacher_signals.online=true"] if side == "online" else [])
            res, wall, cpu = study(sets, methods=METHODS)
            store_s = sum(float(n.split("computed in ")[1].split(" s")[0]) for n in res.notes if "computed in " in n)
            speed["runs"].append({"side": side, "wall": wall, "cpu": cpu, "store_seconds": store_s, "mode": res.mode,
                                  "notes": res.notes, "load": os.getloadavg()[0],
                                  "final_acc": {v: [r.final_acc for r in res.of(v)] for v in res.variants}})
            print(f"speed study, {side}: {wall:.0f} s wall, {cpu:.0f} s CPU (store {store_s:.0f} s), {res.mode}", flush=True)
            save()
        on = [r for r in speed["runs"] if r["side"] == "online"][0]
        st = [r for r in speed["runs"] if r["side"] == "store"]
        speed["ratio_wall"] = [on["wall"] / r["wall"] for r in st]
        speed["ratio_cpu"] = [on["cpu"] / r["cpu"] for r in st]
        print(f"online / store: wall {speed['ratio_wall']}, CPU {speed['ratio_cpu']}", flush=True)
        save()

    if "accuracy" not in args.skip:
        acc = out["accuracy"] = {"epochs": args.acc_epochs, "sides": {}}
        for side, sets in (("online", ["teacher_signals.online=true"]), ("V=1", ["teacher_signals.views=1"]),
                           ("V=4", ["teacher_signals.views=4"]), ("V=16", ["teacher_signals.views=16"])):
            res, wall, cpu = study(sets + [f"student.train.epochs={args.acc_epochs}"], losses="hinton")
            acc["sides"][side] = {"hinton": [r.final_acc for r in res.of("hinton")],
                                  "scratch": [r.final_acc for r in res.of("scratch")], "wall": wall, "cpu": cpu}
            print(f"accuracy, {side}: hinton {acc['sides'][side]['hinton']}, scratch {acc['sides'][side]['scratch']}, "
                  f"{wall:.0f} s", flush=True)
            save()
        online = acc["sides"]["online"]["hinton"]
        for side in ("V=1", "V=4", "V=16"):
            p = paired(acc["sides"][side]["hinton"], online)
            d = p.diff
            acc["sides"][side]["vs_online"] = {"mean": d.mean, "ci": [d.ci_low, d.ci_high], "p": p.p_value}
            s = summarize(acc["sides"][side]["hinton"])
            print(f"{side}: hinton {100 * s.mean:.2f}% vs online {100 * summarize(online).mean:.2f}%; store - online "
                  f"{100 * d.mean:+.2f} points [{100 * d.ci_low:+.2f}, {100 * d.ci_high:+.2f}], p = {p.p_value:.2f}", flush=True)
        save()
    out["load_end"] = os.getloadavg()[0]
    out["wall_total"] = time.perf_counter() - t0
    save()
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
