"""A short check of kdlab on a CUDA GPU: the parts no CPU-only test can reach (a few minutes on one GPU).

    python benchmarks/gpu_check.py                  # on a machine with CUDA; --out DIR keeps the run folders
    python benchmarks/gpu_check.py --device cpu --tiny   # the same checks on the CPU, tiny (a self-test)

On a machine without CUDA it prints one line (``no CUDA device: skipped ...``) and exits 0. On a GPU
it runs, each as one row of the table it prints:

* ``pytest``: the tests whose path depends on whether CUDA is present (``device: auto`` resolving to
  ``cuda``, ``kdlab env`` naming the device). The suite has no test that requires CUDA.
* one epoch of the ``crd-resnet56-resnet20`` pair (resnet56 → resnet20, CIFAR-100 shape, augmented)
  on synthetic CIFAR-100 files, through ``kdlab.pipeline.run_distill`` and the recipe keys
  ``student.train.precision`` / ``student.train.channels_last``: Hinton KD and FitNets
  (``layer2`` → ``layer2``), each in fp16 (autocast + GradScaler) and in bf16 with channels_last.
  The teacher is untrained (a throughput check, not an accuracy check; its BatchNorm statistics come
  from one pass over the data, so its activations have a sane scale) and runs on every batch.
* ``torchrun``: ``torchrun -m kdlab distill`` of the same pair with the teacher trained for 1 epoch
  into a fresh teacher cache. With 2 or more GPUs it launches 2 processes, one GPU each (NCCL for
  CUDA tensors); with one GPU it launches 1 process, which kdlab runs without a process group, so
  NCCL is exercised only on a machine with 2 GPUs (the row says which).
* ``onnx export``: ``kdlab export`` of the fp16 Hinton run's student, checked by onnxruntime against
  PyTorch (needs ``pip install 'kdlab[onnx]'``; missing packages are a failure, not a skip).

The table gives per check: pass/fail, ms per training step and images/s of its epoch (the first
epoch, warm-up included), the peak memory ``torch.cuda.max_memory_allocated`` (CUDA only) and a note
(for an epoch: the precision its ``run.json`` records, which must be the one asked for, and the losses).
The exit status is 1 when any check failed, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = "crd-resnet56-resnet20"
FITNETS_PAIRS = "distill.fitnets.pairs={layer2: layer2}"
# (name, method, precision on CUDA, channels_last); on the CPU fp16 becomes fp32 (fp16 needs CUDA)
DISTILL_CHECKS = (("hinton-fp16", "hinton", "fp16", False), ("hinton-bf16-cl", "hinton", "bf16", True),
                  ("fitnets-fp16", "fitnets", "fp16", False), ("fitnets-bf16-cl", "fitnets", "bf16", True))
# The tests whose path changes when CUDA is present (the suite has none that requires CUDA):
# device: auto resolving to cuda (data placed there), and `kdlab env` naming the CUDA device.
CHECK_NAMES = ("pytest", *(name for name, *_ in DISTILL_CHECKS), "torchrun", "export")  # --checks, in run order
CUDA_TESTS = ("tests/test_pipeline.py::test_device_setting_resolves_and_refuses_what_is_not_there",
              "tests/train/test_precision.py::test_kdlab_env_names_the_cpu_bf16_support")


@dataclass
class Sizes:
    """How much synthetic data one check trains on (the full run: 80 steps of the recipe's batch 64)."""

    n_train: int = 5120
    n_test: int = 1000
    batch: int = 64


TINY = Sizes(n_train=8, n_test=4, batch=4)


@dataclass
class Result:
    name: str
    ok: bool
    note: str = ""
    step_ms: Optional[float] = None
    images_per_s: Optional[float] = None
    max_mem_mb: Optional[float] = None


def format_table(results: Sequence[Result]) -> str:
    """One Markdown table: a row per check."""
    def num(v: Optional[float], fmt: str) -> str:
        return "-" if v is None or not math.isfinite(v) else format(v, fmt)

    rows = ["| check | result | ms/step | images/s | max memory MB | note |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in results:
        note = " ".join(r.note.split()).replace("|", "/")
        rows.append(f"| {r.name} | {'pass' if r.ok else 'FAIL'} | {num(r.step_ms, '.1f')} | {num(r.images_per_s, '.0f')} | "
                    f"{num(r.max_mem_mb, '.0f')} | {note} |")
    return "\n".join(rows)


def exit_code(results: Sequence[Result]) -> int:
    """0 when every check passed (and there was at least one), else 1."""
    return 0 if results and all(r.ok for r in results) else 1


def write_synthetic_cifar100(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random CIFAR-100 files in the official python-pickle layout (``root/cifar-100-python/``)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8), "fine_labels": [i % 100 for i in range(n)],
                 "coarse_labels": [i % 20 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class_{i}" for i in range(100)]}, protocol=2))
    return root


def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def calibrate_batchnorm(model: "torch.nn.Module", x: "torch.Tensor") -> None:
    """BatchNorm statistics of an untrained model from one pass over ``x`` (no gradient, weights unchanged).

    At initialisation (running mean 0, variance 1) an untrained resnet56's activations grow with depth to
    ~1e4 on normalised inputs, near fp16's limit of 65504, so an fp16 check could fail for that reason alone.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass gives the batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    for m in norms:
        m.momentum = 0.1  # torch's default, what the models are built with
    model.eval()


def distill_epoch(name: str, method: str, precision: str, channels_last: bool, device: str, data_root: Path, out: Path,
                  sizes: Sizes) -> Result:
    """One epoch of the recipe's pair with ``method`` at ``precision``, through kdlab's own pipeline."""
    import torch

    from kdlab.pipeline import build_role_model, prepare_data, run_distill
    from kdlab.recipes import load_recipe

    if not _cuda(device) and precision == "fp16":
        precision, name = "fp32", name.replace("fp16", "fp32")  # fp16 needs CUDA; the CPU self-test runs fp32
    overrides = [f"device={device}", f"dataset.data_dir={data_root}", "dataset.download=false", f"distill.method={method}",
                 FITNETS_PAIRS, "student.train.epochs=1", f"student.train.batch_size={sizes.batch}",
                 f"student.train.eval_batch_size={max(sizes.batch, 256 if _cuda(device) else sizes.batch)}",
                 f"student.train.precision={precision}", f"student.train.channels_last={str(channels_last).lower()}",
                 "student.train.tensorboard=false"]
    recipe = load_recipe(RECIPE, overrides)
    data = prepare_data(recipe)
    teacher = build_role_model(recipe, "teacher", data)  # untrained: speed and numerics, not accuracy
    calibrate_batchnorm(teacher, data.train.x[:256])
    if _cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = run_distill(recipe, teacher, data, out=out / name, progress=False, teacher_online=True, log=lambda _m: None)
    (record,) = result.fit.history
    steps = math.ceil(sizes.n_train / sizes.batch)
    seconds = float(record["train_seconds"])
    mem = torch.cuda.max_memory_allocated() / 2**20 if _cuda(device) else None
    finite = all(math.isfinite(float(v)) for k, v in record.items() if k.startswith("loss_"))
    terms = ", ".join(f"{k[5:]} {float(v):.3g}" for k, v in record.items() if k.startswith("loss_"))
    # what the run says it computed in, against what was asked
    info = json.loads((out / name / "run.json").read_text())
    ran = info["precision"]
    as_asked = (ran["autocast"] == precision and ran["grad_scaler"] == (precision == "fp16")
                and info["channels_last"] == channels_last and ran["device"] == torch.device(device).type)
    said = f"autocast {ran['autocast']}, GradScaler {'on' if ran['grad_scaler'] else 'off'}" + \
        (", channels_last" if info["channels_last"] else "")
    if not as_asked:
        said += f" (asked {precision}{', channels_last' if channels_last else ''} on {device})"
    return Result(name, finite and as_asked, f"{said}; losses {terms}", 1000 * seconds / steps, sizes.n_train / seconds, mem)


def run_pytest(device: str) -> Result:
    """The tests whose path depends on CUDA being there, in a child process."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    last = (proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or [""])[-1]
    return Result("pytest", proc.returncode == 0, f"{len(CUDA_TESTS)} tests: {last}")


def torchrun_check(device: str, data_root: Path, out: Path, sizes: Sizes) -> Result:
    """``torchrun -m kdlab distill``: 2 processes with 2+ GPUs (NCCL), else 1 (no process group)."""
    import torch

    nproc = 2 if _cuda(device) and torch.cuda.device_count() >= 2 else 1
    run = out / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "kdlab", "distill", RECIPE, "--device", "cuda" if _cuda(device) else "cpu", "--data-dir", str(data_root),
           "--no-download", "--epochs", "1", "--batch-size", str(sizes.batch), "--teacher-epochs", "1",
           "--teacher-cache", str(out / "teacher-cache"), "--out", str(run), "--no-progress", "--no-tensorboard",
           "--set", "teacher.train.tensorboard=false", "--set", f"teacher.train.batch_size={sizes.batch}"]
    env = {**os.environ, "NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    wall = time.perf_counter() - t0
    ok = proc.returncode == 0 and (run / "best.pt").is_file()
    if not ok:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [""])[-1]
        return Result(f"torchrun x{nproc}", False, f"exit {proc.returncode}: {tail}")
    recorded = json.loads((run / "run.json").read_text()).get("processes")
    if recorded != nproc:
        return Result(f"torchrun x{nproc}", False, f"run.json records {recorded} processes, launched {nproc}")
    nccl = "NCCL INFO" in proc.stdout + proc.stderr
    if nproc > 1 and not nccl:
        return Result(f"torchrun x{nproc}", False, "finished, but NCCL printed nothing (NCCL_DEBUG=INFO): CUDA tensors did not go through NCCL")
    how = ("NCCL used" if nproc > 1 else
           "1 process: no process group" + (", so NCCL is not exercised (it needs 2 GPUs)" if _cuda(device) else ""))
    return Result(f"torchrun x{nproc}", True, f"teacher 1 epoch + distill 1 epoch in {wall:.0f} s wall; {how}")


def export_check(out: Path) -> Result:
    """``kdlab export`` of the first distill run's student to ONNX (onnxruntime checks it against PyTorch)."""
    from kdlab.cli import main as kdlab_main

    runs = [out / n for name, *_ in DISTILL_CHECKS for n in (name, name.replace("fp16", "fp32"))]  # the CPU's names too
    run = next((r for r in runs if (r / "best.pt").is_file()), None)
    if run is None:
        return Result("onnx export", False, "no distill run finished, nothing to export")
    target = out / "student.onnx"
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        code = kdlab_main(["export", str(run), "--onnx", str(target), "--force"])
    said = (errors.getvalue().strip().splitlines() or printed.getvalue().strip().splitlines() or [""])[-1]
    return Result("onnx export", code == 0 and target.is_file(), f"{run.name}: {said}")


def _guard(name: str, fn: Callable[[], Result]) -> Result:
    """A check that raises is a failed row with the exception's last line, not a crash of the script."""
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a row; Ctrl-C still stops the script
        if isinstance(exc, KeyboardInterrupt):
            raise
        line = (traceback.format_exception_only(type(exc), exc)[-1]).strip()
        return Result(name, False, line)


def run_checks(device: str, out: Path, sizes: Sizes, only: Optional[Sequence[str]] = None) -> List[Result]:
    data_root = write_synthetic_cifar100(out / "data", sizes.n_train, sizes.n_test)
    plan: Dict[str, Callable[[], Result]] = {"pytest": lambda: run_pytest(device)}
    for name, method, precision, cl in DISTILL_CHECKS:
        plan[name] = (lambda n=name, m=method, p=precision, c=cl: distill_epoch(n, m, p, c, device, data_root, out, sizes))
    plan["torchrun"] = lambda: torchrun_check(device, data_root, out, sizes)
    plan["export"] = lambda: export_check(out)
    assert tuple(plan) == CHECK_NAMES
    unknown = sorted(set(only or ()) - set(plan))
    if unknown:
        raise SystemExit(f"gpu_check: unknown check(s) {', '.join(unknown)}; choose from {', '.join(plan)}")
    return [_guard(name, fn) for name, fn in plan.items() if not only or name in only]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a self-test of the checks")
    p.add_argument("--tiny", action="store_true", help="8 images, batch 4: seconds on a CPU (numbers meaningless)")
    p.add_argument("--out", help="keep the synthetic data and run folders here (default: a temporary folder)")
    p.add_argument("--checks", help=f"comma-separated subset: {', '.join(CHECK_NAMES)} (default: all)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    if _cuda(args.device) and not torch.cuda.is_available():
        print("no CUDA device: skipped (benchmarks/gpu_check.py needs a GPU; `--device cpu --tiny` runs its self-test)")
        return 0
    sizes = TINY if args.tiny else Sizes()
    only = [c.strip() for c in args.checks.split(",") if c.strip()] if args.checks else None
    with contextlib.ExitStack() as stack:
        out = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kdlab-gpu-check-")))
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        results = run_checks(args.device, out, sizes, only)
        where = torch.cuda.get_device_name(torch.device(args.device)) if _cuda(args.device) else "cpu"
        print(f"kdlab gpu check on {where}, torch {torch.__version__}, {time.perf_counter() - t0:.0f} s")
        print(format_table(results))
    return exit_code(results)


if __name__ == "__main__":
    raise SystemExit(main())
