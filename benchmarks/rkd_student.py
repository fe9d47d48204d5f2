"""Speed and accuracy: RKD's angle term on the student side, explicit differences against span coordinates.

The explicit form (the authors' ``RKdAngle``, kdlab's student side before) builds the N×N×D
differences ``e_i − e_j`` and takes N³·D multiply-adds forward and twice that backward. kdlab now
puts a side wider than the batch in float64 coordinates of its centred span first (N×N, a QR),
so the cosines cost N⁴. Both are timed in one process, old and new in turn (the order swapped
every pair), so a change of the machine's load hits both alike.

Speed, per (N, D): seconds of one forward + backward of

* ``angle``: the angle term with a fixed teacher target (the student side alone);
* ``rkd``: distance + angle terms with the mnist-cnn teacher's penultimate (256×7×7 = 12,544 wide),
  old = the previous functions (explicit student side, float32 span coordinates for the teacher),
  new = ``kdlab.methods.rkd``;
* ``--steps``: whole mnist-cnn RKD training steps (the student's penultimate is 16×7×7 = 784 wide),
  the previous and the current ``rkd_angle_loss`` on alternate batches.

Accuracy (``--accuracy``): the largest cosine error against float64 explicit differences of the
same float32 rows, for random rows and for rows with pairs ~1e-4 and ~1e-6 apart per coordinate:
explicit float32, span coordinates in float64 (kdlab) and in float32, and the Gram form
``<e_ij, e_kj> = G_ik − G_ij − G_jk + G_jj`` of the centred rows.

    OMP_NUM_THREADS=1 python benchmarks/rkd_student.py --pairs 30 --steps 32,128 --data-dir ../shared/data
    python benchmarks/rkd_student.py --accuracy
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

import kdlab.methods.rkd as rkd
from kdlab.methods.rkd import pdist, rkd_angle_loss, rkd_cosines, rkd_distance_loss, rkd_embedding

TEACHER_D = 256 * 7 * 7  # mnist-cnn teacher penultimate


# ------------------------------------------------------------------ the previous implementation
def explicit_cosines(e: Tensor) -> Tensor:
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


def old_teacher_cosines(e: Tensor) -> Tensor:
    """The previous teacher side: float32 coordinates from a QR's R, equal rows masked."""
    _, inverse = torch.unique(e, dim=0, return_inverse=True)
    same = inverse.unsqueeze(0) == inverse.unsqueeze(1)
    coords = torch.linalg.qr((e - e.mean(dim=0)).t(), mode="r").R.t()
    unit = F.normalize(coords.unsqueeze(0) - coords.unsqueeze(1), p=2, dim=2).masked_fill(same.unsqueeze(-1), 0.0)
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


def old_rkd(s: Tensor, t: Tensor) -> Tensor:
    with torch.no_grad():
        t_d = pdist(t)
        t_d = t_d / t_d[t_d > 0].mean()
        t_a = old_teacher_cosines(t) if t.size(1) > t.size(0) else explicit_cosines(t)
    d = pdist(s)
    d = d / d[d > 0].mean()
    return F.smooth_l1_loss(d, t_d) + F.smooth_l1_loss(explicit_cosines(s), t_a)


def new_rkd(s: Tensor, t: Tensor) -> Tensor:
    return rkd_distance_loss(s, t) + rkd_angle_loss(s, t)


def old_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """The previous ``rkd_angle_loss``."""
    s, t = rkd_embedding(student), rkd_embedding(teacher).detach().to(student.dtype)
    if s.size(0) < 3:
        return s.sum() * 0.0
    with torch.no_grad():
        t_a = old_teacher_cosines(t) if t.size(1) > t.size(0) else explicit_cosines(t)
    return F.smooth_l1_loss(explicit_cosines(s), t_a)


# ------------------------------------------------------------------ accuracy
def span32_cosines(e: Tensor) -> Tensor:
    """Span coordinates in float32 (the float32 projection's rounding, about eps·‖row‖)."""
    centred = e - e.mean(dim=0)
    coords = centred @ torch.linalg.qr(centred.t()).Q
    return explicit_cosines(coords)


def gram_cosines(e: Tensor) -> Tensor:
    """The Gram form on centred rows; degenerate triplets (i = j or k = j) set to 0 as in the reference."""
    n = e.size(0)
    c = e - e.mean(dim=0)
    g = c @ c.t()
    diag = g.diagonal()
    inner = g.unsqueeze(0) - g.unsqueeze(2) - g.unsqueeze(1) + diag.view(-1, 1, 1)  # [j, i, k]
    eye = torch.eye(n, dtype=torch.bool)
    norm = (diag.unsqueeze(0) + diag.unsqueeze(1) - 2 * g).clamp(min=0).sqrt().masked_fill(eye, 0).clamp(min=1e-12)
    cos = inner / norm.unsqueeze(2) / norm.unsqueeze(1)
    return cos.masked_fill(eye.unsqueeze(2) | eye.unsqueeze(1), 0).reshape(-1)


def accuracy(n: int, d: int) -> None:
    print(f"\nlargest cosine error vs float64 explicit differences of the same float32 rows (N={n}, D={d}, ReLU'd normal rows)")
    forms = {"explicit float32": explicit_cosines, "span float64 (kdlab)": rkd_cosines, "span float32": span32_cosines,
             "Gram, centred, float32": gram_cosines}
    print("| rows | " + " | ".join(forms) + " |")
    print("| --- |" + " ---: |" * len(forms))
    for delta in (None, 1e-4, 1e-6):
        g = torch.Generator().manual_seed(0)
        e = torch.randn(n, d, generator=g, dtype=torch.float64).relu()
        if delta is not None:
            for a in range(0, 8, 2):
                e[a + 1] = e[a] + delta * torch.randn(d, generator=g, dtype=torch.float64)
        e = e.float()
        truth = explicit_cosines(e.double())
        errs = [(fn(e).double() - truth).abs().max().item() for fn in forms.values()]
        label = "random" if delta is None else f"4 pairs ~{delta:g} apart"
        print(f"| {label} | " + " | ".join(f"{x:.1e}" for x in errs) + " |")


# ------------------------------------------------------------------ speed
def fwd_bwd(fn: Callable[[Tensor], Tensor], s: Tensor) -> float:
    x = s.detach().requires_grad_()
    t0 = time.perf_counter()
    fn(x).backward()
    return time.perf_counter() - t0


def cases(n: int, d: int) -> Dict[str, Tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]]:
    g = torch.Generator().manual_seed(n * 10000 + d)
    t_small = torch.randn(n, 64, generator=g).relu()
    target = explicit_cosines(t_small)
    t_wide = torch.randn(n, TEACHER_D, generator=g).relu()
    return {
        "angle": (lambda x: F.smooth_l1_loss(explicit_cosines(x), target), lambda x: F.smooth_l1_loss(rkd_cosines(x), target)),
        "rkd": (lambda x: old_rkd(x, t_wide.to(x.dtype)), lambda x: new_rkd(x, t_wide)),
    }


def training_steps(n: int, data_dir: str, pairs: int) -> str:
    """Seconds of whole mnist-cnn RKD training steps (student forward + backward + Adam, the teacher
    online; both models as initialised: their weights do not change the cost), old and new angle
    term in turn on consecutive batches of the first MNIST training images."""
    from kdlab.methods import build_method
    from kdlab.pipeline import build_role_model, prepare_data
    from kdlab.recipes import load_recipe
    from kdlab.teacher import FrozenTeacher
    from kdlab.train.build import build_trainer

    r = load_recipe("mnist-cnn", [f"dataset.data_dir={data_dir}", f"student.train.batch_size={n}"])
    data = prepare_data(r)
    data.train = data.train.subset(torch.arange(n * 2 * (pairs + 3)))
    teacher, student = build_role_model(r, "teacher", data), build_role_model(r, "student", data)
    trainer = build_trainer(student, build_method("rkd", r.distill, {}), data, r.student.train, seed=0,
                            teacher=FrozenTeacher(teacher))
    times: Dict[str, List[float]] = {"old": [], "new": []}
    items, _ = trainer.step.epoch(1)
    for i, item in enumerate(items):
        side = ("old", "new")[(i + i // 2) % 2]  # old new new old old new …
        rkd.rkd_angle_loss = old_angle_loss if side == "old" else rkd_angle_loss
        t0 = time.perf_counter()
        trainer.step(item)
        if i >= 6:
            times[side].append(time.perf_counter() - t0)
    rkd.rkd_angle_loss = rkd_angle_loss
    trainer.close()
    mo, mn = statistics.median(times["old"]), statistics.median(times["new"])
    return (f"| mnist-cnn RKD training step | {n} | 784 | {mo * 1e3:.2f} ms | {mn * 1e3:.2f} ms | {mo / mn:.1f}× | "
            f"({len(times['old'])} + {len(times['new'])} steps) |")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=30, help="timed old/new pairs per case (after 3 warm-up pairs)")
    p.add_argument("--sizes", default="32x784,128x784,32x2048,128x2048", help="comma-separated NxD")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accuracy", action="store_true", help="print the accuracy table instead of timing")
    p.add_argument("--steps", default="", help="comma-separated batch sizes: also time whole mnist-cnn RKD training steps")
    p.add_argument("--data-dir", default=os.environ.get("KDLAB_DATA_DIR", ""), help="MNIST for --steps")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.accuracy:
        accuracy(32, 784)
        return
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {torch.get_num_threads()} thread(s); "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"load before: {uptime()}")
    rows: List[str] = []
    for size in args.sizes.split(","):
        n, d = (int(v) for v in size.split("x"))
        s = torch.randn(n, d, generator=torch.Generator().manual_seed(1)).relu()
        for name, (old, new) in cases(n, d).items():
            a, b = old(s.double()).item(), new(s.double()).item()  # the same loss (float64 here)
            assert abs(a - b) <= 1e-9 * abs(a), (name, a, b)
            times: Dict[str, List[float]] = {"old": [], "new": []}
            for i in range(3 + args.pairs):
                order = (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old))
                for side, fn in order:
                    t = fwd_bwd(fn, s)
                    if i >= 3:
                        times[side].append(t)
            ratios = sorted(o / w for o, w in zip(times["old"], times["new"]))
            q = len(ratios) // 4
            mo, mn = statistics.median(times["old"]), statistics.median(times["new"])
            row = (f"| {name} | {n} | {d} | {mo * 1e3:.2f} ms | {mn * 1e3:.2f} ms | {statistics.median(ratios):.1f}× | "
                   f"{ratios[q]:.1f}–{ratios[-1 - q]:.1f}× |")
            print(row, flush=True)
            rows.append(row)
    for n in filter(None, args.steps.split(",")):
        row = training_steps(int(n), args.data_dir, args.pairs)
        print(row, flush=True)
        rows.append(row)
    print(f"load after: {uptime()}")
    print("\n| case | N | D | old median | new median | old/new median | old/new interquartile |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
