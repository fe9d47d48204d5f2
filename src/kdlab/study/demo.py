"""``kdlab demo``: does distillation help? One teacher, then scratch and distilled students over
several seeds, paired by seed, with the difference's 95% interval.

A single seed on the 360-image digits test set cannot tell a real gain from noise (one image is
0.28 points); pairing seeds that share initial weights and batch order cancels the noise they
share. The students are trained by :func:`kdlab.study.compare.compare` (batched), the teacher
comes from the teacher cache.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..config import Recipe
from ..errors import ConfigError
from ..models import count_parameters
from ..pipeline import build_role_model, prepare_data
from ..train.rundir import RunDir
from ..utils import atomic_write_json, atomic_write_text, check_output_location
from .compare import CompareResult, compare
from .stats import PairedComparison, Summary, paired, summarize


@dataclass
class DemoResult:
    """Teacher, scratch and distilled students over several seeds, sharing one teacher.

    Scratch and distilled students of a seed start from the same weights and see the same batches,
    so their difference is paired by seed: the seed-to-seed noise they share cancels out.
    """

    recipe: Recipe
    study: CompareResult
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
    def scratch(self) -> Summary:
        return summarize(self.scratch_acc)

    @property
    def distilled(self) -> Summary:
        return summarize(self.distilled_acc)

    @property
    def gain(self) -> PairedComparison:
        """distilled − scratch over matched seeds, with a paired-t 95% interval."""
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
            return f"one seed gives no interval; run --seeds {DEMO_SEEDS}"
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
DEMO_SEEDS = 20  # the default --seeds: batched, 20 seeds cost little more than 10 and narrow the interval


def _mean_std(s: Summary) -> str:
    return f"{100 * s.mean:.2f} ± {100 * s.std:.2f}" if s.n > 1 else f"{100 * s.mean:.2f}"


def run_demo(
    recipe: Recipe,
    seeds: int = DEMO_SEEDS,
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
    from .report import write_report  # start-up time: the CLI imports this module at start (DEMO_SEEDS)

    if seeds < 2:
        raise ConfigError(f"--seeds must be >= 2 so the demo can give an interval, got {seeds}; e.g. --seeds {DEMO_SEEDS}")
    path = Path(out) if out else RunDir.fresh_path(recipe.out_dir, f"{recipe.name}-demo")
    check_output_location(path, "demo output folder")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"demo output folder {path} already exists and is not empty; pass a new --out (or omit it)")
    start = time.perf_counter()
    data = prepare_data(recipe)
    study = compare(recipe, [recipe.distill.loss], seeds, data=data, teacher_cache=teacher_cache, progress=progress, log=log,
                    profile=False)
    teacher_parameters = count_parameters(build_role_model(recipe, "teacher", data))
    student_parameters = count_parameters(build_role_model(recipe, "student", data))
    result = DemoResult(recipe, study, teacher_parameters, student_parameters, 0.0, path)
    write_report(study, path, plots=plots)
    result.wall_seconds = time.perf_counter() - start
    atomic_write_json(path / "demo.json", result.summary())
    atomic_write_text(path / "demo.md", f"# kdlab demo: {recipe.name}\n\n{result.table()}\n")
    return result
