"""What the student costs next to its teacher: parameters, FLOPs, size on disk, CPU latency, accuracy kept.

The numbers a deployment decision needs, measured the same way for both models: FLOPs per image
from :class:`torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts 2), the serialized
fp32 ``state_dict`` and its int8 dynamic-quantized version (Linear layers, the usual first step
for CPU serving), and the median wall time of repeated forward passes at batch 1 and 64.
"""

from __future__ import annotations

import copy
import io
import math
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..device import cpu_model
from ..errors import KDLabError
from ..models import count_parameters
from ..pipeline import build_role_model, prepare_data
from ..teacher import TeacherEnsemble
from .source import load_student, recorded_teacher_acc, recorded_teachers

LATENCY_BATCHES = (1, 64)


@dataclass
class ModelProfile:
    """One model's costs; ``accuracy`` is None when unknown (an untrained recipe model)."""

    role: str
    name: str
    parameters: int
    flops_per_image: int
    fp32_bytes: int
    int8_bytes: int
    latency_ms: Dict[int, float]
    accuracy: Optional[float] = None


@dataclass
class Profile:
    """Teacher and student side by side, with the machine the latencies belong to."""

    teacher: ModelProfile
    student: ModelProfile
    source: str
    threads: int
    cpu: str = field(default_factory=cpu_model)
    load: Optional[float] = field(default_factory=lambda: load_average())  # 1-minute load average when measured

    def speedup(self, batch: int) -> float:
        return self.teacher.latency_ms[batch] / self.student.latency_ms[batch]

    @property
    def accuracy_kept(self) -> Optional[float]:
        """Student accuracy as a fraction of the teacher's (None unless both are known)."""
        t, s = self.teacher.accuracy, self.student.accuracy
        return s / t if t and s is not None else None

    def as_dict(self) -> Dict[str, Any]:
        return {"source": self.source, "threads": self.threads, "cpu": self.cpu, "load": self.load, "teacher": asdict(self.teacher),
                "student": asdict(self.student), "speedup": {b: self.speedup(b) for b in self.student.latency_ms},
                "accuracy_kept": self.accuracy_kept}

    def table(self) -> str:
        """A Markdown table: one row per measure, teacher | student | student/teacher."""
        t, s = self.teacher, self.student
        rows: List[Tuple[str, str, str, str]] = [
            ("model", t.name, s.name, ""),
            ("parameters", f"{t.parameters:,}", f"{s.parameters:,}", _ratio(s.parameters, t.parameters)),
            ("FLOPs per image", _si(t.flops_per_image), _si(s.flops_per_image), _ratio(s.flops_per_image, t.flops_per_image)),
            ("size fp32 (state_dict)", _bytes(t.fp32_bytes), _bytes(s.fp32_bytes), _ratio(s.fp32_bytes, t.fp32_bytes)),
            ("size int8 (dynamic, Linear)", _bytes(t.int8_bytes), _bytes(s.int8_bytes), _ratio(s.int8_bytes, t.int8_bytes)),
        ]
        for b in t.latency_ms:
            rows.append((f"CPU latency, batch {b}", f"{t.latency_ms[b]:.3f} ms", f"{s.latency_ms[b]:.3f} ms",
                         f"{self.speedup(b):.1f}x faster"))
        kept = self.accuracy_kept
        rows.append(("test accuracy", _pct(t.accuracy), _pct(s.accuracy), "n/a" if kept is None else f"{100 * kept:.1f}% kept"))
        lines = ["| measure | teacher | student | student vs teacher |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        lines.append(f"\nLatency: median of repeated forward passes (torch.inference_mode) on {self.cpu}, "
                     f"torch.get_num_threads() = {self.threads}; FLOPs from torch.utils.flop_counter (multiply-add = 2).")
        cpus = os.cpu_count() or 1
        if self.threads > 1 and self.load is not None and self.load > cpus:  # more runnable work than cores
            lines.append(f"Note: load average {self.load:.1f} on {cpus} CPUs while measuring: with {self.threads} threads a "
                         "forward pass waits for busy cores, so latencies are inflated; --threads 1 is steadier on a busy machine.")
        return "\n".join(lines)


def _ratio(student: float, teacher: float) -> str:
    return f"{teacher / student:.1f}x smaller" if student and teacher >= student else (f"{student / teacher:.2f}x" if teacher else "")


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:g}"


def _bytes(n: int) -> str:
    for unit, scale in (("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS has none), to flag latencies taken on a busy machine."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def flops_per_image(model: nn.Module, in_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on one image (eval mode), as torch's FLOP counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode  # start-up time: more of torch, only when FLOPs are counted (kdlab export imports kdlab.ship)

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, *in_shape, device=device))
    return int(counter.get_total_flops())


def serialized_bytes(obj: Any) -> int:
    """Bytes ``torch.save`` writes for ``obj`` (measured in memory, nothing touches the disk)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def int8_state_dict_bytes(model: nn.Module) -> int:
    """Serialized size after ``torch.ao.quantization.quantize_dynamic`` of the Linear layers to int8."""
    cpu = copy.deepcopy(model).to("cpu").eval()  # quantized kernels are CPU kernels; quantize_dynamic works on a copy too
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated upstream in favour of torchao; it still works
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(cpu, {nn.Linear}, dtype=torch.qint8)
        return serialized_bytes(quantized.state_dict())


def latency_ms(model: nn.Module, in_shape: Sequence[int], batch: int, min_runs: int = 10, max_runs: int = 500,
               min_seconds: float = 0.25) -> float:
    """Median wall time in ms of one forward pass at ``batch`` (after warm-up), on the model's device."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.randn(batch, *in_shape, device=device)
    times: List[float] = []
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        start = time.perf_counter()
        while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_seconds):
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def profile_model(model: nn.Module, in_shape: Sequence[int], role: str, name: str, accuracy: Optional[float] = None,
                  batches: Sequence[int] = LATENCY_BATCHES, min_seconds: float = 0.25) -> ModelProfile:
    """Every measure of :class:`ModelProfile` for one model, in eval mode on the CPU (a copy: ``model`` is left as is)."""
    model = copy.deepcopy(model).to("cpu").eval()  # the profile is of CPU serving
    return ModelProfile(
        role, name, count_parameters(model, trainable_only=False), flops_per_image(model, in_shape),
        serialized_bytes(model.state_dict()), int8_state_dict_bytes(model),
        {b: latency_ms(model, in_shape, b, min_seconds=min_seconds) for b in batches}, accuracy,
    )


def profile_models(teacher: nn.Module, student: nn.Module, in_shape: Sequence[int], *, source: str = "",
                   names: Tuple[str, str] = ("teacher", "student"), accuracies: Tuple[Optional[float], Optional[float]] = (None, None),
                   batches: Sequence[int] = LATENCY_BATCHES, min_seconds: float = 0.25, threads: Optional[int] = None) -> Profile:
    """Teacher and student measured the same way, one after the other, with the thread count stated
    (``threads`` sets it for the measurement only; default: torch's current setting)."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise KDLabError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        t = profile_model(teacher, in_shape, "teacher", names[0], accuracies[0], batches, min_seconds)
        s = profile_model(student, in_shape, "student", names[1], accuracies[1], batches, min_seconds)
        return Profile(t, s, source, torch.get_num_threads())
    finally:
        torch.set_num_threads(before)


def profile_recipe(recipe: Any, **kwargs: Any) -> Profile:
    """A recipe's teacher and student as built (untrained: accuracy n/a)."""
    data = prepare_data(recipe)
    teacher, student = (build_role_model(recipe, role, data) for role in ("teacher", "student"))
    names = (recipe.teacher.model.name, recipe.student.model.name)
    return profile_models(teacher, student, data.in_shape, source=f"recipe {recipe.name} (untrained)", names=names, **kwargs)


def profile_run(source: str | os.PathLike, teacher: Optional[str | os.PathLike] = None, checkpoint: str = "best",
                **kwargs: Any) -> Profile:
    """A run's student (``best.pt``) beside its teacher: ``teacher`` if given, else the one its ``run.json`` records."""
    student = load_student(source, checkpoint)
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    paths = [Path(teacher)] if teacher is not None else recorded_teachers(folder)
    if not paths:
        raise KDLabError(f"run {folder} records no teacher (only distill runs do); pass --teacher CHECKPOINT to compare with one")
    for p in paths:
        if not Path(p).expanduser().exists():
            given = f"--teacher {p}" if teacher is not None else f"the teacher checkpoint {p} that {folder / 'run.json'} records"
            raise KDLabError(f"{given} does not exist (moved or deleted?); pass --teacher CHECKPOINT with the teacher's .pt file")
    members = [load_student(p) for p in paths]  # same safe loader; a damaged file fails in one line
    for m in members:
        if list(m.payload["model"]["in_shape"]) != list(student.payload["model"]["in_shape"]):
            raise KDLabError(f"teacher {m.path} takes inputs {m.payload['model']['in_shape']}, the student "
                             f"{student.payload['model']['in_shape']}; pass the teacher this student was distilled from")
    if len(members) == 1:
        model, name, t_acc = members[0].model, members[0].name, members[0].test_acc
    else:
        model, name, t_acc = TeacherEnsemble([m.model for m in members]), f"mean of {len(members)} teachers", None
    if teacher is None:
        t_acc = recorded_teacher_acc(folder) if recorded_teacher_acc(folder) is not None else t_acc
    s_acc = student.test_acc
    if s_acc is not None and not math.isfinite(s_acc):
        s_acc = None
    return profile_models(model, student.model, student.payload["model"]["in_shape"], source=f"run {student.path}",
                          names=(name, student.name), accuracies=(t_acc, s_acc), **kwargs)
