"""Speed: a (variants × seeds) grid of students trained one by one vs in one batched step.

Runs ``kdlab.study.compare`` twice on the same recipe, teacher and seeds — ``batched=False`` and
``batched=True`` — for a few student epochs, checks that both give the same accuracies, and
prints the training seconds per epoch for the whole grid and the speed-up.

    python benchmarks/batched_students.py --data-dir ../shared/data                 # mnist-mlp, 5 x 5
    python benchmarks/batched_students.py --data-dir ../shared/data --recipe mnist-cnn --epochs 1 --train-subset 6400
"""

from __future__ import annotations

import argparse
import json

import torch

from kdlab.recipes import load_recipe
from kdlab.pipeline import prepare_data
from kdlab.study.compare import compare


def train_seconds_per_epoch(result) -> float:
    epochs = len(next(iter(result.runs.values())).history)
    return sum(h["train_seconds"] for r in result.runs.values() for h in r.history) / epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="mnist-mlp")
    ap.add_argument("--data-dir")
    ap.add_argument("--losses", default="hinton,softmax-input,softmax-input-no-T2,extra-T")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2, help="student epochs per measurement")
    ap.add_argument("--train-subset", type=int, help="train on the first N training images only (a quicker measurement)")
    args = ap.parse_args()
    overrides = [f"student.train.epochs={args.epochs}"] + ([f"dataset.data_dir={json.dumps(args.data_dir)}"] if args.data_dir else [])
    recipe = load_recipe(args.recipe, overrides)
    data = prepare_data(recipe)
    if args.train_subset:
        data.train = data.train.subset(torch.arange(min(args.train_subset, len(data.train))))
    runs = {}
    for batched in (False, True):
        runs[batched] = compare(recipe, args.losses, args.seeds, data=data, batched=batched, progress=False, log=lambda *_: None)
    one, grid = runs[False], runs[True]
    worst = max(abs(one.runs[k].final_acc - grid.runs[k].final_acc) for k in one.runs)
    n = len(one.runs)
    a, b = train_seconds_per_epoch(one), train_seconds_per_epoch(grid)
    steps = one.runs[next(iter(one.runs))].step_losses.shape[0]
    print(f"{args.recipe}: {len(one.variants)} variants x {args.seeds} seeds = {n} students, {args.epochs} epochs of "
          f"{len(data.train)} images ({steps} steps per student)")
    print("| training | s / epoch (all students) | s / epoch / student |")
    print("| --- | ---: | ---: |")
    print(f"| one by one | {a:.2f} | {a / n:.3f} |")
    print(f"| batched | {b:.2f} | {b / n:.3f} |")
    print(f"speed-up {a / b:.1f}x: the batched grid costs {n * b / a:.1f} average one-student runs (one by one: {n}); "
          f"largest final-accuracy difference between the two: {100 * worst:.4f} points")


if __name__ == "__main__":
    main()
