"""Where tensors live: one setting for the trainer, the objectives and the batched path.

Nothing in kdlab creates a tensor on a hard-coded device; everything follows the data and the
model, which the pipeline places on :func:`resolve_device` of the recipe's ``device``.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import math
import os
import platform
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import torch
from torch import nn

from .errors import ConfigError

CHOICES = "cpu, cuda, cuda:N or auto"


def resolve_device(spec: str, where: str = "device") -> torch.device:
    """``cpu``, ``cuda``/``cuda:N`` (must exist) or ``auto`` (cuda when available, else cpu)."""
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{where}: unknown device {spec!r}; choose {CHOICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{where}: unsupported device {spec!r}; choose {CHOICES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where}: {spec!r} but no CUDA device is available here "
                              "(torch.cuda.is_available() is False); use device: cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{where}: {spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


# ---------------------------------------------------------------------------------------------
# what the machine offers for mixed precision

_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpuinfo(key: str) -> "str | None":
    """The value of the first ``key`` line of Linux's /proc/cpuinfo (None elsewhere or when absent)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> frozenset:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty elsewhere)."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name, to state beside every measured figure (our hosts differ day to day)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_info() -> dict:
    """The CPU's model, torch's kernel level and its native bf16 support (AMX / AVX-512-BF16).

    ``bf16_native`` decides ``precision: auto`` on the CPU; without it bf16 still works but is
    emulated and usually slower than fp32.
    """
    flags = cpu_flags()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # pragma: no cover - torch < 2.1
        capability = "unknown"
    native = [f for f in _BF16_FLAGS if f in flags]
    return {"model": cpu_model(), "capability": capability, "amx": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "bf16_native": bool(native)}


def autocast_dtype(precision: str, device: torch.device) -> "torch.dtype | None":
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    ``auto``: bf16 on a CPU with native bf16, else fp32; on CUDA bf16 when supported, else fp16.
    fp16 on the CPU is refused in one line (bf16 is the CPU's half format).
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_info()["bf16_native"] else None
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision: fp16 needs a CUDA device (training on cpu); use bf16 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_name(dtype: "torch.dtype | None") -> str:
    """The ``train.precision`` name of an :func:`autocast_dtype` result (None: fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def flush_denormal_enabled() -> bool:
    """Whether subnormal floats are flushed to zero right now on this thread (torch has a setter only)."""
    return bool(torch.tensor([1e-39], dtype=torch.float32).mul(1.0).item() == 0.0)


def set_flush_denormal(enabled: bool) -> Tuple[bool, bool]:
    """Flush subnormal floats (FTZ/DAZ) on *every* intra-op thread; returns (supported, workers reached).

    ``torch.set_flush_denormal`` sets the flags of the calling thread only. Threads inherit them
    when they are created, so once the OpenMP pool exists (after the first parallel op) its workers,
    which run part of every large matmul and of the fused Adam step, keep computing with
    subnormals (the MNIST MLP teacher's late epochs are measurably slower with the flags set on the
    main thread only than on all threads). The same call is therefore run on
    each thread of the pool through libgomp's ``GOMP_parallel`` (the OpenMP runtime torch's CPU
    builds use); with another runtime only the calling thread is set, and the second value says so.
    """
    supported = bool(torch.set_flush_denormal(enabled))
    if not supported:
        return False, False
    return True, _on_openmp_threads(lambda: torch.set_flush_denormal(enabled))


_GOMP: Any = None


def _libgomp() -> Any:
    """The libgomp this process has loaded (torch's own copy), or None."""
    global _GOMP
    if _GOMP is None:
        _GOMP = False
        try:
            with open("/proc/self/maps") as maps:
                paths = {line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]}
        except OSError:
            paths = set()
        # other wheels (scikit-learn, scipy) may bring their own copy: torch's is the one beside it
        own = {p for p in paths if p.startswith(os.path.dirname(torch.__file__))}
        paths = own or paths
        if len(paths) == 1 and "OpenMP" in torch.__config__.parallel_info():
            try:
                lib = ctypes.CDLL(paths.pop())
                lib.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
                lib.GOMP_parallel.restype = None
                _GOMP = lib
            except (OSError, AttributeError):
                pass
    return _GOMP or None


def _on_openmp_threads(fn: Callable[[], Any]) -> bool:
    """Run ``fn`` once on each thread of the OpenMP team torch's ops use (True if that was possible)."""
    lib = _libgomp()
    if lib is None:
        return False
    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _data: fn())  # ctypes takes the GIL per call
    lib.GOMP_parallel(ctypes.cast(callback, ctypes.c_void_p), None, torch.get_num_threads(), 0)
    return True


# ---------------------------------------------------------------------- intra-op threads
#: Below this many multiply-adds per training step, one intra-op thread: measured with
#: ``benchmarks/threads.py`` (docs/performance: host and numbers), such steps are dispatch-bound, so
#: a second thread gains little on a quiet machine and makes the step several times slower when
#: another process takes a core (OpenMP's threads wait for each other at every op).
SMALL_STEP_MACS = 5_000_000

#: The intra-op thread count torch had when kdlab was imported: a different count later means the
#: caller set one (``torch.set_num_threads``), which kdlab then keeps.
_THREADS_AT_IMPORT = torch.get_num_threads()
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def step_macs(model: "torch.nn.Module", sample: "torch.Tensor", batch_size: int) -> int:
    """Multiply-adds of one forward pass on ``batch_size`` inputs shaped like ``sample`` (one input),
    counted over the model's Linear and convolution layers, where nearly all of a CNN's or MLP's
    arithmetic is (enough to choose a thread count; ``kdlab profile`` counts every op).

    Counted on a zero-weight copy with its hooks removed, so the model and the caller's forward
    hooks see nothing. A model that cannot be copied or run that way is estimated by its parameter
    count (exact for Linear layers, low for convolutions). Neither the ``meta`` device nor torch's
    FlopCounterMode: the first forward through either costs about a second of imports, at every
    command.
    """
    nn = torch.nn
    try:
        memo: dict = {}
        for t in model.parameters():
            memo[id(t)] = nn.Parameter(torch.zeros_like(t), requires_grad=False)
        for t in model.buffers():
            memo[id(t)] = torch.zeros_like(t)
        clone = copy.deepcopy(model, memo)
        for module in clone.modules():  # private dicts, behind the fallback below (tested)
            for hooks in (module._forward_hooks, module._forward_pre_hooks):
                hooks.clear()
        total = [0]

        def count(module: "torch.nn.Module", inputs: Any, output: Any) -> None:
            if isinstance(module, nn.Linear):
                total[0] += output.numel() * module.in_features
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                total[0] += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
            elif isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                total[0] += inputs[0].numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)

        for module in clone.modules():
            module.register_forward_hook(count)
        clone.eval()
        with torch.no_grad():
            where = next(iter(clone.parameters()), sample).device  # the model's device, wherever the data are
            clone(torch.zeros_like(sample, device=where))
        return int(total[0]) * int(batch_size)
    except Exception:  # noqa: BLE001 - any model a user brings; the estimate below always works
        return sum(p.numel() for p in model.parameters()) * int(batch_size)


def choose_threads(macs_per_step: int) -> Tuple[int, str]:
    """The intra-op threads for a run whose training step costs ``macs_per_step`` multiply-adds,
    and why: from the work's size only (never from the machine's current load, so the same command
    gives the same numbers), and never over what the user chose. Once :func:`plan_threads` has
    fixed the process's count, that plan is the answer."""
    if _PLAN is not None:
        return _PLAN["intra_op"], _PLAN["reason"]
    current = torch.get_num_threads()
    for name in _THREAD_ENV:
        if os.environ.get(name):
            return current, f"{name}={os.environ[name]} (the user's choice)"
    if current != _THREADS_AT_IMPORT:
        return current, "torch.set_num_threads (the user's choice)"
    if current > 1 and macs_per_step < SMALL_STEP_MACS:
        return 1, (f"1: a step of {macs_per_step:,} multiply-adds (< {SMALL_STEP_MACS:,}) is dispatch-bound; one thread is "
                   "as fast and does not slow down when another process shares a core")
    return current, f"{current}: torch's default for a step of {macs_per_step:,} multiply-adds"


_PLAN: Optional[Dict[str, Any]] = None  # the command's plan (plan_threads), None outside one
_PLANNING = False  # inside command_threads: the next plan_threads fixes the count


@contextlib.contextmanager
def command_threads() -> Iterator[None]:
    """Scope of one CLI command: inside it :func:`plan_threads` fixes the process's threads; at its
    end the plan is dropped and the caller's thread count restored (tests run many commands in one
    process). Outside it (kdlab as a library) each training run chooses for itself."""
    global _PLANNING, _PLAN
    before, _PLANNING = torch.get_num_threads(), True
    try:
        yield
    finally:
        _PLANNING, _PLAN = False, None
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def plan_threads(macs_per_step: int) -> Optional[Dict[str, Any]]:
    """Fix this process's intra-op threads for the run ahead, before any model has run.

    Why once, up front: torch documents that ``set_num_threads`` must come before eager work, and
    it does: after the teacher's 2-thread forwards, a switch to 1 thread left the batched students'
    step on 2 OpenMP threads (many times slower with another process on the machine than when the
    count was fixed first). The CLI's training commands call
    this with their main model's step (the students'); :class:`~kdlab.train.trainer.Trainer` then
    records the plan instead of choosing again.
    """
    global _PLAN
    if not _PLANNING or _PLAN is not None:  # a library call, or the command has already planned
        return thread_plan()
    n, why = choose_threads(macs_per_step)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    _PLAN = {"intra_op": n, "reason": why, "step_multiply_adds": int(macs_per_step), "planned": "for the whole process"}
    return dict(_PLAN)


def thread_plan() -> Optional[Dict[str, Any]]:
    """The process's plan (:func:`plan_threads`), or None when none was made."""
    return None if _PLAN is None else dict(_PLAN)


class intra_op_threads:
    """Run a block with ``n`` intra-op threads, restoring the caller's count afterwards."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> "intra_op_threads":
        self.before = torch.get_num_threads()
        if self.n != self.before:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc: Any) -> None:
        if torch.get_num_threads() != self.before:
            torch.set_num_threads(self.before)


def has_convolutions(*models: Optional[nn.Module]) -> bool:
    """True when any of ``models`` holds a 4-D weight (a 2-D convolution): what a memory format changes."""
    return any(p.dim() == 4 for m in models if m is not None for p in m.parameters())


def resolve_channels_last(setting: Union[bool, str], device: torch.device, precision: str,
                          *models: Optional[nn.Module]) -> Tuple[bool, str]:
    """``train.channels_last`` as a layout for these models on ``device``, with the reason.

    ``auto``: channels_last for convolutional models on a CPU (oneDNN's convolutions and pooling
    are 2-2.5x faster in it for kdlab's CNNs, ``benchmarks/channels_last_cpu.md``) and on CUDA
    under autocast (tensor cores read NHWC); the standard layout otherwise: fp32 on CUDA, where
    cuDNN picks its own, and models without convolutions, where the layout changes nothing.
    """
    if isinstance(setting, bool):
        return setting, f"train.channels_last={str(setting).lower()}"
    if not has_convolutions(*models):
        return False, "auto: no convolution weights"
    if device.type == "cpu":
        return True, "auto: convolutions on a CPU run faster in channels_last"
    if autocast_dtype(precision, device) is not None:
        return True, f"auto: convolutions under {precision} autocast on {device.type}"
    return False, f"auto: fp32 on {device.type} keeps the standard layout"
