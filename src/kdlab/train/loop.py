"""``fit``: one model, one method, one run folder — the trainer plus the callbacks a run needs.

The epoch loop lives in :mod:`kdlab.train.trainer` (shared by every kind of run, batched students
included). This module wires it to a run folder. Files are written once per epoch in the order
``last.pt`` → ``best.pt`` → ``metrics.jsonl``, each atomically; ``last.pt`` carries the epoch's
metrics record, so a resume after a kill at any point rebuilds ``best.pt`` and ``metrics.jsonl``
from it, and stale temporary files are removed.
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
from . import distributed
from .callbacks import (Callback, EpochProgress, LossShareNote, TensorBoardCallback, epoch_progress, stderr_line,
                        tensorboard_available)
from .checkpoint import load_checkpoint, save_checkpoint
from .rundir import RunDir
from .records import FitResult, NonFiniteLossError, evaluate
from .trainer import Trainer
from .weights import WeightPlan

TeacherSignal = Callable[[Tensor, Tensor], Tensor]
EpochLog = EpochProgress  # the one-line-per-epoch display, under the name earlier code used

__all__ = ["Callback", "EpochLog", "FitResult", "NonFiniteLossError", "RunCallback", "evaluate", "fit"]


class RunCallback(Callback):
    """Writes ``last.pt`` (everything a resume needs), ``best.pt`` on improvement, then the epoch's
    line of ``metrics.jsonl`` — in that order, so ``last.pt`` can always repair the other two."""

    def __init__(self, run: RunDir, meta: Dict[str, Any]) -> None:
        self.run, self.meta = run, meta

    def on_epoch_end(self, trainer: Trainer, epoch: int, records: Sequence[Dict[str, Any]]) -> None:
        (record,) = records
        state = trainer.model.state_dict()
        save_checkpoint(self.run.file("last.pt"), {**self.meta, "state_dict": state, **trainer.state_dict(), "metrics": record})
        if trainer.best_epoch == epoch:
            save_checkpoint(self.run.file("best.pt"), _best_payload(self.meta, state, epoch, record))
        self.run.log_epoch(record)


def tensorboard_callback(log_dir: Any, cfg: TrainConfig, names: Optional[Sequence[str]] = None) -> Optional[Callback]:
    """TensorBoard events into ``log_dir`` when ``cfg.tensorboard`` (a one-line note when the package is missing)."""
    if not getattr(cfg, "tensorboard", False):
        return None
    if not tensorboard_available():
        import sys

        print("kdlab: note: tensorboard is not installed, so no TensorBoard event files are written "
              "(pip install tensorboard; set train.tensorboard=false to silence this)", file=sys.stderr, flush=True)
        return None
    return TensorBoardCallback(log_dir, names)


def loss_share_note(progress: Optional[bool]) -> LossShareNote:
    """Loss shares in every record; the note printed unless ``progress`` is False (rank 0 alone under torchrun)."""
    return LossShareNote(say=stderr_line if progress is not False and distributed.is_main() else None)


class _EpochHook(Callback):
    """A plain ``before_epoch(epoch, method)`` function as a callback."""

    def __init__(self, hook: Callable[[int, Any], None]) -> None:
        self.hook = hook

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.hook(epoch, trainer.method)


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
    augment: Optional[Callable[[Tensor, Tensor, torch.Generator], Any]] = None,
    weight_plan: Optional[WeightPlan] = None,
) -> FitResult:
    """Train ``model`` with ``method`` for ``cfg.epochs`` epochs, evaluating after each.

    The teacher reaches the method as ``teacher`` (a :class:`FrozenTeacher`: its logits are
    cached, or it runs online for features/augmentation) or ``teacher_signal`` (precomputed
    logits, or any callable ``(idx, xb) -> logits``). With ``run`` set, writes ``last.pt``,
    ``best.pt`` (by validation accuracy when a validation split exists, else by test accuracy —
    recorded as ``best_metric``) and ``metrics.jsonl`` every epoch, and TensorBoard event files
    beside them when ``cfg.tensorboard`` (and the package is installed). ``resume=True`` continues
    from the run's ``last.pt`` with the optimizer, scheduler, shuffle and RNG states it saved (or
    from epoch 1 when the run was killed before its first checkpoint). A non-finite loss raises
    :class:`NonFiniteLossError` before that epoch is saved.
    """
    if isinstance(method, DistillationObjective):  # the pre-Distiller API, kept for users' scripts
        method = from_objective(method, distill=teacher_signal is not None or teacher is not None)
    logits: Optional[Tensor] = None
    if isinstance(teacher_signal, PrecomputedTeacherLogits):
        logits = teacher_signal.logits
    elif teacher_signal is not None and teacher is None:
        teacher = _SignalTeacher(teacher_signal)  # type: ignore[assignment]
    cbs = [_EpochHook(before_epoch) if before_epoch is not None else None, *callbacks,  # files and progress: rank 0 only
           loss_share_note(progress),  # before the records are written
           distributed.rank_zero(RunCallback(run, checkpoint_meta or {}) if run is not None else None),
           distributed.rank_zero(tensorboard_callback(run.path, cfg) if run is not None else None),
           distributed.rank_zero(epoch_progress(progress, desc, cfg.epochs))]
    if augment is not None and logits is not None and method.needs.teacher:
        raise ValueError("augmented batches need the teacher model (it must see the same augmented images), not cached logits")
    trainer = Trainer(model, method, data, cfg, seed=seed, teacher=teacher, teacher_logits=logits if augment is None else None,
                      callbacks=[c for c in cbs if c is not None], augment=augment, weight_plan=weight_plan)
    if run is not None:
        trainer.saved_note = lambda epoch: (f"kept the last good checkpoint {run.file('last.pt')} (epoch {epoch - 1})"
                                            if epoch > 1 else "no checkpoint was written")
    state: Optional[Dict[str, Any]] = None
    if resume:
        if run is None:
            raise CheckpointError("resume needs a run folder holding last.pt")
        state = load_checkpoint(run.file("last.pt")) if run.file("last.pt").exists() else None
        if state is not None:
            try:
                model.load_state_dict(state["state_dict"])
                trainer.load_state_dict(state)
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                raise CheckpointError(f"{run.file('last.pt')} cannot resume this run: {str(exc).splitlines()[0]}") from None
    # From here on the run may change files: the resume state (if any) is known to be usable.
    if run is not None:
        if distributed.is_main():  # under torchrun rank 0 alone repairs and writes the run folder
            run.remove_stale_temp_files()
            if resume:
                _sync_run_with_checkpoint(run, state, checkpoint_meta)
        if resume:
            trainer.histories = [[m for m in (dict(m) for m in run.metrics) if m.get("epoch", 0) <= trainer.epoch]]
    (result,) = trainer.fit()
    return result


class _SignalTeacher:
    """An arbitrary teacher signal ``(idx, xb) -> logits`` seen through the teacher interface."""

    def __init__(self, signal: TeacherSignal) -> None:
        self.signal = signal

    model = None  # no module to hook or weigh: a signal gives logits only

    def logits_for(self, x: Tensor, batch_size: int = 2000, members: bool = False) -> Tensor:
        if members:
            raise ValueError("a teacher signal gives one set of logits, not one per ensemble member; pass the teachers")
        return self.signal(torch.arange(len(x)), x)

    def __call__(self, x: Tensor) -> Tensor:
        return self.signal(torch.empty(0, dtype=torch.long), x)


def _best_payload(meta: Optional[Dict[str, Any]], state_dict: Dict[str, Any], epoch: int, record: Dict[str, Any]) -> Dict[str, Any]:
    return {**(meta or {}), "state_dict": state_dict, "epoch": epoch, "metrics": record}


def _sync_run_with_checkpoint(run: RunDir, state: Optional[Dict[str, Any]], meta: Optional[Dict[str, Any]]) -> None:
    """Bring ``best.pt`` and ``metrics.jsonl`` in line with ``last.pt`` after a kill at any point.

    A kill after ``last.pt`` of an improving epoch but before ``best.pt`` leaves ``best.pt`` one
    best behind: it is rewritten from ``last.pt`` (which holds that epoch's weights). Metrics
    after the checkpoint's epoch are dropped and its own record appended when missing. Without a
    ``last.pt`` (killed in epoch 1) the run starts over, so earlier metrics are dropped.
    """
    if state is None:
        run.sync_metrics(0, None)
        return
    epoch = int(state["epoch"])
    record = state.get("metrics")
    if int(state["best_epoch"]) == epoch and isinstance(record, dict):
        best = run.file("best.pt")
        best_epoch = None
        if best.exists():
            try:
                best_epoch = int(load_checkpoint(best).get("epoch", -1))
            except CheckpointError:
                best_epoch = None  # damaged: rewrite it from last.pt
        if best_epoch != epoch:
            save_checkpoint(best, _best_payload(meta, state["state_dict"], epoch, record))
    run.sync_metrics(epoch, record if isinstance(record, dict) else None)
