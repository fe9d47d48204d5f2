"""The training loop shared by teacher, scratch-student and distillation runs.

The hot loop is deliberately plain: one ``index_select`` per batch for the images and one for the
tabulated label/teacher rows, one forward, one backward from the closed-form gradient of the
objective (:mod:`kdlab.losses.closed_form`; any other soft loss goes through autograd as usual), one
fused optimizer step. Loss terms stay tensors during the epoch and become floats once at its end,
which is also where a non-finite loss is caught (no per-step host sync).

Files are written once per epoch in the order ``last.pt`` → ``best.pt`` → ``metrics.jsonl``, each
atomically; ``last.pt`` carries the epoch's metrics record, so a resume after a kill at any point
rebuilds ``best.pt`` and ``metrics.jsonl`` from it (see :func:`fit`).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data import BatchIndexer, DatasetSplits, TensorData
from ..errors import CheckpointError, KDLabError
from ..losses import DistillationObjective
from ..losses.closed_form import ClosedFormObjective
from ..teacher import PrecomputedTeacherLogits
from .checkpoint import load_checkpoint, save_checkpoint
from .optim import build_optimizer, build_scheduler
from .rundir import RunDir

TeacherSignal = Callable[[Tensor, Tensor], Tensor]
_NAN = torch.tensor(float("nan"))


def closed_form_step(
    objective: DistillationObjective, teacher_signal: Optional[TeacherSignal], labels: Tensor, num_classes: int
) -> Optional[ClosedFormObjective]:
    """The closed-form fast path when it computes exactly ``objective`` (CE, or CE + a coding that
    declares its closed form), else None (the objective then runs through autograd).

    Cached teacher logits are tabulated once per epoch; any other teacher signal (e.g. an online
    teacher on augmented batches) gets its rows built per batch.
    """
    if labels.is_floating_point() or type(objective).forward is not DistillationObjective.forward:
        return None  # soft labels, or a subclass computing something of its own: autograd
    if teacher_signal is None:
        return ClosedFormObjective(labels, num_classes, distill=False)
    if not ClosedFormObjective.supports(objective):
        return None
    cached = teacher_signal.logits if isinstance(teacher_signal, PrecomputedTeacherLogits) else None
    return ClosedFormObjective(labels, num_classes, cached)


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, batch_size: int = 2000) -> Dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``data`` (eval mode, batched)."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for xb, yb in zip(data.x.split(batch_size), data.y.split(batch_size)):
        logits = model(xb)
        correct += int((logits.argmax(1) == yb).sum())
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
    model.train(was_training)
    n = max(len(data), 1)
    return {"acc": correct / n, "loss": loss_sum / n}


def epoch_record(
    epoch: int,
    steps: Tensor,
    test_acc: float,
    test_loss: float,
    lr: float,
    objective: Optional[DistillationObjective] = None,
    val: Optional[tuple] = None,
) -> Dict[str, Any]:
    """One epoch's metrics from its per-step (total, hard, soft) losses; ``objective`` when distilling.

    Shared by :func:`fit` and the batched trainer so both write the same keys.
    """
    record: Dict[str, Any] = {
        "epoch": epoch,
        "loss_total": float(steps[:, 0].mean()),
        "loss_hard": float(steps[:, 1].mean()),
        "test_acc": float(test_acc),
        "test_loss": float(test_loss),
        "lr": lr,
    }
    if objective is not None:
        record.update(
            loss_soft=float(steps[:, 2].mean()),
            negative_loss_steps=int((steps[:, 0] < 0).sum()),
            temperature=objective.temperature,
            hard_weight=objective.hard_weight,
            soft_weight=objective.soft_weight,
        )
    if val is not None:
        record.update(val_acc=float(val[0]), val_loss=float(val[1]))
    return record


class NonFiniteLossError(KDLabError):
    """Training produced a NaN/inf loss; the epoch's weights were not saved."""

    def __init__(self, message: str, epoch: int, step: int, term: str) -> None:
        super().__init__(message)
        self.epoch, self.step, self.term = epoch, step, term


def check_finite(rows: Tensor, epoch: int, distilling: bool, model: nn.Module, run: Optional[RunDir]) -> None:
    """Raise :class:`NonFiniteLossError` naming the first bad step of the epoch and its loss term.

    Called once per epoch on the stacked (steps, 3) losses, before evaluation or any checkpoint,
    so a diverged model never reaches ``last.pt``/``best.pt``. The parameters are checked too: a
    finite last loss can still be followed by an update that overflows the weights.
    """
    cols = rows if distilling else rows[:, :2]
    bad_rows = ~torch.isfinite(cols).all(1)
    if run is None:
        kept = "the model was not saved"
    elif epoch > 1:
        kept = f"kept the last good checkpoint {run.file('last.pt')} (epoch {epoch - 1})"
    else:
        kept = "no checkpoint was written"
    advice = "lower the learning rate, set train.grad_clip or check the loss, then start a new run"
    if not bool(bad_rows.any()):
        if all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            return
        raise NonFiniteLossError(
            f"training diverged: the weights became non-finite after the last step of epoch {epoch} (every loss "
            f"was finite); {kept}; {advice}", epoch, len(rows), "weights",
        )
    step = int(bad_rows.nonzero()[0, 0])
    values = dict(zip(("total", "hard", "soft"), rows[step].tolist()))
    # Name the term that went bad; total only when hard and soft are fine (an objective's own extra term).
    term = next((t for t in (("hard", "soft") if distilling else ("hard",)) if not math.isfinite(values[t])), "total")
    raise NonFiniteLossError(
        f"training diverged: the {term} loss is {values[term]} at epoch {epoch}, step {step + 1} of {len(rows)}; "
        f"{kept}; {advice}", epoch, step + 1, term,
    )


class Callback:
    """Hooks the trainer calls outside the hot loop: once at the start of a run and once per epoch."""

    def on_fit_start(self, start_epoch: int, epochs: int) -> None:
        """After a resume state is restored, before the first epoch (nothing is written before this)."""

    def on_epoch_end(self, record: Dict[str, Any], epochs: int) -> None:
        """After the epoch's metrics and checkpoints are written."""


class EpochLog(Callback):
    """One line per epoch on stderr: the progress display for logs, pipes and CI, where a bar is noise.

    ``distill epoch 3/20: loss 0.4120, test acc 95.12%, 0.5 s``
    """

    def __init__(self, desc: str) -> None:
        self.desc = desc

    def on_epoch_end(self, record: Dict[str, Any], epochs: int) -> None:
        parts = [f"loss {record['loss_total']:.4f}"]
        if "val_acc" in record:
            parts.append(f"val acc {100 * record['val_acc']:.2f}%")
        parts.append(f"test acc {100 * record['test_acc']:.2f}%")
        seconds = record["seconds"] if "seconds" in record else record["train_seconds"] + record["eval_seconds"]
        parts.append(f"{seconds:.1f} s")
        print(f"{self.desc} epoch {record['epoch']}/{epochs}: {', '.join(parts)}", file=sys.stderr, flush=True)


def progress_display(progress: Optional[bool], desc: str) -> tuple[bool, List[Callback]]:
    """(show a tqdm bar, extra callbacks): a bar on a terminal or when forced, else one line per epoch.

    ``progress=False`` silences both.
    """
    if progress is None:
        tty = sys.stderr.isatty()
        return tty, [] if tty else [EpochLog(desc)]
    return progress, []


@dataclass
class FitResult:
    history: List[Dict[str, Any]]
    step_losses: Tensor  # (steps, 3): total, hard, soft (soft is NaN when not distilling)
    best_epoch: int
    best_metric: str
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> Dict[str, Any]:
        return self.history[-1]

    @property
    def best(self) -> Dict[str, Any]:
        return next(h for h in self.history if h["epoch"] == self.best_epoch)


def fit(
    model: nn.Module,
    data: DatasetSplits,
    cfg: TrainConfig,
    objective: DistillationObjective,
    *,
    seed: int = 0,
    teacher_signal: Optional[TeacherSignal] = None,
    run: Optional[RunDir] = None,
    checkpoint_meta: Optional[Dict[str, Any]] = None,
    resume: bool = False,
    progress: Optional[bool] = None,
    before_epoch: Optional[Callable[[int, DistillationObjective], None]] = None,
    desc: str = "train",
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs, evaluating after each.

    With ``run`` set, writes ``last.pt`` / ``best.pt`` checkpoints and ``metrics.jsonl`` every
    epoch (best by validation accuracy when a validation split exists, else by test accuracy —
    the choice is recorded as ``best_metric``). ``resume=True`` continues from the run's
    ``last.pt`` with the optimizer, scheduler, shuffle and RNG states it saved, or from epoch 1
    when the run was killed before its first checkpoint; ``best.pt`` and ``metrics.jsonl`` are
    then brought in line with ``last.pt`` and stale temporary files are removed. A non-finite
    loss raises :class:`NonFiniteLossError` before that epoch is saved.
    """
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.epochs)
    indexer = BatchIndexer(len(data.train), cfg.batch_size, shuffle=True, seed=seed)
    X, Y = data.train.x, data.train.y
    best_metric = "val_acc" if data.val is not None else "test_acc"
    best_value, best_epoch, start_epoch = -1.0, 0, 1
    history: List[Dict[str, Any]] = []
    step_rows: List[Tensor] = []
    state: Optional[Dict[str, Any]] = None

    if resume:
        if run is None:
            raise CheckpointError("resume needs a run folder holding last.pt")
        state = load_checkpoint(run.file("last.pt")) if run.file("last.pt").exists() else None
        if state is not None:
            try:
                model.load_state_dict(state["state_dict"])
                optimizer.load_state_dict(state["optimizer"])
                if scheduler is not None and state.get("scheduler") is not None:
                    scheduler.load_state_dict(state["scheduler"])
                indexer.generator.set_state(state["shuffle_rng"])
                torch.set_rng_state(state["torch_rng"])
                start_epoch = int(state["epoch"]) + 1
                best_value, best_epoch = float(state["best_value"]), int(state["best_epoch"])
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                raise CheckpointError(f"{run.file('last.pt')} cannot resume this run: {str(exc).splitlines()[0]}") from None
    show, extra_callbacks = progress_display(progress, desc)
    callbacks = [*callbacks, *extra_callbacks]
    # From here on the run may change files: the resume state (if any) is known to be usable.
    for cb in callbacks:
        cb.on_fit_start(start_epoch, cfg.epochs)
    if run is not None:
        run.remove_stale_temp_files()
        if resume:
            _sync_run_with_checkpoint(run, state, checkpoint_meta)
            history = [dict(m) for m in run.metrics]

    steps_per_epoch = len(indexer)
    bar = tqdm(
        total=cfg.epochs * steps_per_epoch,
        initial=(start_epoch - 1) * steps_per_epoch,
        desc=desc,
        disable=not show,
        leave=False,
        unit="step",
        mininterval=0.5,
    )
    clip = cfg.grad_clip
    fast = closed_form_step(objective, teacher_signal, Y, data.num_classes)
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if before_epoch is not None:
                before_epoch(epoch, objective)
            model.train()
            t0 = time.perf_counter()
            if fast is not None:
                fast.prepare_for(objective)
            epoch_values: List[Tensor] = []
            for idx in indexer.epoch():
                xb = X.index_select(0, idx)
                logits = model(xb)
                if fast is not None:  # closed-form objective: one backward entry, no loss graph
                    rows = fast.rows(idx) if fast.table is not None else fast.rows_for(Y.index_select(0, idx), teacher_signal(idx, xb))  # type: ignore[misc]
                    values, grad = fast(logits.detach(), rows)
                    optimizer.zero_grad(set_to_none=True)
                    logits.backward(grad)
                else:
                    tb = teacher_signal(idx, xb) if teacher_signal is not None else None
                    terms = objective(logits, Y.index_select(0, idx), tb)
                    optimizer.zero_grad(set_to_none=True)
                    terms["total"].backward()
                    values = torch.stack([terms["total"], terms["hard"], terms.get("soft", _NAN)]).detach()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                epoch_values.append(values)
                bar.update()
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
            train_seconds = time.perf_counter() - t0

            rows = torch.stack(epoch_values).float()
            check_finite(rows, epoch, teacher_signal is not None, model, run)
            step_rows.append(rows)
            t1 = time.perf_counter()
            test = evaluate(model, data.test, cfg.eval_batch_size)
            val = evaluate(model, data.val, cfg.eval_batch_size) if data.val is not None else None
            record = epoch_record(
                epoch, rows, test["acc"], test["loss"], lr,
                objective if teacher_signal is not None else None,
                None if val is None else (val["acc"], val["loss"]),
            )
            record["train_seconds"] = train_seconds
            record["eval_seconds"] = time.perf_counter() - t1
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            bar.set_postfix({best_metric: f"{record[best_metric]:.4f}"}, refresh=False)

            improved = record[best_metric] > best_value
            if improved:
                best_value, best_epoch = record[best_metric], epoch
            if run is not None:
                # last.pt first: it holds everything needed to redo best.pt and metrics.jsonl after a kill
                save_checkpoint(
                    run.file("last.pt"),
                    {
                        **(checkpoint_meta or {}),
                        "state_dict": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "shuffle_rng": indexer.generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "epoch": epoch,
                        "best_value": best_value,
                        "best_epoch": best_epoch,
                        "metrics": record,
                    },
                )
                if improved:
                    save_checkpoint(run.file("best.pt"), _best_payload(checkpoint_meta, model.state_dict(), epoch, record))
                run.log_epoch(record)
            for cb in callbacks:
                cb.on_epoch_end(record, cfg.epochs)
    finally:
        bar.close()
    steps = torch.cat(step_rows) if step_rows else torch.empty(0, 3)
    return FitResult(history, steps, best_epoch, best_metric)


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
