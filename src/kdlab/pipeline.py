"""The library API behind every CLI command: train a teacher, a scratch student, or distill.

Each ``run_*`` function takes a validated :class:`Recipe`, writes a run folder (config, versions,
seed, metrics, checkpoints) and returns a :class:`RunResult`. The CLI only parses arguments and
prints; anything it does can be done from Python with these functions.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

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
from .utils import seed_everything

if TYPE_CHECKING:
    from .study.compare import CompareResult
    from .study.stats import PairedComparison, Summary

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


def _run_dir(recipe: Recipe, role: str, out: Optional[str | os.PathLike]) -> Optional[RunDir]:
    if out is False:  # type: ignore[comparison-overlap]
        return None
    return RunDir(out) if out else RunDir.new(recipe.out_dir, f"{recipe.name}-{role}")


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
    """
    role_cfg = getattr(recipe, role)
    model = build_role_model(recipe, role, data)
    run = _run_dir(recipe, kind, out)
    meta = model_payload(model, role_cfg.model.name, role_cfg.model.params, data.in_shape, data.num_classes)
    meta.pop("state_dict")
    if run is not None:
        run.write_config(dump_recipe(recipe))
        run.write_run_info(
            recipe.seed,
            kind,
            {"dataset": data.name, "data_source": data.info.get("source"), "parameters": count_parameters(model), **(extra_info or {})},
        )
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
        info["teacher_checkpoint"] = str(teacher)
        teacher = load_teacher(teacher, data)
    frozen = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
    return train_role(recipe, "student", "distill", data, distill_objective(recipe), out, frozen, progress, resume, info)


@dataclass
class DemoResult:
    """Teacher, scratch and distilled students over several seeds, sharing one teacher.

    Scratch and distilled students of a seed start from the same weights and see the same batches,
    so their difference is paired by seed: the seed-to-seed noise they share cancels out.
    """

    recipe: Recipe
    study: "CompareResult"
    teacher_parameters: int
    student_parameters: int
    wall_seconds: float
    out: Path

    @property
    def seeds(self) -> List[int]:
        return list(self.study.seeds)

    @property
    def teacher_acc(self) -> float:
        return float(self.study.teacher["test_acc"])

    @property
    def scratch_acc(self) -> List[float]:
        """Final-epoch test accuracy of the scratch student, one per seed."""
        return [r.final_acc for r in self.study.of(DEMO_SCRATCH)]

    @property
    def distilled_acc(self) -> List[float]:
        """Final-epoch test accuracy of the distilled student, one per seed."""
        return [r.final_acc for r in self.study.of(self.recipe.distill.loss)]

    @property
    def scratch(self) -> "Summary":
        from .study.stats import summarize

        return summarize(self.scratch_acc)

    @property
    def distilled(self) -> "Summary":
        from .study.stats import summarize

        return summarize(self.distilled_acc)

    @property
    def gain(self) -> "PairedComparison":
        """distilled − scratch over matched seeds, with a paired-t 95% interval."""
        from .study.stats import paired

        return paired(self.distilled_acc, self.scratch_acc)

    @property
    def wins(self) -> int:
        """Seeds on which the distilled student ends strictly above its scratch twin."""
        return sum(d > s for d, s in zip(self.distilled_acc, self.scratch_acc))

    @property
    def ties(self) -> int:
        return sum(d == s for d, s in zip(self.distilled_acc, self.scratch_acc))

    @property
    def student_seconds(self) -> float:
        return sum(r.wall_seconds for r in self.study.runs.values())

    @property
    def teacher_seconds(self) -> float:
        """Teacher training or loading plus its logits: the study's time not spent on students."""
        return max(self.study.wall_seconds - self.student_seconds, 0.0)

    def verdict(self) -> str:
        """What the interval says, in words (the interval, not the mean, decides)."""
        g = self.gain.diff
        if g.n < 2:
            return "one seed gives no interval; run --seeds 10"
        if g.ci_low > 0:
            return "distillation helps: the whole 95% interval is above zero"
        if g.ci_high < 0:
            return "distillation hurts with this setting: the whole 95% interval is below zero"
        return f"no clear difference at {g.n} seeds: the 95% interval includes zero (try more --seeds)"

    def table(self) -> str:
        n = len(self.seeds)
        first, last = self.seeds[0], self.seeds[-1]
        sc, di, g = self.scratch, self.distilled, self.gain.diff
        lines = [
            "| model | parameters | final test acc % | seeds |",
            "| --- | ---: | ---: | ---: |",
            f"| teacher | {self.teacher_parameters:,} | {100 * self.teacher_acc:.2f} | 1 (seed {first}) |",
            f"| student, scratch | {self.student_parameters:,} | {_mean_std(sc)} | {n} ({first}–{last}) |",
            f"| student, distilled | {self.student_parameters:,} | {_mean_std(di)} | {n} ({first}–{last}) |",
            "",
            f"distilled − scratch (paired by seed): {100 * g.mean:+.2f} points, 95% CI "
            + (f"[{100 * g.ci_low:+.2f}, {100 * g.ci_high:+.2f}]" if g.n > 1 else "n/a")
            + f"; distilled ahead on {self.wins}/{n} seeds"
            + (f" ({self.ties} tied)" if self.ties else ""),
            "per seed, distilled − scratch (points): "
            + ", ".join(f"{s}: {100 * (d - c):+.2f}" for s, d, c in zip(self.seeds, self.distilled_acc, self.scratch_acc)),
            self.verdict() + ".",
            f"wall time {self.wall_seconds:.1f} s: teacher {self.teacher_seconds:.1f} s "
            f"({'reused from the cache' if self.study.teacher['reused'] else 'trained, now cached'}), "
            f"{2 * n} students {self.student_seconds:.1f} s ({self.study.mode})",
        ]
        return "\n".join(lines)

    def summary(self) -> Dict[str, Any]:
        """Everything the table shows, at full precision (written to demo.json)."""
        g = self.gain
        return {
            "recipe": self.recipe.name,
            "dataset": self.recipe.dataset.name,
            "loss": self.recipe.distill.loss,
            "seeds": self.seeds,
            "teacher": {**self.study.teacher, "parameters": self.teacher_parameters},
            "student_parameters": self.student_parameters,
            "per_seed": [{"seed": s, "scratch_acc": c, "distilled_acc": d}
                         for s, c, d in zip(self.seeds, self.scratch_acc, self.distilled_acc)],
            "scratch": dataclasses.asdict(self.scratch),
            "distilled": dataclasses.asdict(self.distilled),
            "distilled_minus_scratch": {**dataclasses.asdict(g.diff), "t_stat": g.t_stat, "p_value": g.p_value},
            "wins": self.wins,
            "ties": self.ties,
            "mode": self.study.mode,
            "teacher_seconds": self.teacher_seconds,
            "student_seconds": self.student_seconds,
            "wall_seconds": self.wall_seconds,
        }


DEMO_SCRATCH = "scratch"


def _mean_std(s: "Summary") -> str:
    return f"{100 * s.mean:.2f} ± {100 * s.std:.2f}" if s.n > 1 else f"{100 * s.mean:.2f}"


def run_demo(
    recipe: Recipe,
    seeds: int = 10,
    out: Optional[str | os.PathLike] = None,
    progress: Optional[bool] = None,
    teacher_cache: Optional[str | os.PathLike] = None,
    plots: bool = False,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """One teacher, then a scratch and a distilled student for each of ``seeds`` seeds.

    The students are trained by :func:`kdlab.study.compare.compare` (batched when the student
    allows it, so several seeds cost little more than one), the teacher comes from the teacher
    cache. The run folder gets compare's report plus ``demo.md`` (the printed table) and
    ``demo.json`` (its numbers at full precision).
    """
    from .study.compare import compare
    from .study.report import write_report
    from .utils import atomic_write_json, atomic_write_text, check_output_location

    if seeds < 2:
        raise ConfigError(f"--seeds must be >= 2 so the demo can give an interval, got {seeds}; e.g. --seeds 10")
    path = Path(out) if out else RunDir.fresh_path(recipe.out_dir, f"{recipe.name}-demo")
    check_output_location(path, "demo output folder")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"demo output folder {path} already exists and is not empty; pass a new --out (or omit it)")
    start = time.perf_counter()
    data = prepare_data(recipe)
    study = compare(recipe, [recipe.distill.loss], seeds, data=data, teacher_cache=teacher_cache, progress=progress, log=log)
    teacher_parameters = count_parameters(build_role_model(recipe, "teacher", data))
    student_parameters = count_parameters(build_role_model(recipe, "student", data))
    result = DemoResult(recipe, study, teacher_parameters, student_parameters, 0.0, path)
    write_report(study, path, plots=plots)
    result.wall_seconds = time.perf_counter() - start
    atomic_write_json(path / "demo.json", result.summary())
    atomic_write_text(path / "demo.md", f"# kdlab demo: {recipe.name}\n\n{result.table()}\n")
    return result
