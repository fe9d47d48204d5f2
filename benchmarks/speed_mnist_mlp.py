"""Speed: the mnist-mlp protocol written the usual tutorial way vs kdlab, in one process.

(a) tutorial: torchvision.datasets.MNIST + DataLoader(batch 128, shuffle) with per-sample
    ToTensor/Normalize, nn.Dropout, torch.optim.Adam defaults, and for distillation a teacher
    forward (eval, no_grad) on every step plus KLDivLoss(batchmean) on log_softmax/softmax × T².
(b) kdlab: the same models, optimizer and loss from the mnist-mlp recipe via kdlab's trainer
    (in-memory tensors, index_select batching, cached teacher logits, fused Adam, fast dropout).

Prints seconds per epoch for teacher training and for distillation and the ratio (a)/(b).

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

from kdlab.config import load_recipe
from kdlab.data.mnist_family import MNIST, data_root, locate
from kdlab.pipeline import build_role_model, distill_objective, prepare_data
from kdlab.losses import DistillationObjective
from kdlab.teacher import CachedTeacherLogits, FrozenTeacher
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


def tutorial_epochs(root: Path, epochs: int, T: float, hard_w: float, soft_w: float):
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST(str(root), train=True, download=False, transform=tf)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)
    torch.manual_seed(0)
    teacher = tutorial_mlp([1200, 1200], 0.5)
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    teacher_times = []
    for _ in range(epochs):
        teacher.train()
        t0 = time.perf_counter()
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(teacher(x), y)
            loss.backward()
            opt.step()
        teacher_times.append(time.perf_counter() - t0)
    student = tutorial_mlp([20, 20], 0.0)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    kl = nn.KLDivLoss(reduction="batchmean")
    distill_times = []
    for _ in range(epochs):
        teacher.eval()
        student.train()
        t0 = time.perf_counter()
        for x, y in loader:
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            soft = kl(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1)) * T * T
            loss = hard_w * F.cross_entropy(s_logits, y) + soft_w * soft
            opt.zero_grad()
            loss.backward()
            opt.step()
        distill_times.append(time.perf_counter() - t0)
    return teacher_times, distill_times


def kdlab_epochs(data_dir: Path, epochs: int, distill_epochs: int):
    recipe = load_recipe("mnist-mlp", [f"dataset.data_dir='{data_dir}'", f"teacher.train.epochs={epochs}",
                                       f"student.train.epochs={distill_epochs}", "dataset.download=false"])
    t0 = time.perf_counter()
    data = prepare_data(recipe)
    load_s = time.perf_counter() - t0
    teacher = build_role_model(recipe, "teacher", data)
    res = fit(teacher, data, recipe.teacher.train, DistillationObjective(), progress=False)
    teacher_times = [h["train_seconds"] for h in res.history]
    frozen = FrozenTeacher(teacher)
    t0 = time.perf_counter()
    signal = CachedTeacherLogits(frozen, data.train.x)
    cache_s = time.perf_counter() - t0
    student = build_role_model(recipe, "student", data)
    res = fit(student, data, recipe.student.train, distill_objective(recipe), teacher_signal=signal, progress=False)
    distill_times = [h["train_seconds"] for h in res.history]
    return teacher_times, distill_times, load_s, cache_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder with mnist/ (default: $KDLAB_DATA_DIR)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs timed per measurement (median is reported)")
    ap.add_argument("--kdlab-distill-epochs", type=int, default=5,
                    help="kdlab distillation epochs timed (they are cheap; the median damps noise)")
    args = ap.parse_args()
    data_dir = data_root(args.data_dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, epochs per measurement: {args.epochs} "
          f"(kdlab distillation: {max(args.epochs, args.kdlab_distill_epochs)})", flush=True)
    root = torchvision_root(data_dir)
    try:
        a_teacher, a_distill = tutorial_epochs(root, args.epochs, 3.0, 0.5, 0.5)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    b_teacher, b_distill, load_s, cache_s = kdlab_epochs(data_dir, args.epochs, max(args.epochs, args.kdlab_distill_epochs))
    med = statistics.median
    rows = [("teacher epoch (784-1200-1200-10, dropout 0.5)", med(a_teacher), med(b_teacher)),
            ("distillation epoch (student 784-20-20-10, T=3)", med(a_distill), med(b_distill))]
    print("\n| per epoch, batch 128, 60,000 images | (a) tutorial s | (b) kdlab s | (a)/(b) |")
    print("| --- | ---: | ---: | ---: |")
    for name, a, b in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.1f}x |")
    print(f"\nmedian seconds per epoch. kdlab one-time costs: decode IDX into tensors {load_s:.2f} s; teacher logits for the training set {cache_s:.2f} s")
    print(f"raw epoch times: tutorial teacher {a_teacher}, distill {a_distill}; kdlab teacher {b_teacher}, distill {b_distill}")


if __name__ == "__main__":
    main()
