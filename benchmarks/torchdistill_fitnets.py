"""Speed: kdlab's FitNets from the stored teacher signal vs torchdistill 1.1.5 with its teacher online, on mnist-cnn.

The protocol on both sides: the ``mnist-cnn`` pair (teacher ``cnn`` [64, 256], student ``cnn`` [8, 16]),
the hint features.5 -> features.5 through a 1x1 conv (no bias) + BatchNorm2d adapter, loss
0.3 CE + 0.7 KD at T = 7 + 100 MSE(hint), Adam 1e-4, batch 32, one teacher weights file (the
recipe's teacher trained by ``kdlab.pipeline.run_teacher`` for one epoch on the first
``--teacher-images`` images, saved as a kdlab checkpoint; both sides load that file).

* kdlab: ``kdlab.pipeline.run_distill`` on the ``mnist-cnn`` recipe with ``--set``-style overrides,
  training from the stored teacher signal (the default); also with ``teacher_online=True``.
* torchdistill: a ``DistillationBox`` (``get_distillation_box``) built from a config dict written as
  its YAML configs are: ``WeightedSumLoss`` of its ``KDLoss`` (alpha 0.3, beta 0.7) and ``MSELoss``
  through ``SimpleLossWrapper`` (the FitNets hint, as in its ``fitnet`` sample configs), the adapter
  as its ``Connector4DAB`` student wrapper (Conv2d + BatchNorm2d on ``student_model.features.5``),
  the features from its forward hooks, a torchvision ``MNIST`` dataset with ``ToTensor`` + ``Normalize``
  through a torch ``DataLoader`` (``RandomSampler``, ``num_workers=0``: one core), and its own
  forward/backward/step (``forward_process``, ``post_forward_process``); the teacher runs on every batch.

1. Loss check: the first 32 training images as one batch, both sides with kdlab's initial student
   and adapter weights (taken at the start of kdlab's run): total, CE, KD and hint on each side.
2. Timing: whole epochs over the first ``--images`` training images, kdlab (store), torchdistill and
   kdlab (teacher online) alternating in this one process for ``--rounds`` rounds (the order
   reversed every other round); wall and CPU seconds (``time.process_time``) of the training
   steps only, scaled to 60,000 images. The store is computed once before timing; its one-time
   cost is reported apart (scaled the same way) and amortised over 1 and 10 epochs.

torchdistill is not a kdlab dependency: ``pip install --no-deps torchdistill==1.1.5``.

    OMP_NUM_THREADS=1 python benchmarks/torchdistill_fitnets.py --data-dir /work/shared/data \\
        --json benchmarks/torchdistill_fitnets.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from kdlab.models import build_model
from kdlab.pipeline import load_teacher, prepare_data, run_distill, run_teacher
from kdlab.recipes import load_recipe
from kdlab.train.callbacks import Callback
from kdlab.device import cpu_model

FULL = 60000
T, HARD, SOFT, HINT = 7.0, 0.3, 0.7, 100.0
FITNETS = ["distill.method=fitnets", "distill.fitnets.pairs={features.5: features.5}", f"distill.fitnets.weight={HINT}",
           "student.train.epochs=1"]


class StepClock(Callback):
    """Wall and CPU seconds of a run's training steps (not its set-up or evaluation)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def wrap_steps(self, trainer: Any, steps: Any, total: Optional[int]) -> Any:
        w0, c0 = time.perf_counter(), time.process_time()
        yield from steps
        self.wall += time.perf_counter() - w0
        self.cpu += time.process_time() - c0


class ProfileSteps(Callback):
    """torch.profiler over a run's training steps only."""

    def wrap_steps(self, trainer: Any, steps: Any, total: Optional[int]) -> Any:
        from torch.profiler import ProfilerActivity, profile  # only for --profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as self.prof:
            yield from steps


def breakdown(prof: Any) -> Dict[str, float]:
    """Self CPU milliseconds of a profile by part of the step, told apart by the ops' input shapes."""
    parts = {"hint: 1x1 conv, BatchNorm, MSE, teacher feature (256x7x7)": 0.0, "optimizer step": 0.0,
             "student network, losses, store read, autograd": 0.0}
    names = list(parts)
    for e in prof.key_averages(group_by_input_shape=True):
        shapes = str(e.input_shapes)
        part = names[0] if ("256, 7, 7" in shapes or "256, 16, 1, 1" in shapes) else (
            names[1] if "Optimizer" in e.key or "adam" in e.key else names[2])
        parts[part] += e.self_cpu_time_total / 1000.0
    return parts


class InitialWeights(Callback):
    """The student's and the method's (adapters') weights when training starts."""

    def on_fit_start(self, trainer: Any) -> None:
        self.student = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        self.method = {k: v.detach().clone() for k, v in trainer.method.state_dict().items() if isinstance(v, torch.Tensor)}


def mnist_raw(src: Path, dst: Path) -> Path:
    """torchvision's ``MNIST`` reads uncompressed IDX files from ``<root>/MNIST/raw``: unpack the shared .gz there."""
    raw = dst / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in (src / "mnist").glob("*-ubyte.gz"):
        with gzip.open(gz, "rb") as f, open(raw / gz.name[:-3], "wb") as g:
            shutil.copyfileobj(f, g)
    return dst


def td_box(teacher: nn.Module, student: nn.Module, dataset: Any) -> Any:
    """torchdistill's FitNets DistillationBox, configured as its YAML sample configs are."""
    from torchdistill.core.distillation import get_distillation_box  # optional: torchdistill is not a kdlab dependency

    io = {"student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".", "teacher_module_io": "output"}
    config = {
        "num_epochs": 1,
        "train_data_loader": {"dataset_id": "mnist/train", "sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": 32, "num_workers": 0, "drop_last": False}},
        "teacher": {"forward_proc": "forward_batch_only", "forward_hook": {"input": [], "output": ["features.5"]},
                    "requires_grad": False},
        "student": {
            "auxiliary_model_wrapper": {"key": "Connector4DAB", "kwargs": {"connectors": {"connector": {
                "conv2d_kwargs": {"in_channels": 16, "out_channels": 256, "kernel_size": 1, "bias": False},
                "bn2d_kwargs": {"num_features": 256}, "io": "output", "path": "student_model.features.5"}}}},
            "forward_hook": {"input": [], "output": ["student_model.features.5", "connector_dict.connector"]},
            "forward_proc": "forward_batch_only", "requires_grad": True},
        "optimizer": {"key": "Adam", "kwargs": {"lr": 1e-4}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {
            "kd": {"criterion": {"key": "KDLoss", "kwargs": {**io, "temperature": T, "alpha": HARD, "beta": SOFT,
                                                              "reduction": "batchmean"}}, "weight": 1.0},
            "hint": {"criterion": {"key": "MSELoss", "kwargs": {"reduction": "mean"}},
                     "criterion_wrapper": {"key": "SimpleLossWrapper", "kwargs": {
                         "input": {"is_from_teacher": False, "module_path": "connector_dict.connector", "io": "output"},
                         "target": {"is_from_teacher": True, "module_path": "features.5", "io": "output"}}},
                     "weight": HINT}}}},
    }
    return get_distillation_box(teacher, student, {"mnist/train": dataset}, config, torch.device("cpu"), None, False, 1)


def td_epoch(box: Any, epoch: int) -> Dict[str, float]:
    """One torchdistill epoch as its example training loop runs it; wall and CPU seconds of the steps."""
    box.pre_epoch_process(epoch=epoch)
    w0, c0, steps = time.perf_counter(), time.process_time(), 0
    for sample_batch, targets, supp_dict in box.train_data_loader:
        loss = box.forward_process(sample_batch, targets, supp_dict)
        box.post_forward_process(loss)
        loss.item()  # its metric logger reads the loss every step
        steps += 1
    out = {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0, "steps": steps}
    box.post_epoch_process()
    return out


def adapter_weights(method_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """kdlab's adapter (``proj.0`` conv, ``proj.1`` BatchNorm) as ``Connector4DAB``'s ``Sequential`` keys."""
    out = {}
    for k, v in method_state.items():
        if ".proj." in k:
            out[k.split(".proj.", 1)[1]] = v
    return out


def loss_check(recipe_base: List[str], data: Any, frozen: Any, teacher_file: Path, tv_train: Any, cache: Path) -> Dict[str, Any]:
    n = 32
    full = data.train
    data.train = full.subset(torch.arange(n))
    teacher = build_model("cnn", data.in_shape, data.num_classes, {"channels": [64, 256]})
    teacher.load_state_dict(torch.load(teacher_file, map_location="cpu", weights_only=True)["state_dict"])
    rows: Dict[str, Any] = {}
    for name, extra, online in (("store, fp32 features", ["teacher_signals.dtype=float32", "teacher_signals.precision=fp32"], False),
                                ("store, default (bf16 features)", [], False),
                                ("teacher online", [], True)):
        init = InitialWeights()
        res = run_distill(load_recipe("mnist-cnn", recipe_base + FITNETS + extra), frozen, data=data, out=False, progress=False,
                          teacher_cache=cache, teacher_online=online, callbacks=[init])
        h = res.fit.history[0]
        kd = {"total": h["loss_total"], "ce": h["loss_hard"], "kd": h["loss_soft"], "hint": h["loss_hint"]}
        # torchdistill on the same 32 images (its DataLoader shuffles them: one batch) from this run's initial weights
        student = build_model("cnn", data.in_shape, data.num_classes, {"channels": [8, 16]})
        student.load_state_dict(init.student)
        box = td_box(teacher, student, torch.utils.data.Subset(tv_train, range(n)))
        box.student_model.connector_dict["connector"].load_state_dict(adapter_weights(init.method))
        td, xb = td_losses(box)
        box.clean_modules()  # its hooks off the shared teacher
        rel = {k: abs(kd[k] - td[k]) / max(abs(td[k]), 1e-30) for k in kd}
        rows[name] = {"kdlab": kd, "torchdistill": td, "relative difference": rel, "teacher source": res.fit.extra.get("teacher_source")}
    data.train = full
    same_images = float((data.train.x[:n].sort(0).values - xb.sort(0).values).abs().max())  # same set of images
    return {"runs": rows, "input max abs diff": same_images}


def td_losses(box: Any) -> Any:
    """torchdistill's total loss on its one batch and its parts, read from the io dicts its criterion receives."""
    seen: Dict[str, Any] = {}
    box.criterion.register_forward_pre_hook(lambda mod, args: seen.update(io=args[0], y=args[2]))
    box.pre_epoch_process(epoch=0)
    (xb, yb, supp), = list(box.train_data_loader)
    with torch.no_grad():
        total = box.forward_process(xb, yb, supp)
        s_io, t_io, y = seen["io"]["student"], seen["io"]["teacher"], seen["y"]
        kd_loss, _ = box.criterion.term_dict["kd"]
        hint, _ = box.criterion.term_dict["hint"]
        logits_s, logits_t = s_io["."]["output"], t_io["."]["output"]
        soft = nn.KLDivLoss.forward(kd_loss, torch.log_softmax(logits_s / T, 1), torch.softmax(logits_t / T, 1)) * T * T
        td = {"total": float(total), "ce": float(kd_loss.cross_entropy_loss(logits_s, y)), "kd": float(soft),
              "hint": float(hint(s_io, t_io, y))}
    return td, xb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder with mnist/ (default: $KDLAB_DATA_DIR)")
    ap.add_argument("--images", type=int, default=6400, help="training images per timed epoch (times are scaled to 60,000)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (one epoch per side per round)")
    ap.add_argument("--teacher-images", type=int, default=3200, help="images the teacher trains on for one epoch")
    ap.add_argument("--no-online", action="store_true", help="skip kdlab with its teacher online")
    ap.add_argument("--profile", type=int, default=640, metavar="N", help="also profile a kdlab store epoch of N images")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    try:
        import torchdistill
    except ImportError:
        sys.exit("torchdistill is not installed (it is not a kdlab dependency): pip install --no-deps torchdistill==1.1.5")
    import torchvision
    from torchvision import transforms

    data_dir = args.data_dir or os.environ.get("KDLAB_DATA_DIR")
    if not data_dir:
        sys.exit("give --data-dir (a folder with mnist/) or set KDLAB_DATA_DIR")
    base = [f"dataset.data_dir={json.dumps(str(data_dir))}"]
    work = Path(tempfile.mkdtemp(prefix="kdlab-td-bench-"))
    cache = work / "cache"
    facts = {"host": cpu_model(), "load_start": os.getloadavg(), "torch": torch.__version__,
             "torchdistill": torchdistill.__version__, "torchvision": torchvision.__version__, "threads": torch.get_num_threads(),
             "images": args.images, "rounds": args.rounds, "python": platform.python_version()}
    print(json.dumps(facts), flush=True)

    data = prepare_data(load_recipe("mnist-cnn", base))
    full = data.train
    data.train = full.subset(torch.arange(args.teacher_images))
    t0 = time.perf_counter()
    teacher_run = run_teacher(load_recipe("mnist-cnn", base + ["teacher.train.epochs=1"]), data=data, out=work / "teacher", progress=False)
    teacher_file = teacher_run.path / "last.pt"
    data.train = full
    frozen = load_teacher(teacher_file, data)  # once: run_distill given a path would re-measure its test accuracy each run
    facts["teacher"] = {"file": "run_teacher, 1 epoch on the first %d images" % args.teacher_images,
                        "test_acc": teacher_run.fit.history[-1]["test_acc"], "seconds": time.perf_counter() - t0}
    print(f"teacher: {facts['teacher']}", flush=True)

    mean, std = data.info["mean"], data.info["std"]
    tv_train = torchvision.datasets.MNIST(str(mnist_raw(Path(data_dir), work / "tv")), train=True, download=False,
                                          transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))]))

    check = loss_check(base, data, frozen, teacher_file, tv_train, cache / "check")
    facts["loss_check"] = check
    print("loss check (first 32 training images, one batch; each kdlab run's initial student and adapter weights on both sides):")
    for name, row in check["runs"].items():
        for side in ("kdlab", "torchdistill", "relative difference"):
            label = f"kdlab, {name}" if side == "kdlab" else f"  {side}"
            print(f"  {label:40s} " + "  ".join(f"{k} {v:.7g}" for k, v in row[side].items()))
    print(f"  inputs: max |kdlab - torchvision| = {check['input max abs diff']:.3g}", flush=True)

    # timing: whole epochs over the first --images images
    data.train = full.subset(torch.arange(args.images))
    recipe = load_recipe("mnist-cnn", base + FITNETS)

    def kdlab_epoch(online: bool) -> Dict[str, Any]:
        clock = StepClock()
        c0, w0 = time.process_time(), time.perf_counter()
        res = run_distill(recipe, frozen, data=data, out=False, progress=False, teacher_cache=cache, teacher_online=online,
                          callbacks=[clock])
        return {"wall": clock.wall, "cpu": clock.cpu, "call_wall": time.perf_counter() - w0, "call_cpu": time.process_time() - c0,
                "train_seconds": res.fit.history[0]["train_seconds"], "extra": res.fit.extra}

    first = kdlab_epoch(False)  # computes the store
    store = first["extra"].get("teacher_signals", {})
    facts["store"] = {"bytes": store.get("bytes"), "compute_seconds": store.get("compute_seconds"),
                      "first_call_wall": first["call_wall"], "first_call_cpu": first["call_cpu"], "signals": store.get("signals")}
    print(f"store: {store.get('bytes', 0) / 1e6:.1f} MB for {args.images} images, computed in {store.get('compute_seconds')} s "
          f"(first run {first['call_wall']:.1f} s wall, {first['call_cpu']:.1f} s CPU)", flush=True)

    teacher = build_model("cnn", data.in_shape, data.num_classes, {"channels": [64, 256]})
    teacher.load_state_dict(torch.load(teacher_file, map_location="cpu", weights_only=True)["state_dict"])
    torch.manual_seed(0)
    box = td_box(teacher, build_model("cnn", data.in_shape, data.num_classes, {"channels": [8, 16]}),
                 torch.utils.data.Subset(tv_train, range(args.images)))
    sides = ["kdlab store", "torchdistill"] + ([] if args.no_online else ["kdlab online"])
    times: Dict[str, List[Dict[str, Any]]] = {s: [] for s in sides}
    for r in range(args.rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            if side == "torchdistill":
                row = td_epoch(box, r)
            else:
                row = kdlab_epoch(side == "kdlab online")
                row.pop("extra")
            row.update(threads=torch.get_num_threads(), load=os.getloadavg()[0])
            times[side].append(row)
            print(f"round {r + 1} {side}: {row['wall']:.2f} s wall, {row['cpu']:.2f} s CPU, threads {row['threads']}, "
                  f"load {row['load']:.2f}", flush=True)
    scale = FULL / args.images
    med = {s: {k: statistics.median(t[k] for t in rows) * scale for k in ("wall", "cpu")} for s, rows in times.items()}
    store_s = {"wall": (store.get("compute_seconds") or 0.0) * scale,
               "cpu": max(first["call_cpu"] - statistics.median(t["call_cpu"] for t in times["kdlab store"]), 0.0) * scale}
    summary = {"per_epoch_60k": med, "store_once_60k": store_s, "store_bytes_60k": (store.get("bytes") or 0) * scale,
               "ratio_td_over_kdlab_store": {k: med["torchdistill"][k] / med["kdlab store"][k] for k in ("wall", "cpu")},
               "ratio_amortised": {f"{e} epochs": {k: med["torchdistill"][k] / (med["kdlab store"][k] + store_s[k] / e)
                                                   for k in ("wall", "cpu")} for e in (1, 10)}}
    if "kdlab online" in med:
        summary["ratio_td_over_kdlab_online"] = {k: med["torchdistill"][k] / med["kdlab online"][k] for k in ("wall", "cpu")}
    facts.update(times=times, summary=summary, load_end=os.getloadavg())
    print(f"seconds per 60,000-image epoch (median of {args.rounds}, measured on {args.images} images, x{scale:g}):")
    for s, m in med.items():
        print(f"  {s:14s} wall {m['wall']:8.1f}  CPU {m['cpu']:8.1f}")
    print(f"  store, once    wall {store_s['wall']:8.1f}  CPU {store_s['cpu']:8.1f}  ({summary['store_bytes_60k'] / 1e9:.2f} GB)")
    for k, v in summary.items():
        if k.startswith("ratio"):
            print(f"  {k}: {json.dumps(v)}")

    if args.profile:
        data.train = full.subset(torch.arange(args.profile))
        # its own cache: a store is keyed by the loaded data's fingerprint, which a subset of it keeps
        run_distill(recipe, frozen, data=data, out=False, progress=False, teacher_cache=cache / "profile")  # the store, unprofiled
        prof = ProfileSteps()
        run_distill(recipe, frozen, data=data, out=False, progress=False, teacher_cache=cache / "profile", callbacks=[prof])
        table = prof.prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=36, max_shapes_column_width=80)
        parts = breakdown(prof.prof)
        steps = -(-args.profile // 32)
        print(f"profile of a kdlab store epoch's steps ({args.profile} images, {steps} steps):")
        print(table)
        total = sum(parts.values())
        for name, ms in parts.items():
            print(f"  {name}: {ms / steps:.2f} ms per step ({100 * ms / total:.0f}%)")
        facts["profile"] = {"images": args.profile, "steps": steps, "table": table, "ms_per_step": {k: v / steps for k, v in parts.items()}}
    if args.json:
        args.json.write_text(json.dumps(facts, indent=1, default=str) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
