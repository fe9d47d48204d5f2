"""Speed: mnist-cnn teacher and student training steps in fp32, bf16, channels_last, channels_last+bf16.

Times kdlab's own training step (``Trainer.train_epoch``) on the first ``--samples`` MNIST training
images, batch 32 as in the recipe, the settings interleaved round by round (this host's speed
drifts), and prints the median ms/step of each and its speed-up over fp32. fp32 is the default
step (for CE training that is the closed form); every other setting takes the autograd path.

    python benchmarks/precision_cnn.py --data-dir ../shared/data

Measured 2026-12-01 on an Intel Xeon VM (2 cores, AVX-512 + AMX-BF16, torch 2.14.1, 2 threads),
`python benchmarks/precision_cnn.py --data-dir ../shared/data` (3 rounds of 30 steps). The host
was shared and heavily loaded (load average 5-7 on 2 cores), so absolute times are inflated and
the ranges wide; read the ratios:

    teacher  fp32                  436.19 ms/step (range 240.50-721.20)  1.00x vs fp32
    teacher  bf16                  626.87 ms/step (range 227.05-732.14)  0.70x vs fp32
    teacher  channels_last fp32    264.15 ms/step (range 246.48-706.94)  1.65x vs fp32
    teacher  channels_last bf16    185.78 ms/step (range 164.37-489.86)  2.35x vs fp32
    student  fp32                  251.56 ms/step (range 93.49-427.51)  1.00x vs fp32
    student  bf16                  116.48 ms/step (range 94.34-155.00)  2.16x vs fp32
    student  channels_last fp32     66.62 ms/step (range 38.17-86.62)  3.78x vs fp32
    student  channels_last bf16     68.67 ms/step (range 42.46-132.58)  3.66x vs fp32

A quieter moment the same day (one process, 10 steps each after one warm-up epoch, teacher only):
fp32 340 ms, bf16 342 ms, channels_last fp32 34 ms, channels_last + bf16 15.6 ms per step; the
project notes record fp32 36.7 / bf16 24.0 / channels_last + bf16 10.3 ms on a quiet host. The NCHW
fp32 step of this CNN is erratic on this host (36-540 ms between processes, before this change too);
channels_last removes that, and bf16 on top roughly halves the teacher's step on AMX.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from kdlab.device import cpu_info
from kdlab.methods import CE
from kdlab.pipeline import build_role_model, prepare_data
from kdlab.recipes import load_recipe
from kdlab.train.build import build_trainer

SETTINGS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "channels_last fp32": ("fp32", True),
            "channels_last bf16": ("bf16", True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--samples", type=int, default=960, help="training images per timed epoch (default 960 = 30 steps)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--roles", default="teacher,student")
    args = ap.parse_args()
    overrides = [f"dataset.data_dir={args.data_dir}"] if args.data_dir else []
    recipe = load_recipe("mnist-cnn", overrides + ["dataset.download=false"])
    data = prepare_data(recipe)
    data = dataclasses.replace(data, train=data.train.subset(torch.arange(args.samples)))
    cpu = cpu_info()
    print(f"cpu: {cpu['model']} ({cpu['capability']}, AMX {cpu['amx']}, AVX-512-BF16 {cpu['avx512_bf16']}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(data.train)} images, batch 32")
    for role in args.roles.split(","):
        cfg = getattr(recipe, role).train
        times = {name: [] for name in SETTINGS}
        trainers = {}
        for name, (precision, cl) in SETTINGS.items():
            model = build_role_model(recipe, role, data)
            trainers[name] = build_trainer(model, CE(), data, dataclasses.replace(cfg, precision=precision, channels_last=cl, epochs=1))
            trainers[name].train_epoch()  # warm-up (oneDNN primitives, allocator)
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                t0 = time.perf_counter()
                rows = trainer.train_epoch()
                times[name].append((time.perf_counter() - t0) / rows.shape[0] * 1e3)
        base = statistics.median(times["fp32"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{role:8s} {name:20s} {med:7.2f} ms/step (range {min(ts):.2f}-{max(ts):.2f})  {base / med:4.2f}x vs fp32")


if __name__ == "__main__":
    main()
