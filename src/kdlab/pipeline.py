"""The library API behind every CLI command: train a teacher, a scratch student, or distill.

Each ``run_*`` function takes a validated :class:`Recipe`, writes a run folder (config, versions,
seed, metrics, checkpoints) and returns a :class:`RunResult`. The CLI only parses arguments and
prints; anything it does can be done from Python with these functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from torch import Tensor, nn

from .config import Recipe, dump_recipe
from .data import DatasetSplits, load_dataset
from .errors import ConfigError
from .losses import DistillationObjective
from .models import build_model, count_parameters
from .schedules import ScheduleHook
from .teacher import CachedTeacherLogits, FrozenTeacher, PrecomputedTeacherLogits
from .train import FitResult, RunDir, fit, load_model
from .train.checkpoint import model_payload
from .train.loop import Callback
from .train.rundir import check_new_run_folder, file_sha256
from .utils import check_output_location, seed_everything

ROLE_SEED_OFFSET = {"teacher": 0, "student": 1}


@dataclass
class RunResult:
    role: str
    path: Optional[Path]
    model: nn.Module
    fit: FitResult
    parameters: int

    @property
    def final_acc(self) -> float:
        return float(self.fit.final["test_acc"])

    @property
    def best_acc(self) -> float:
        return max(float(h["test_acc"]) for h in self.fit.history)


def prepare_data(recipe: Recipe) -> DatasetSplits:
    d = recipe.dataset
    return load_dataset(d.name, d.data_dir, d.download, d.val_fraction, recipe.seed)


def build_role_model(recipe: Recipe, role: str, data: DatasetSplits) -> nn.Module:
    """Build the teacher or student with seeded initial weights.

    The student seed does not depend on the loss, so scratch and distilled students start from
    identical weights and differ only in what they are trained on.
    """
    cfg = getattr(recipe, role).model
    seed_everything(recipe.seed + ROLE_SEED_OFFSET[role])
    return build_model(cfg.name, data.in_shape, data.num_classes, cfg.params, where=f"{role}.model")


def _run_dir(recipe: Recipe, role: str, out: Optional[str | os.PathLike], resume: bool) -> Optional[RunDir]:
    """The run folder: ``out`` (refused when it already holds a run, unless resuming) or a new one."""
    if out is False:  # type: ignore[comparison-overlap]
        return None
    if out:
        return RunDir(check_output_location(out, "run folder") if resume else check_new_run_folder(out))
    check_output_location(recipe.out_dir, "output folder (recipe out_dir)")
    return RunDir.new(recipe.out_dir, f"{recipe.name}-{role}")


class _RecordRun(Callback):
    """Writes ``config.yaml`` and ``run.json`` once training can start, so a refused resume writes nothing."""

    def __init__(self, run: RunDir, recipe: Recipe, kind: str, info: Dict[str, Any], resumed: bool) -> None:
        self.run, self.recipe, self.kind, self.info, self.resumed = run, recipe, kind, info, resumed

    def on_fit_start(self, start_epoch: int, epochs: int) -> None:
        self.run.write_config(dump_recipe(self.recipe))
        self.run.write_run_info(self.recipe.seed, self.kind, self.info, resumed=self.resumed)


def train_role(
    recipe: Recipe,
    role: str,
    kind: str,
    data: DatasetSplits,
    objective: DistillationObjective,
    out: Any,
    teacher: Optional[FrozenTeacher] = None,
    progress: Optional[bool] = None,
    resume: bool = False,
    extra_info: Optional[Dict[str, Any]] = None,
    teacher_logits: Optional[Tensor] = None,
) -> RunResult:
    """Build the ``role`` model with its seeded weights and train it with ``objective``.

    The teacher signal is ``teacher_logits`` (training-set logits computed once, e.g. shared by
    many students of a study) or, failing that, logits computed from ``teacher`` for this run.
    ``out`` must not already hold a run unless ``resume`` (then ``recipe`` should be the run's own,
    as the CLI's ``--resume`` ensures); ``config.yaml``/``run.json`` are written once training can start.
    """
    role_cfg = getattr(recipe, role)
    model = build_role_model(recipe, role, data)
    run = _run_dir(recipe, kind, out, resume)
    meta = model_payload(model, role_cfg.model.name, role_cfg.model.params, data.in_shape, data.num_classes)
    meta.pop("state_dict")
    callbacks = []
    if run is not None:
        info = {"dataset": data.name, "data_source": data.info.get("source"), "parameters": count_parameters(model), **(extra_info or {})}
        callbacks.append(_RecordRun(run, recipe, kind, info, resume))
    signal: Any = None
    if teacher_logits is not None:
        signal = PrecomputedTeacherLogits(teacher_logits)
    elif teacher is not None:
        signal = CachedTeacherLogits(teacher, data.train.x, role_cfg.train.eval_batch_size)
    seed_everything(recipe.seed + 100 + ROLE_SEED_OFFSET[role])  # dropout stream, independent of init
    result = fit(
        model,
        data,
        role_cfg.train,
        objective,
        seed=recipe.seed,
        teacher_signal=signal,
        run=run,
        checkpoint_meta=meta,
        resume=resume,
        progress=progress,
        before_epoch=ScheduleHook(recipe.distill, role_cfg.train.epochs) if signal is not None else None,
        desc=kind,
        callbacks=callbacks,
    )
    return RunResult(kind, run.path if run else None, model, result, count_parameters(model))


def run_teacher(recipe: Recipe, data: Optional[DatasetSplits] = None, out: Any = None, progress: Optional[bool] = None, resume: bool = False) -> RunResult:
    """Train the recipe's teacher on hard labels."""
    data = data or prepare_data(recipe)
    return train_role(recipe, "teacher", "teacher", data, DistillationObjective(), out, progress=progress, resume=resume)


def run_student(recipe: Recipe, data: Optional[DatasetSplits] = None, out: Any = None, progress: Optional[bool] = None, resume: bool = False) -> RunResult:
    """Train the recipe's student from scratch on hard labels (the baseline distillation must beat)."""
    data = data or prepare_data(recipe)
    return train_role(recipe, "student", "scratch", data, DistillationObjective(), out, progress=progress, resume=resume)


def load_teacher(path: str | os.PathLike, data: DatasetSplits) -> FrozenTeacher:
    """Load a teacher checkpoint and check it fits ``data``."""
    model, payload = load_model(path)
    spec = payload["model"]
    if int(spec["num_classes"]) != data.num_classes:
        raise ConfigError(
            f"class count mismatch: teacher {path} has {spec['num_classes']} outputs, dataset {data.name!r} has "
            f"{data.num_classes} classes; use a teacher trained on {data.name}"
        )
    if tuple(spec["in_shape"]) != tuple(data.in_shape):
        raise ConfigError(
            f"input shape mismatch: teacher {path} expects {tuple(spec['in_shape'])}, dataset {data.name!r} gives "
            f"{tuple(data.in_shape)}; use a teacher trained on {data.name}"
        )
    return FrozenTeacher(model)


def distill_objective(recipe: Recipe, loss: Optional[str] = None) -> DistillationObjective:
    """The recipe's objective; ``loss`` swaps the soft-loss coding (as ``kdlab compare`` does)."""
    d = recipe.distill
    return DistillationObjective(loss or d.loss, d.temperature, d.hard_weight, d.soft_weight)


def run_distill(
    recipe: Recipe,
    teacher: FrozenTeacher | nn.Module | str | os.PathLike | None = None,
    data: Optional[DatasetSplits] = None,
    out: Any = None,
    progress: Optional[bool] = None,
    resume: bool = False,
) -> RunResult:
    """Distill the recipe's student from ``teacher`` (a model, a checkpoint path, or None to train one)."""
    data = data or prepare_data(recipe)
    info: Dict[str, Any] = {}
    if teacher is None:
        teacher_run = run_teacher(recipe, data, None if out is None else Path(out) / "teacher", progress)
        info["teacher_run"] = str(teacher_run.path)
        teacher = teacher_run.model
        out = None if out is None else Path(out) / "student"
    elif isinstance(teacher, (str, os.PathLike)):
        path, teacher = teacher, load_teacher(teacher, data)
        info.update(teacher_checkpoint=str(Path(path).resolve()), teacher_sha256=file_sha256(path))  # checked on --resume
    frozen = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
    return train_role(recipe, "student", "distill", data, distill_objective(recipe), out, frozen, progress, resume, info)


@dataclass
class DemoResult:
    teacher: RunResult
    scratch: RunResult
    distilled: RunResult
    out: Path

    def table(self) -> str:
        rows = [("teacher", self.teacher), ("student (scratch)", self.scratch), ("student (distilled)", self.distilled)]
        lines = ["| model | parameters | final test acc | best test acc | seconds |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, r in rows:
            secs = sum(h["train_seconds"] + h["eval_seconds"] for h in r.fit.history)
            lines.append(f"| {name} | {r.parameters:,} | {100 * r.final_acc:.2f}% | {100 * r.best_acc:.2f}% | {secs:.1f} |")
        return "\n".join(lines)


def run_demo(recipe: Recipe, out: Optional[str | os.PathLike] = None, progress: Optional[bool] = None) -> DemoResult:
    """Teacher, scratch student and distilled student on one dataset, in one run folder."""
    data = prepare_data(recipe)
    root = RunDir(check_new_run_folder(out, "choose another --out")) if out else RunDir.new(recipe.out_dir, f"{recipe.name}-demo")
    root.write_config(dump_recipe(recipe))
    teacher = run_teacher(recipe, data, root.path / "teacher", progress)
    scratch = run_student(recipe, data, root.path / "scratch", progress)
    distilled = run_distill(recipe, teacher.model, data, root.path / "distill", progress)
    return DemoResult(teacher, scratch, distilled, root.path)
