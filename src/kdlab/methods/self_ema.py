"""Self-distillation from an exponential moving average of the student's own weights.

No separate teacher is trained: the teacher is a copy of the student whose weights follow the
student's as an exponential moving average (the "mean teacher" of Tarvainen & Valpola 2017, used
as a self-distillation target in e.g. DINO and BYOL-style training). Before each step

    decay_k = min(decay, (1 + k) / (10 + k))          (k = steps so far; the usual warm-up)
    θ_ema  ← decay_k · θ_ema + (1 − decay_k) · θ_student,   buffers (BatchNorm statistics) copied

and the step's soft target is the EMA model's output on the same batch, in eval mode and under
``no_grad``:  total = hard_weight · CE(s, y) + soft_weight · coding(s, ema(x), T).

The warm-up lets the average forget the random initial weights within the first tens of steps on
short runs, where a fixed 0.999 would keep the teacher close to initialisation for a thousand
steps. The EMA model and its step count belong to the method: saved and resumed with the
checkpoint, never part of the exported student. The other self-distillation, "born again" from
the student's own earlier run, needs no method: name that run's checkpoint as the teacher
(``teacher: {checkpoint: runs/<run>/best.pt}``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..logits import logits_of
from .base import Batch, Needs, Outputs, RunContext
from .kd import KD
from .registry import register_method

__all__ = ["SelfEMAParams", "SelfEMA", "ema_decay", "ema_update"]


def ema_decay(decay: float, steps: int) -> float:
    """The decay used after ``steps`` updates: ``min(decay, (1 + steps) / (10 + steps))``."""
    return min(decay, (1.0 + steps) / (10.0 + steps))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ_model for parameters; buffers copied from ``model``."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


@dataclass
class SelfEMAParams:
    """Recipe section ``distill.self-ema``: ``decay`` of the moving average (after its warm-up).

    Where the defaults come from: ``decay`` 0.999 is the mean-teacher code's default ``ema_decay``
    (Tarvainen & Valpola); the warm-up ``min(decay, (1 + k)/(10 + k))`` is TensorFlow's
    ``ExponentialMovingAverage(num_updates=k)`` rule (the mean-teacher code warms up with
    ``min(1 − 1/(k + 1), decay)`` instead). T and the hard/soft weights are the shared ``distill`` settings.
    """

    decay: float = 0.999


class SelfEMA(KD):
    """Hinton KD against the EMA of the student's own weights (no separate teacher)."""

    needs = Needs(ema_teacher=True)  # its teacher is its own moving average (an EMA teacher source)

    def __init__(self, params: Optional[SelfEMAParams] = None, coding: str = "hinton", temperature: float = 4.0,
                 hard_weight: float = 0.5, soft_weight: float = 0.5) -> None:
        super().__init__(coding=coding, temperature=temperature, hard_weight=hard_weight, soft_weight=soft_weight)
        p = params if params is not None else SelfEMAParams()
        if not (math.isfinite(p.decay) and 0.0 <= p.decay < 1.0):
            raise ConfigError(f"distill.self-ema.decay: must be a number in [0, 1), got {p.decay}")
        self.decay = float(p.decay)
        self.ema: Optional[nn.Module] = None
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._student: list = []  # the student, referenced but not a submodule (it is not ours to save)

    def setup(self, ctx: RunContext) -> None:
        """The EMA copy starts as the student's initial weights (a resume then loads the saved one)."""
        self._student = [ctx.student]
        if self.ema is None:
            self.ema = copy.deepcopy(ctx.student).requires_grad_(False).eval()

    def ema_step(self, student: nn.Module) -> nn.Module:
        """One EMA update towards ``student``; the copy, in eval mode, is this step's teacher."""
        if self.ema is None:
            raise ConfigError("self-ema: call setup() with the student first (the trainer does)")
        ema_update(self.ema, student, ema_decay(self.decay, int(self.steps)))
        self.steps += 1
        return self.ema.eval()

    def forward(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> Dict[str, Tensor]:
        if teacher is None:  # called directly, not through a trainer's EMA teacher source
            if not self._student:
                raise ConfigError("self-ema: call setup() with the student first (the trainer does)")
            with torch.no_grad():
                teacher = Outputs(logits_of(self.ema_step(self._student[0])(batch.x), "student's EMA copy"))
        return super().forward(batch, student, teacher)

    def train(self, mode: bool = True) -> "SelfEMA":
        super().train(mode)
        if self.ema is not None:
            self.ema.eval()  # the teacher side always runs in eval mode
        return self

    def epoch_info(self) -> Dict[str, Any]:
        return {**super().epoch_info(), "ema_decay": ema_decay(self.decay, int(self.steps))}


@register_method("self-ema", SelfEMAParams)
def build_self_ema(params: SelfEMAParams, distill: Any) -> SelfEMA:
    """Self-distillation: hard + KD against an exponential moving average of the student itself"""
    return SelfEMA(params=params, coding=distill.loss, temperature=distill.temperature, hard_weight=distill.hard_weight,
                   soft_weight=distill.soft_weight)
