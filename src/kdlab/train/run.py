"""One run specification and one builder: every command and the Python API train through :func:`run`.

A :class:`RunSpec` says what a run is — the model (or a grid of students), where its teacher
comes from, the method(s), the data, the train settings, the weight plan, callbacks and the run
folder. :func:`run` builds the trainer (:mod:`kdlab.train.build`), adds the callbacks every run
needs (loss shares, checkpoints, TensorBoard, progress; files on rank 0 only), resumes from the
folder's ``last.pt`` when asked and records ``config.yaml`` and ``run.json`` (the resolved settings,
versions, seed, host, and what kdlab chose for the run and why) once training can start.

Files are written once per epoch in the order ``last.pt`` → ``best.pt`` → ``metrics.jsonl``, each
atomically; ``last.pt`` carries the epoch's metrics record, so a resume after a kill at any point
rebuilds ``best.pt`` and ``metrics.jsonl`` from it, and stale temporary files are removed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..errors import CheckpointError
from ..methods.base import Distiller
from ..teacher import FrozenTeacher
from . import distributed
from .build import build_grid_trainer, build_trainer
from .callbacks import Callback, TensorBoardCallback, loss_share_note, epoch_progress, rank_zero, stderr_line, tensorboard_available
from .checkpoint import load_checkpoint, save_checkpoint
from .records import FitResult
from .rundir import RunDir
from .trainer import Trainer


@dataclass
class RunRecord:
    """What ``config.yaml`` and ``run.json`` say of a run: the resolved settings (YAML text), the kind
    of run (``teacher``, ``scratch``, ``distill``…) and facts (dataset, teacher, parameters)."""

    config_yaml: str
    kind: str
    info: Dict[str, Any] = field(default_factory=dict)
    #: Facts added to ``run.json`` after a successful fit (seconds, best epoch, notes).
    summary: bool = False


@dataclass
class RunSpec:
    """Everything a run is made of (see the module docstring). ``model`` and ``method`` for one
    student; ``grid``/``methods``/``seeds`` for a batched grid of students."""

    data: Any
    train: TrainConfig
    model: Optional[nn.Module] = None
    method: Optional[Distiller] = None
    seed: int = 0
    grid: Optional[Sequence[Sequence[nn.Module]]] = None
    methods: Sequence[Distiller] = ()
    seeds: Sequence[int] = ()
    teacher: Optional[FrozenTeacher] = None
    teacher_logits: Optional[Tensor] = None
    augment: Optional[Callable[..., Any]] = None
    weight_plan: Any = None
    callbacks: Sequence[Optional[Callback]] = ()
    #: The run folder, or a function making it once the trainer is built (so a refused run leaves none).
    run: Optional[RunDir | Callable[[], Optional[RunDir]]] = None
    checkpoint_meta: Dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    record: Optional[RunRecord] = None
    progress: Optional[bool] = None
    desc: str = "train"
    device: Optional[torch.device] = None
    steps: str = "auto"
    #: train from a stored teacher signal where the teacher would run on every batch (kdlab.train.stored)
    signals: Any = None


def run(spec: RunSpec) -> List[FitResult]:
    """Build and train the run ``spec`` describes; one :class:`FitResult` per student."""
    if spec.grid is not None:
        desc = spec.desc if spec.desc != "train" else f"{len(spec.methods)}x{len(spec.seeds)} students"
        trainer = build_grid_trainer(spec.grid, list(spec.methods), list(spec.seeds), spec.data, spec.train,
                                     teacher_logits=spec.teacher_logits, teacher=spec.teacher, signals=spec.signals,
                                     weight_plan=spec.weight_plan,
                                     callbacks=[*spec.callbacks, rank_zero(epoch_progress(spec.progress, desc, spec.train.epochs))])
        return trainer.fit()
    assert spec.model is not None and spec.method is not None
    if spec.resume and spec.run is None:
        raise CheckpointError("resume needs a run folder holding last.pt")
    if spec.augment is not None and spec.teacher_logits is not None and spec.method.needs.teacher:
        raise ValueError("augmented batches need the teacher model (it must see the same augmented images), not cached logits")
    shares = loss_share_note(spec.progress)
    # bad layer names, shapes or missing sample indices fail here, before a run folder is made
    trainer = build_trainer(spec.model, spec.method, spec.data, spec.train, seed=spec.seed, teacher=spec.teacher,
                            teacher_logits=spec.teacher_logits if spec.augment is None else None, augment=spec.augment,
                            callbacks=[*spec.callbacks, shares],  # loss shares before the records are written
                            device=spec.device, weight_plan=spec.weight_plan, steps=spec.steps, signals=spec.signals)
    try:
        run_dir = spec.run() if callable(spec.run) else spec.run
        if run_dir is not None:
            trainer.saved_note = lambda epoch: (f"kept the last good checkpoint {run_dir.file('last.pt')} (epoch {epoch - 1})"
                                                if epoch > 1 else "no checkpoint was written")
        trainer.callbacks.extend([  # files and progress: rank 0 only
            rank_zero(RecordRun(run_dir, spec.record, spec.seed, spec.resume) if run_dir is not None and spec.record else None),
            rank_zero(RunCallback(run_dir, spec.checkpoint_meta) if run_dir is not None else None),
            rank_zero(tensorboard_callback(run_dir.path, spec.train) if run_dir is not None else None),
            rank_zero(epoch_progress(spec.progress, spec.desc, spec.train.epochs))])
        state = _resume_state(trainer, run_dir) if spec.resume else None
        # From here on the run may change files: the resume state (if any) is known to be usable.
        if run_dir is not None:
            if distributed.is_main():  # under torchrun rank 0 alone repairs and writes the run folder
                run_dir.remove_stale_temp_files()
                if spec.resume:
                    _sync_run_with_checkpoint(run_dir, state, spec.checkpoint_meta)
            if spec.resume:
                trainer.histories = [[m for m in (dict(m) for m in run_dir.metrics) if m.get("epoch", 0) <= trainer.epoch]]
    except BaseException:
        trainer.close()  # no hook of ours stays on the user's models
        raise
    t0 = time.perf_counter()
    results = trainer.fit()
    if run_dir is not None and spec.record is not None and spec.record.summary and distributed.is_main():
        (result,) = results
        info = {"seconds": time.perf_counter() - t0, "best_epoch": result.best_epoch, "best_metric": result.best_metric}
        notes = [n for h in result.history for n in h.get("notes", [])]
        if notes:  # the loss-share note, kept in the run's summary too
            info["notes"] = notes
        run_dir.update_run_info(info)
    return results


def fit_grid(grid: Sequence[Sequence[nn.Module]], methods: Sequence[Distiller], seeds: Sequence[int], data: Any,
             cfg: TrainConfig, *, teacher_logits: Optional[Tensor] = None, teacher: Optional[FrozenTeacher] = None,
             signals: Any = None, callbacks: Sequence[Optional[Callback]] = (), weight_plan: Any = None,
             progress: Optional[bool] = False) -> List[List[FitResult]]:
    """Train ``grid[v][s]`` with ``methods[v]`` and the batch order of ``seeds[s]`` in one batched step
    (:func:`run` of a grid spec); returns ``results[v][s]`` and updates the students in place.

    The teacher side: ``teacher_logits`` (plain batches), or ``teacher`` and ``signals`` (a
    :class:`~kdlab.train.stored.SignalsPlan`: every student replays its views, the distilling ones
    read the teacher's outputs of those views from its store)."""
    flat = run(RunSpec(data=data, train=cfg, grid=grid, methods=methods, seeds=seeds, teacher_logits=teacher_logits,
                       teacher=teacher, signals=signals, callbacks=callbacks, weight_plan=weight_plan, progress=progress))
    V = len(methods)
    return [[flat[s * V + v] for s in range(len(seeds))] for v in range(V)]


def _resume_state(trainer: Trainer, run_dir: Optional[RunDir]) -> Optional[Dict[str, Any]]:
    assert run_dir is not None
    last = run_dir.file("last.pt")
    state = load_checkpoint(last) if last.exists() else None
    if state is not None:
        try:
            trainer.model.load_state_dict(state["state_dict"])
            trainer.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{last} cannot resume this run: {str(exc).splitlines()[0]}") from None
    return state


class RecordRun(Callback):
    """Writes ``config.yaml`` and ``run.json`` once training can start, so a refused resume writes nothing."""

    def __init__(self, run_dir: RunDir, record: RunRecord, seed: int, resumed: bool) -> None:
        self.run_dir, self.record, self.seed, self.resumed = run_dir, record, seed, resumed

    def on_fit_start(self, trainer: Trainer) -> None:
        self.run_dir.write_config(self.record.config_yaml)
        self.run_dir.write_run_info(self.seed, self.record.kind, {**self.record.info, **trainer.run_facts()}, resumed=self.resumed)


class RunCallback(Callback):
    """Writes ``last.pt`` (everything a resume needs), ``best.pt`` on improvement, then the epoch's
    line of ``metrics.jsonl`` — in that order, so ``last.pt`` can always repair the other two."""

    def __init__(self, run_dir: RunDir, meta: Dict[str, Any]) -> None:
        self.run, self.meta = run_dir, meta

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
        stderr_line("kdlab: note: tensorboard is not installed, so no TensorBoard event files are written "
                    "(pip install 'kdlab[tensorboard]'; set train.tensorboard=false to silence this)")
        return None
    return TensorBoardCallback(log_dir, names)


def _best_payload(meta: Optional[Dict[str, Any]], state_dict: Dict[str, Any], epoch: int, record: Dict[str, Any]) -> Dict[str, Any]:
    return {**(meta or {}), "state_dict": state_dict, "epoch": epoch, "metrics": record}


def _sync_run_with_checkpoint(run_dir: RunDir, state: Optional[Dict[str, Any]], meta: Optional[Dict[str, Any]]) -> None:
    """Bring ``best.pt`` and ``metrics.jsonl`` in line with ``last.pt`` after a kill at any point.

    A kill after ``last.pt`` of an improving epoch but before ``best.pt`` leaves ``best.pt`` one
    best behind: it is rewritten from ``last.pt`` (which holds that epoch's weights). Metrics
    after the checkpoint's epoch are dropped and its own record appended when missing. Without a
    ``last.pt`` (killed in epoch 1) the run starts over, so earlier metrics are dropped.
    """
    if state is None:
        run_dir.sync_metrics(0, None)
        return
    epoch = int(state["epoch"])
    record = state.get("metrics")
    if int(state["best_epoch"]) == epoch and isinstance(record, dict):
        best = run_dir.file("best.pt")
        best_epoch = None
        if best.exists():
            try:
                best_epoch = int(load_checkpoint(best).get("epoch", -1))
            except CheckpointError:
                best_epoch = None  # damaged: rewrite it from last.pt
        if best_epoch != epoch:
            save_checkpoint(best, _best_payload(meta, state["state_dict"], epoch, record))
    run_dir.sync_metrics(epoch, record if isinstance(record, dict) else None)
