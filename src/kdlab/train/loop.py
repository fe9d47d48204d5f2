"""``fit``: one model, one method, one run folder — the trainer plus the callbacks a run needs.

The epoch loop itself lives in :mod:`kdlab.train.trainer` (shared by every kind of run, batched
students included); this module wires it to a run folder: ``metrics.jsonl``, ``best.pt`` and
``last.pt`` after every epoch, exact resume from ``last.pt``, schedules and progress.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..data import DatasetSplits
from ..errors import CheckpointError
from ..losses import DistillationObjective
from ..methods import Distiller
from ..methods.kd import from_objective
from ..teacher import FrozenTeacher, PrecomputedTeacherLogits
from .callbacks import Callback, ScheduleCallback, epoch_progress
from .checkpoint import load_checkpoint, save_checkpoint
from .rundir import RunDir
from .trainer import FitResult, Trainer, evaluate

TeacherSignal = Callable[[Tensor, Tensor], Tensor]

__all__ = ["FitResult", "evaluate", "fit", "RunCallback"]


class RunCallback(Callback):
    """Writes ``best.pt`` (on improvement), ``last.pt`` and the epoch's line of ``metrics.jsonl``."""

    def __init__(self, run: RunDir, meta: Dict[str, Any]) -> None:
        self.run, self.meta = run, meta

    def on_epoch_end(self, trainer: "Trainer", epoch: int, records: Sequence[Dict[str, Any]]) -> None:
        (record,) = records
        model = trainer.model
        if trainer.best_epoch == epoch:
            save_checkpoint(self.run.file("best.pt"), {**self.meta, "state_dict": model.state_dict(), "epoch": epoch, "metrics": record})
        save_checkpoint(self.run.file("last.pt"), {**self.meta, "state_dict": model.state_dict(), **trainer.state_dict(), "metrics": record})
        self.run.log_epoch(record)


def fit(
    model: nn.Module,
    data: DatasetSplits,
    cfg: TrainConfig,
    method: Distiller | DistillationObjective,
    *,
    seed: int = 0,
    teacher_signal: Optional[TeacherSignal] = None,
    teacher: Optional[FrozenTeacher] = None,
    run: Optional[RunDir] = None,
    checkpoint_meta: Optional[Dict[str, Any]] = None,
    resume: bool = False,
    progress: Optional[bool] = None,
    before_epoch: Optional[Callable[[int, Any], None]] = None,
    desc: str = "train",
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` with ``method`` for ``cfg.epochs`` epochs, evaluating after each.

    The teacher reaches the method as ``teacher`` (a :class:`FrozenTeacher`: its logits are
    cached, or it runs online for features/augmentation) or ``teacher_signal`` (precomputed
    logits, or any callable ``(idx, xb) -> logits``). With ``run`` set, writes ``metrics.jsonl``
    every epoch and ``last.pt``/``best.pt`` (best by validation accuracy when a validation split
    exists, else by test accuracy — recorded as ``best_metric``). ``resume=True`` continues from
    the run's ``last.pt`` with the optimizer, scheduler, shuffle and RNG states it saved.
    """
    if isinstance(method, DistillationObjective):  # the pre-Distiller API, kept for users' scripts
        method = from_objective(method, distill=teacher_signal is not None or teacher is not None)
    logits: Optional[Tensor] = None
    if isinstance(teacher_signal, PrecomputedTeacherLogits):
        logits = teacher_signal.logits
    elif teacher_signal is not None and teacher is None:
        teacher = _SignalTeacher(teacher_signal)  # type: ignore[assignment]
    cbs = [ScheduleCallback(before_epoch) if before_epoch is not None else None]
    cbs += [RunCallback(run, checkpoint_meta or {}) if run is not None else None, epoch_progress(progress, desc, cfg.epochs), *callbacks]
    trainer = Trainer(model, method, data, cfg, seed=seed, teacher=teacher, teacher_logits=logits, callbacks=[c for c in cbs if c is not None])
    if resume:
        if run is None:
            raise CheckpointError("resume needs a run folder holding last.pt")
        state = load_checkpoint(run.file("last.pt"))
        try:
            model.load_state_dict(state["state_dict"])
            trainer.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{run.file('last.pt')} cannot resume this run: {str(exc).splitlines()[0]}") from None
        run.truncate_metrics(state["epoch"])
        trainer.histories = [[dict(m) for m in run.metrics]]
    (result,) = trainer.fit()
    return result


class _SignalTeacher:
    """An arbitrary teacher signal ``(idx, xb) -> logits`` seen through the teacher interface."""

    def __init__(self, signal: TeacherSignal) -> None:
        self.signal = signal
        self.idx: Optional[Tensor] = None

    def logits_for(self, x: Tensor, batch_size: int = 2000) -> Tensor:
        return self.signal(torch.arange(len(x)), x)

    def __call__(self, x: Tensor) -> Tensor:
        return self.signal(torch.empty(0, dtype=torch.long), x)
