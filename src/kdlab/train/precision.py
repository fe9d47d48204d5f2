"""The precision plugin of the epoch loop: autocast dtype, GradScaler, memory format, subnormals.

``train.precision`` picks the autocast dtype (:func:`kdlab.device.autocast_dtype`). The forward
passes run under :func:`torch.autocast`; logits and features are cast to fp32 before the method,
so softmax/KL/CE terms are always fp32. fp16 steps go through a ``GradScaler`` (gradients unscaled
before clipping; its state is part of the trainer's resume state). ``channels_last`` lays out the
student's and the teacher's 4-D weights and inputs for faster convolutions; ``auto`` (the default)
turns it on where it is measured faster (:func:`resolve_channels_last`).
``train.flush_denormal`` flushes subnormal floats during a fit on every intra-op thread
(:func:`kdlab.device.set_flush_denormal`) and restores the previous mode afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from ..device import autocast_dtype, flush_denormal_enabled, precision_name, resolve_channels_last, set_flush_denormal
from ..methods.base import Outputs


def _laid_out(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


class Precision:
    """What one run's steps compute in; chosen once from the train settings and the device."""

    def __init__(self, setting: str, device: torch.device, channels_last: bool = False, flush_denormal: bool = False,
                 channels_last_reason: str = "", teacher_channels_last: Optional[bool] = None) -> None:
        self.setting, self.device_type = setting, device.type
        self.dtype = autocast_dtype(setting, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        #: the student's layout, and the teacher's (its passes over the data and its per-batch forwards)
        self.channels_last = bool(channels_last)
        self.teacher_channels_last = self.channels_last if teacher_channels_last is None else bool(teacher_channels_last)
        self.channels_last_reason = channels_last_reason or f"train.channels_last={str(self.channels_last).lower()}"
        self.flush_denormal = bool(flush_denormal)
        self.flush_supported: Optional[bool] = None
        self.flush_all_threads: Optional[bool] = None

    @classmethod
    def of(cls, cfg: Any, device: torch.device, student: Optional[nn.Module], teacher: Optional[nn.Module],
           *, student_layout: Optional[Tuple[bool, str]] = None) -> "Precision":
        """The precision of a run with train settings ``cfg`` on ``device``, ``train.channels_last``
        resolved for the student and for the teacher (``auto``: each by its own convolutions);
        ``student_layout`` overrides the student's (the batched grid keeps the standard layout)."""
        layout, why = student_layout or resolve_channels_last(cfg.channels_last, device, cfg.precision, student)
        t_layout, t_why = resolve_channels_last(cfg.channels_last, device, cfg.precision, teacher)
        if teacher is not None and t_layout != layout:
            why = f"student: {why}; teacher: {t_why}"
        return cls(cfg.precision, device, layout, bool(cfg.flush_denormal), why, teacher_channels_last=t_layout)

    @property
    def no_autocast(self) -> bool:
        """No autocast: what the closed-form step computes in (a memory format changes no formula)."""
        return self.dtype is None

    def prepare(self, model: nn.Module, source: Any) -> None:
        """The student (and a teacher that runs on every batch) in channels_last when chosen."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.teacher_channels_last and source.runs_per_batch:
            source.use_channels_last()

    def teacher_pass(self, teacher: Any) -> None:
        """A teacher about to run over the data (cached logits, the signal store) in its layout."""
        if self.teacher_channels_last and hasattr(teacher, "use_channels_last"):
            teacher.use_channels_last()

    def inputs(self, x: Tensor) -> Tensor:
        """A student's batch in its layout."""
        return _laid_out(x, self.channels_last)

    def teacher_inputs(self, x: Tensor) -> Tensor:
        """A batch for the teacher's own forward (a stored-signal pass) in its layout."""
        return _laid_out(x, self.teacher_channels_last)

    def autocast(self) -> Any:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def fp32(self, outputs: Optional[Outputs]) -> Optional[Outputs]:
        """Logits and features in fp32 (autocast leaves them bf16/fp16); unchanged in fp32 runs."""
        if outputs is None or self.dtype is None:
            return outputs
        feats = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in outputs.features.items()}
        return Outputs(outputs.logits.float(), feats)

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler.is_enabled():
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)
        self.scaler.update()

    @contextlib.contextmanager
    def fitting(self) -> Iterator[None]:
        """Subnormal flushing for the fit's duration (restored afterwards, also on error)."""
        before = flush_denormal_enabled()
        self.flush_supported, self.flush_all_threads = set_flush_denormal(self.flush_denormal)
        try:
            yield
        finally:
            set_flush_denormal(before)

    def state_dict(self) -> Optional[Dict[str, Any]]:
        return self.scaler.state_dict() if self.scaler.is_enabled() else None

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)

    def facts(self) -> Dict[str, Any]:
        return {"precision": {"setting": self.setting, "autocast": precision_name(self.dtype),
                              "grad_scaler": self.scaler.is_enabled(), "device": self.device_type},
                "flush_denormal_supported": self.flush_supported,
                # False: only the calling thread flushes (an OpenMP runtime kdlab cannot reach)
                "flush_denormal_all_threads": self.flush_all_threads,
                "channels_last": self.channels_last, "teacher_channels_last": self.teacher_channels_last,
                "channels_last_reason": self.channels_last_reason}
