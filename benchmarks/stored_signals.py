"""Speed: a student epoch reading the stored teacher signal vs the teacher online, per method, on mnist-cnn.

Methods: Hinton KD with crop+flip, FitNets (features.5 ↔ features.5), AT (features.2 ↔ features.2),
RKD and CRD (penultimate embeddings), each on the ``mnist-cnn`` pair, batch 32, Adam 1e-4, on the
first ``--images`` training images. The reference is the cached-logit Hinton epoch (no
augmentation), the fastest path kdlab has. Each method's store is computed once before timing
(its one-time cost is printed apart); then the online epoch, the stored epoch and the reference alternate, ``--reps``
times, in this one process. Also the store's one-time cost and size for Hinton crop+flip at
V = 1, 4, 16.

    python benchmarks/stored_signals.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdlab.pipeline import prepare_data, run_distill
from kdlab.recipes import load_recipe
from kdlab.data.augment import AugmentConfig
from kdlab.data.views import ReplayViews
from kdlab.models import build_model
from kdlab.teacher import FrozenTeacher
from kdlab.teacher_cache.signals import signal_store
from kdlab.train.callbacks import Callback
from kdlab.device import cpu_model


class StepClock(Callback):
    """CPU seconds (this process) spent in the epoch's steps: readable on a loaded machine too."""

    def __init__(self) -> None:
        self.cpu = 0.0

    def wrap_steps(self, trainer, steps, total):
        t0 = time.process_time()
        yield from steps
        self.cpu += time.process_time() - t0

METHODS = {
    "hinton crop+flip": ["augment.crop=2", "augment.flip=true"],
    "fitnets": ["distill.method=fitnets", "distill.fitnets.pairs={features.5: features.5}", "distill.fitnets.weight=100"],
    "at": ["distill.method=at", "distill.at.pairs={features.2: features.2}"],
    "rkd": ["distill.method=rkd"],
    "crd": ["distill.method=crd"],
}


def mnist_cnn_setup(data_dir, images: int, prefix: str):
    """The recipe overrides (1 student epoch, the data folder), the first ``images`` training images of
    ``mnist-cnn``, its teacher untrained (speed only) and frozen, and a fresh teacher cache."""
    data_dir = data_dir or os.environ.get("KDLAB_DATA_DIR")
    base = [f"dataset.data_dir={json.dumps(str(data_dir))}", "student.train.epochs=1"] if data_dir else ["student.train.epochs=1"]
    cache = Path(tempfile.mkdtemp(prefix=prefix))
    data = prepare_data(load_recipe("mnist-cnn", base))
    data.train = data.train.subset(torch.arange(images))
    torch.manual_seed(0)
    frozen = FrozenTeacher(build_model("cnn", data.in_shape, data.num_classes, {"channels": [64, 256]}))
    return base, data, frozen, cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder with mnist/ (default: $KDLAB_DATA_DIR)")
    ap.add_argument("--images", type=int, default=12800, help="training images per epoch")
    ap.add_argument("--reps", type=int, default=2, help="timed epochs per side and method")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of: {', '.join(METHODS)}")
    ap.add_argument("--no-store-cost", action="store_true", help="skip the store's one-time cost at V = 1, 4, 16")
    args = ap.parse_args()
    base, data, frozen, cache = mnist_cnn_setup(args.data_dir, args.images, "kdlab-signals-bench-")
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}; "
          f"{args.images} images per epoch", flush=True)

    cpu = {}

    def epoch(extra, online):
        r = load_recipe("mnist-cnn", base + extra)
        clock = StepClock()
        res = run_distill(r, frozen, data=data, out=False, progress=False, teacher_cache=cache, teacher_online=online,
                          callbacks=[clock])
        cpu.setdefault((tuple(extra), online), []).append(clock.cpu)
        return res.fit.history[0]["train_seconds"], res.fit.extra

    results = {"host": cpu_model(), "torch": torch.__version__, "images": args.images, "methods": {}}
    cached = [epoch([], False)[0] for _ in range(args.reps)]
    results["cached hinton"] = cached
    results["cached hinton cpu"] = cpu[((), False)][-args.reps:]
    ref_cpu = statistics.median(results["cached hinton cpu"])
    print(f"cached-logit Hinton epoch: {statistics.median(cached):.2f} s wall, {ref_cpu:.2f} s CPU", flush=True)
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    for name in chosen:
        extra = METHODS[name]
        t0 = time.perf_counter()
        _, facts = epoch(extra, False)  # computes the store (not timed as an epoch)
        store = facts.get("teacher_signals", {})
        once = time.perf_counter() - t0
        # online, stored and the cached-logit reference alternate, so a load burst hits all three alike
        pairs = [(epoch(extra, True)[0], epoch(extra, False)[0], epoch([], False)[0]) for _ in range(args.reps)]
        on, st = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        on_cpu, st_cpu = cpu[(tuple(extra), True)], cpu[(tuple(extra), False)][1:]
        ref_cpu = statistics.median(cpu[((), False)][-args.reps:])  # this method's rounds of the reference
        cached = [p[2] for p in pairs]
        results["methods"][name] = {"online": [p[0] for p in pairs], "stored": [p[1] for p in pairs],
                                    "online_cpu": on_cpu, "stored_cpu": st_cpu, "reference": cached,
                                    "reference_cpu": cpu[((), False)][-args.reps:],
                                    "store_bytes": store.get("bytes"), "store_seconds": store.get("compute_seconds"),
                                    "first_run_seconds": once}
        print(f"{name}: online {on:.2f} s, stored {st:.2f} s ({on / st:.1f}x), {st / statistics.median(cached):.2f}x the "
              f"cached-logit epoch; CPU: online {statistics.median(on_cpu):.2f} s, stored {statistics.median(st_cpu):.2f} s "
              f"({statistics.median(st_cpu) / ref_cpu:.2f}x the cached-logit epoch); "
              f"store {store.get('bytes', 0) / 1e6:.1f} MB computed in {store.get('compute_seconds', 0):.1f} s",
              flush=True)
    X, Y = data.train.x, data.train.y
    results["store_cost"] = {}
    for v in () if args.no_store_cost else (1, 4, 16):  # the one-time cost of Hinton crop+flip's store (logits only)
        views = ReplayViews(AugmentConfig(crop=2, flip=True), seed=1000 + v, views=v, num_classes=data.num_classes,
                            mean=data.info.get("mean"), std=data.info.get("std"))

        def compute(index, view, views=views):
            return {"logits": frozen(views(X, Y, index, view)[0])}

        t0 = time.perf_counter()
        store = signal_store(cache / "cost", {"bench": v}, samples=len(X), views=v, shapes={"logits": ((10,), "float32")},
                             compute=compute, device=X.device, log=lambda m: None)
        seconds = time.perf_counter() - t0
        results["store_cost"][v] = {"seconds": seconds, "bytes": store.nbytes}
        print(f"store, Hinton crop+flip, V={v}: {seconds:.1f} s once, {store.nbytes / 1e6:.1f} MB", flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
