"""Speed: the mnist-mlp protocol written the usual tutorial way vs kdlab, in one process.

(a) tutorial: torchvision.datasets.MNIST + DataLoader(batch 128, shuffle) with per-sample
    ToTensor/Normalize, nn.Dropout, torch.optim.Adam defaults, and for distillation a teacher
    forward (eval, no_grad) on every step plus KLDivLoss(batchmean) on log_softmax/softmax × T².
(b) kdlab: the same models, optimizer and loss from the mnist-mlp recipe via kdlab's trainer
    (in-memory tensors, index_select batching, cached teacher logits, closed-form objective,
    fused Adam, fast dropout).

The two sides alternate epoch by epoch (this host's speed drifts over minutes). Prints the median
seconds per epoch for teacher training and for distillation and the median of the paired
(a)/(b) ratios, with their range.

    pip install torch==2.14.1 torchvision==0.29.1 -e ".[vision]"
    python benchmarks/speed_mnist_mlp.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.recipes import load_recipe
from kdlab.data.mnist_family import MNIST, data_root, locate
from kdlab.pipeline import build_role_model, distill_method, prepare_data
from kdlab.methods import CE
from kdlab.teacher import FrozenTeacher, PrecomputedTeacherLogits
from kdlab.train import fit


def tutorial_mlp(hidden, dropout):
    layers, width = [nn.Flatten()], 784
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 10))


def torchvision_root(data_dir: Path) -> Path:
    """torchvision expects <root>/MNIST/raw/<uncompressed files>; build that in a temp folder."""
    folder, found = locate(MNIST, data_root(data_dir))
    root = Path(tempfile.mkdtemp(prefix="kdlab-bench-"))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in found.values():
        with gzip.open(path, "rb") as src, open(raw / path.name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


class Tutorial:
    """(a): the mnist-mlp protocol as tutorials write it; one call = one timed epoch."""

    def __init__(self, root: Path, T: float, hard_w: float, soft_w: float) -> None:
        from torchvision import datasets, transforms

        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        train = datasets.MNIST(str(root), train=True, download=False, transform=tf)
        self.loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)
        self.T, self.hard_w, self.soft_w = T, hard_w, soft_w
        torch.manual_seed(0)
        self.teacher = tutorial_mlp([1200, 1200], 0.5)
        self.teacher_opt = torch.optim.Adam(self.teacher.parameters(), lr=1e-3)
        self.student = tutorial_mlp([20, 20], 0.0)
        self.student_opt = torch.optim.Adam(self.student.parameters(), lr=1e-3)
        self.kl = nn.KLDivLoss(reduction="batchmean")

    def teacher_epoch(self) -> float:
        self.teacher.train()
        t0 = time.perf_counter()
        for x, y in self.loader:
            self.teacher_opt.zero_grad()
            loss = F.cross_entropy(self.teacher(x), y)
            loss.backward()
            self.teacher_opt.step()
        return time.perf_counter() - t0

    def distill_epoch(self) -> float:
        T = self.T
        self.teacher.eval()
        self.student.train()
        t0 = time.perf_counter()
        for x, y in self.loader:
            with torch.no_grad():
                t_logits = self.teacher(x)
            s_logits = self.student(x)
            soft = self.kl(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1)) * T * T
            loss = self.hard_w * F.cross_entropy(s_logits, y) + self.soft_w * soft
            self.student_opt.zero_grad()
            loss.backward()
            self.student_opt.step()
        return time.perf_counter() - t0


class Kdlab:
    """(b): the same protocol through kdlab's trainer; one call = one timed epoch (fit's train_seconds)."""

    def __init__(self, data_dir: Path) -> None:
        self.recipe = load_recipe("mnist-mlp", [f"dataset.data_dir='{data_dir}'", "teacher.train.epochs=1",
                                                "student.train.epochs=1", "dataset.download=false"])
        t0 = time.perf_counter()
        self.data = prepare_data(self.recipe)
        self.load_s = time.perf_counter() - t0
        self.teacher = build_role_model(self.recipe, "teacher", self.data)
        self.student = build_role_model(self.recipe, "student", self.data)
        self.signal = None
        self.cache_s = float("nan")

    def teacher_epoch(self) -> float:
        res = fit(self.teacher, self.data, self.recipe.teacher.train, CE(), progress=False)
        return res.history[0]["train_seconds"]

    def distill_epoch(self) -> float:
        if self.signal is None:  # once per run, like kdlab distill: not part of any epoch
            t0 = time.perf_counter()
            self.signal = PrecomputedTeacherLogits(FrozenTeacher(self.teacher).logits_for(self.data.train.x))
            self.cache_s = time.perf_counter() - t0
        res = fit(self.student, self.data, self.recipe.student.train, distill_method(self.recipe),
                  teacher_signal=self.signal, progress=False)
        return res.history[0]["train_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder with mnist/ (default: $KDLAB_DATA_DIR)")
    ap.add_argument("--epochs", type=int, default=2, help="teacher epochs timed on each side")
    ap.add_argument("--distill-epochs", type=int, default=5, help="distillation epochs timed on each side")
    args = ap.parse_args()
    data_dir = data_root(args.data_dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.epochs} teacher and "
          f"{args.distill_epochs} distillation epochs per side, (a) and (b) alternating", flush=True)
    root = torchvision_root(data_dir)
    try:
        a, b = Tutorial(root, 3.0, 0.5, 0.5), Kdlab(data_dir)
        # Alternate the sides epoch by epoch: this host's speed drifts by tens of percent over
        # minutes, so each ratio compares epochs run under the same conditions.
        teacher = [(a.teacher_epoch(), b.teacher_epoch()) for _ in range(args.epochs)]
        distill = [(a.distill_epoch(), b.distill_epoch()) for _ in range(args.distill_epochs)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    print("\n| per epoch, batch 128, 60,000 images | (a) tutorial s | (b) kdlab s | (a)/(b) | range of paired ratios |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, pairs in (("teacher epoch (784-1200-1200-10, dropout 0.5)", teacher),
                        ("distillation epoch (student 784-20-20-10, T=3)", distill)):
        ratios = [x / y for x, y in pairs]
        print(f"| {name} | {med(x for x, _ in pairs):.2f} | {med(y for _, y in pairs):.2f} | "
              f"{med(ratios):.1f}x | {min(ratios):.1f}-{max(ratios):.1f}x |")
    print("\nmedians over the epochs; (a)/(b) is the median of the paired per-epoch ratios.")
    print(f"kdlab one-time costs: decode IDX into tensors {b.load_s:.2f} s; teacher logits for the training set {b.cache_s:.2f} s")
    print(f"raw (a, b) epoch seconds: teacher {[(round(x, 2), round(y, 2)) for x, y in teacher]}; "
          f"distill {[(round(x, 2), round(y, 3)) for x, y in distill]}")


if __name__ == "__main__":
    main()
