"""Speed, end to end: the cold 3-coding study in kdlab vs the same protocol written the tutorial way.

(b) kdlab: ``kdlab compare mnist-mlp --losses hinton,softmax-input,extra-T --seeds 1`` in a fresh
    process with an empty teacher cache (teacher trained from scratch): the wall time of the whole
    command, imports, data decoding, 20 teacher epochs, 4 students x 50 epochs (scratch + 3
    codings), reports and plots included.
(a) tutorial: the same protocol as tutorials write it (see ``speed_mnist_mlp.py``): torchvision
    MNIST through a DataLoader with per-sample ToTensor/Normalize, the teacher trained 20 epochs,
    then a scratch student and one student per coding, 50 epochs each, the teacher forwarded on
    every distillation step; test accuracy once at the end of each run (kdlab evaluates every
    epoch, so this favours (a)).

Every teacher epoch of (a) is timed (subnormal weights slow it down as training goes on). A
student epoch of (a) costs the same at every epoch (the teacher is fixed, the student tiny), so
with ``--timed-epochs N`` (default 10) each student trains N epochs and its time is scaled to 50
(the spread of its per-epoch times is printed); ``--timed-epochs 50`` times everything.
(b) runs first, then (a), back to back, in this one invocation:

    pip install torch==2.14.1 torchvision==0.29.1 -e ".[vision]"
    python benchmarks/cold_study.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_mnist_mlp import Tutorial, torchvision_root, tutorial_mlp  # noqa: E402

from kdlab.data.mnist_family import data_root  # noqa: E402
from kdlab.device import cpu_model  # noqa: E402

CODINGS = {  # the soft term of each coding as a tutorial writes it (kdlab's closed forms reproduce these)
    "hinton": lambda kl, s, t, T: kl(F.log_softmax(s / T, 1), F.softmax(t / T, 1)) * T * T,
    "softmax-input": lambda kl, s, t, T: kl(F.softmax(s / T, 1), F.softmax(t / T, 1)) * T * T,
    "extra-T": lambda kl, s, t, T: kl(F.log_softmax(s / T, 1), F.softmax(t / T, 1)) * T * T * T,
}


def kdlab_cold(data_dir: Path, workdir: Path, command: list) -> float:
    """Wall seconds of one cold ``kdlab compare`` (an empty teacher cache) in a fresh process."""
    env = {**os.environ, "KDLAB_DATA_DIR": str(data_dir), "KDLAB_TEACHER_CACHE": str(workdir / "cache")}
    t0 = time.perf_counter()
    subprocess.run([*command, "compare", "mnist-mlp", "--losses", "hinton,softmax-input,extra-T", "--seeds", "1",
                    "--out", str(workdir / "study"), "--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def tutorial_accuracy(model, root: Path) -> float:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    test = torch.utils.data.DataLoader(datasets.MNIST(str(root), train=False, transform=tf), batch_size=1000)
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test)
    return correct / 10000


def tutorial_cold(root: Path, teacher_epochs: int, student_epochs: int, timed: int) -> dict:
    """(a): seconds of the teacher's epochs (all timed) and of each student's (``timed`` of them, scaled)."""
    t0 = time.perf_counter()
    tut = Tutorial(root, 3.0, 0.5, 0.5)  # the torchvision dataset and loader, the teacher and its optimizer
    setup = time.perf_counter() - t0
    teacher = [tut.teacher_epoch() for _ in range(teacher_epochs)]
    t0 = time.perf_counter()
    teacher_acc = tutorial_accuracy(tut.teacher, root)
    evals = time.perf_counter() - t0
    students = {}
    for name in ["scratch", *CODINGS]:
        torch.manual_seed(1)  # every student starts from the same weights, as in kdlab compare
        tut.student = tutorial_mlp([20, 20], 0.0)
        tut.student_opt = torch.optim.Adam(tut.student.parameters(), lr=1e-3)
        epochs = [_student_epoch(tut, name) for _ in range(timed)]
        t0 = time.perf_counter()
        acc = tutorial_accuracy(tut.student, root)
        evals += time.perf_counter() - t0
        students[name] = {"epochs": epochs, "scaled": sum(epochs) * student_epochs / timed, "acc": acc}
    total = setup + sum(teacher) + evals + sum(s["scaled"] for s in students.values())
    return {"setup": setup, "teacher": teacher, "teacher_acc": teacher_acc, "students": students, "evals": evals,
            "total": total}


def _student_epoch(tut: Tutorial, name: str) -> float:
    """One tutorial student epoch: cross-entropy only (scratch) or hard + soft with the named coding."""
    T, student, opt = tut.T, tut.student, tut.student_opt
    tut.teacher.eval()
    student.train()
    t0 = time.perf_counter()
    for x, y in tut.loader:
        if name == "scratch":
            loss = F.cross_entropy(student(x), y)
        else:
            with torch.no_grad():
                t_logits = tut.teacher(x)
            s_logits = student(x)
            loss = tut.hard_w * F.cross_entropy(s_logits, y) + tut.soft_w * CODINGS[name](tut.kl, s_logits, t_logits, T)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder with mnist/ (default: $KDLAB_DATA_DIR)")
    ap.add_argument("--timed-epochs", type=int, default=10, help="student epochs of (a) actually run, of 50")
    ap.add_argument("--kdlab", default=f"{sys.executable} -m kdlab", help="the kdlab command to time (b) with")
    ap.add_argument("--skip-tutorial", action="store_true", help="time (b) only")
    args = ap.parse_args()
    data_dir = data_root(args.data_dir).resolve()
    print(f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    work = Path(tempfile.mkdtemp(prefix="kdlab-cold-"))
    try:
        b = kdlab_cold(data_dir, work, args.kdlab.split())
        print(f"(b) kdlab cold compare: {b:.1f} s", flush=True)
        if args.skip_tutorial:
            return
        root = torchvision_root(data_dir)
        a = tutorial_cold(root, 20, 50, args.timed_epochs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"(a) tutorial: {a['total']:.0f} s = setup {a['setup']:.1f} + teacher {sum(a['teacher']):.1f} "
          f"(epochs {min(a['teacher']):.1f}-{max(a['teacher']):.1f} s, test acc {100 * a['teacher_acc']:.2f}%) "
          f"+ students {sum(s['scaled'] for s in a['students'].values()):.0f} + evaluation {a['evals']:.1f}")
    for name, s in a["students"].items():
        ep = s["epochs"]
        print(f"    {name}: {len(ep)} epochs timed, median {statistics.median(ep):.2f} s (range {min(ep):.2f}-{max(ep):.2f}), "
              f"50 epochs = {s['scaled']:.0f} s; test acc after {len(ep)} epochs {100 * s['acc']:.2f}%")
    print(f"(a)/(b) = {a['total'] / b:.1f}x end to end")


if __name__ == "__main__":
    main()
