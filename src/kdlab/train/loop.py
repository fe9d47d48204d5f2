"""``fit``: one model, one method, one optional run folder — :func:`kdlab.train.run.run` in one call.

Kept as the short way to train from Python (``kdlab.train.fit``); the epoch loop is
:mod:`kdlab.train.trainer`, the run builder :mod:`kdlab.train.run`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..data import DatasetSplits
from ..methods import Distiller
from ..teacher import FrozenTeacher
from .callbacks import Callback, EpochProgress, loss_share_note
from .records import FitResult, NonFiniteLossError, evaluate
from .rundir import RunDir
from .run import RunCallback, RunSpec, tensorboard_callback
from .weights import WeightPlan
from .run import run as run_spec

EpochLog = EpochProgress  # the one-line-per-epoch display, under the name earlier code used

__all__ = ["Callback", "EpochLog", "FitResult", "NonFiniteLossError", "RunCallback", "evaluate", "fit", "loss_share_note",
           "tensorboard_callback"]


class _EpochHook(Callback):
    """A plain ``before_epoch(epoch, method)`` function as a callback."""

    def __init__(self, hook: Callable[[int, Any], None]) -> None:
        self.hook = hook

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self.hook(epoch, trainer.method)


def fit(
    model: nn.Module,
    data: DatasetSplits,
    cfg: TrainConfig,
    method: Distiller,
    *,
    seed: int = 0,
    teacher_signal: Any = None,
    teacher: Optional[FrozenTeacher] = None,
    run: Optional[RunDir] = None,
    checkpoint_meta: Optional[Dict[str, Any]] = None,
    resume: bool = False,
    progress: Optional[bool] = None,
    before_epoch: Optional[Callable[[int, Any], None]] = None,
    desc: str = "train",
    callbacks: Sequence[Callback] = (),
    augment: Optional[Callable[[Tensor, Tensor, torch.Generator], Any]] = None,
    weight_plan: Optional[WeightPlan] = None,
    teacher_logits: Optional[Tensor] = None,
    steps: str = "auto",
) -> FitResult:
    """Train ``model`` with ``method`` for ``cfg.epochs`` epochs, evaluating after each.

    The teacher reaches the method as ``teacher`` (a :class:`FrozenTeacher`: its logits are
    cached, or it runs online for features/augmentation) or ``teacher_logits`` (precomputed
    training-set logits; ``teacher_signal``: the same as a :class:`~kdlab.teacher.PrecomputedTeacherLogits`).
    With ``run`` (a :class:`RunDir`) set, writes ``last.pt``, ``best.pt`` (by validation
    accuracy when a validation split exists, else by test accuracy — recorded as ``best_metric``)
    and ``metrics.jsonl`` every epoch, and TensorBoard event files beside them when
    ``cfg.tensorboard``. ``resume=True`` continues from the run's ``last.pt`` with the optimizer,
    scheduler, shuffle and RNG states it saved (or from epoch 1 when the run was killed before its
    first checkpoint). A non-finite loss raises :class:`NonFiniteLossError` before that epoch is saved.
    ``steps="autograd"`` insists on autograd steps (say, for a method whose ``forward`` changes from
    call to call, which the planner's probe of its closed form cannot see).
    """
    if teacher_signal is not None:
        if not hasattr(teacher_signal, "logits"):
            raise TypeError("teacher_signal must hold precomputed logits (a PrecomputedTeacherLogits); "
                            "pass teacher= for a teacher that runs on every batch")
        teacher_logits = teacher_signal.logits
    spec = RunSpec(data=data, train=cfg, model=model, method=method, seed=seed, teacher=teacher, teacher_logits=teacher_logits,
                   augment=augment, weight_plan=weight_plan,
                   callbacks=[_EpochHook(before_epoch) if before_epoch is not None else None, *callbacks],
                   run=run, checkpoint_meta=dict(checkpoint_meta or {}), resume=resume, progress=progress, desc=desc,
                   steps=steps)
    (result,) = run_spec(spec)
    return result
