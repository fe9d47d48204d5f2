"""Speed: the channels_last memory format against the standard layout for the mnist-cnn pair on a CPU.

Two parts, both alternating the two layouts in this one process, one thread:

* the models alone: the student's forward + backward and the teacher's no-grad forward, batch 32
  (CPU milliseconds per batch, median of ``--reps`` rounds of ``--steps`` batches);
* kdlab's FitNets epoch from the stored teacher signal (``features.5`` ↔ ``features.5``, weight 100,
  the first ``--images`` training images) with ``train.channels_last`` false and true, and the
  cached-logit Hinton epoch (the closed-form step, standard layout) as the reference.

    OMP_NUM_THREADS=1 python benchmarks/channels_last_cpu.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stored_signals import METHODS, StepClock, mnist_cnn_setup  # noqa: E402

from kdlab.device import cpu_model  # noqa: E402
from kdlab.models import build_model  # noqa: E402
from kdlab.pipeline import run_distill  # noqa: E402
from kdlab.recipes import load_recipe  # noqa: E402


def model_ms(channels, channels_last: bool, train: bool, steps: int) -> float:
    """CPU ms per batch of 32: forward + backward (train) or a no-grad forward."""
    torch.manual_seed(0)
    model = build_model("cnn", (1, 28, 28), 10, {"channels": channels})
    x = torch.randn(32, 1, 28, 28)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def once() -> None:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)

    for _ in range(5):
        once()
    t0 = time.process_time()
    for _ in range(steps):
        once()
    return (time.process_time() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder with mnist/ (default: $KDLAB_DATA_DIR)")
    ap.add_argument("--images", type=int, default=6400, help="training images per epoch")
    ap.add_argument("--reps", type=int, default=3, help="alternating rounds")
    ap.add_argument("--steps", type=int, default=100, help="batches per model timing")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    results: dict = {"host": cpu_model(), "torch": torch.__version__, "load_start": os.getloadavg(), "models": {}}
    for name, channels, train in (("student cnn [8, 16], forward + backward", [8, 16], True),
                                  ("teacher cnn [64, 256], no-grad forward", [64, 256], False)):
        rounds = [(model_ms(channels, False, train, args.steps), model_ms(channels, True, train, args.steps))
                  for _ in range(args.reps)]
        std, cl = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        results["models"][name] = {"standard_ms": [r[0] for r in rounds], "channels_last_ms": [r[1] for r in rounds]}
        print(f"{name}: standard {std:.2f} ms, channels_last {cl:.2f} ms per batch of 32 ({std / cl:.2f}x)", flush=True)

    base, data, frozen, cache = mnist_cnn_setup(args.data_dir, args.images, "kdlab-cl-bench-")

    def epoch(extra) -> float:
        clock = StepClock()
        run_distill(load_recipe("mnist-cnn", base + extra), frozen, data=data, out=False, progress=False,
                    teacher_cache=cache, callbacks=[clock])
        return clock.cpu

    sides = {"reference: cached-logit Hinton, closed form": [],
             "FitNets from the store, standard layout": METHODS["fitnets"] + ["student.train.channels_last=false"],
             "FitNets from the store, channels_last": METHODS["fitnets"] + ["student.train.channels_last=true"]}
    for extra in sides.values():
        epoch(extra)  # computes the stores, warms up
    times: dict = {name: [] for name in sides}
    for _ in range(args.reps):
        for name, extra in sides.items():
            times[name].append(epoch(extra))
    ref = statistics.median(next(iter(times.values())))
    results["epochs_cpu_s"] = times
    results["images"] = args.images
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name}: {med:.2f} CPU s per {args.images} images ({med / ref:.2f}x the reference; "
              f"{med * 60000 / args.images:.1f} s per 60,000)", flush=True)
    results["load_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
