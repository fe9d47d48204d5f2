"""The step planner: which step a run takes, chosen once, with the reason recorded.

The fastest step that computes exactly the method's loss is used: the closed form (the
autograd-free chain for a Linear/ReLU student) when the method offers one, the batches are the
stored training tensors in fp32 with one step per batch, the teacher's logits are tabulated, and
the closed form agrees with the method's own ``forward`` on a probe; autograd otherwise. The
probe is what keeps a subclass that adds a term (a penalty) off the closed form: it compares the
closed form's total and gradient with the forward's, on seeded random logits, before training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ...methods.base import Batch, Distiller, Outputs
from ..precision import Precision
from ..sources import TeacherSource
from .chain import ChainStep

#: Step names a caller may insist on (``steps=``); ``auto`` lets the planner choose.
STEP_CHOICES = ("auto", "autograd")
PROBE_ROWS = 8


@dataclass
class StepChoice:
    """The planner's answer: the step's name, why, and what it computes with."""

    kind: str  # "closed form", "autograd-free chain" or "autograd"
    reason: str
    fast: Any = None
    chain: Optional[ChainStep] = None


def plan_step(method: Distiller, model: nn.Module, source: TeacherSource, precision: Precision, *, train: Any,
              num_classes: int, in_memory: bool, augmented: bool, accumulate: int, force: str = "auto") -> StepChoice:
    """The step for one student (see the module docstring); ``train`` is the training split (in memory)."""
    if force not in STEP_CHOICES:
        raise ValueError(f"steps must be one of {', '.join(STEP_CHOICES)}, got {force!r}")
    blocker = _closed_form_blocker(method, source, precision, in_memory=in_memory, augmented=augmented,
                                   accumulate=accumulate, force=force)
    if blocker is not None:
        return StepChoice("autograd", blocker)
    fast = method.fast_path(train.y, num_classes, source.table)
    if fast is None:
        return StepChoice("autograd", f"{_name(method)} offers no closed form for these labels and terms")
    disagreement = closed_form_disagreement(method, fast, train, num_classes, source.table)
    if disagreement is not None:
        return StepChoice("autograd", disagreement)
    chain = ChainStep.of(model)
    if chain is not None:
        return StepChoice("autograd-free chain", "a closed-form method on a Linear/ReLU student: no autograd graph at all",
                          fast, chain)
    return StepChoice("closed form", "the method's closed form: one backward from the logits, no loss graph", fast)


def _closed_form_blocker(method: Distiller, source: TeacherSource, precision: Precision, *, in_memory: bool,
                         augmented: bool, accumulate: int, force: str) -> Optional[str]:
    if force == "autograd":
        return "the caller asked for autograd steps"
    if not in_memory:
        return "the batches come from a DataLoader"
    if augmented:
        return "the batches are augmented"
    if not precision.no_autocast:
        return f"train.precision={precision.setting}: mixed precision runs through autograd"
    if accumulate != 1:
        return f"train.accumulate_steps={accumulate}: accumulation runs through autograd"
    if not method.needs.logits_only:
        return f"{_name(method)} reads intermediate features"
    if method.needs.teacher_members:
        return f"{_name(method)} reads each teacher's logits (no closed form over an ensemble's members)"
    if method.needs.teacher and source.table is None:
        return "the teacher runs on every batch (no tabulated logits)"
    if source.runs_per_batch:
        return f"the teacher ({source.kind}) runs on every batch"
    return None


def closed_form_disagreement(method: Distiller, fast: Any, train: Any, num_classes: int,
                             table: Optional[Tensor]) -> Optional[str]:
    """None when ``fast`` gives the method's total, terms and ∂total/∂logits on a probe; else why not."""
    n = min(PROBE_ROWS, len(train.y))
    if n == 0:
        return None
    device = train.y.device
    idx = torch.arange(n, device=device)
    logits = (3.0 * torch.randn(n, num_classes, generator=torch.Generator().manual_seed(0))).to(device)
    y = train.y.index_select(0, idx)
    teacher = Outputs(table.index_select(0, idx)) if method.needs.teacher and table is not None else None
    probe = logits.clone().requires_grad_(True)
    with torch.enable_grad():
        terms = method(Batch(train.x.index_select(0, idx), y, idx), Outputs(probe), teacher)
        total = method.total(terms)
        (grad,) = torch.autograd.grad(total, probe)
    fast.prepare_for(method)
    values, fast_grad = fast(logits, fast.rows(idx))
    expected = torch.stack([total.detach(), *(terms[k].detach() for k in method.term_weights())])
    close = (len(values) >= len(expected)  # fewer: the method has terms the closed form does not compute
             and torch.allclose(values[: len(expected)].float(), expected.float(), rtol=1e-4, atol=1e-5)
             and torch.allclose(fast_grad.float(), grad.float(), rtol=1e-3, atol=1e-6))
    if close:
        return None
    return f"{_name(method)}'s forward differs from its closed form on a probe batch (e.g. a subclass adds a term)"


def _name(method: Distiller) -> str:
    return method.method_name or type(method).__name__
