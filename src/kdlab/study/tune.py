"""``kdlab tune``: search T, loss weights or any recipe value with Optuna.

The objective is the distilled student's final-epoch accuracy on a validation split carved from
the training set — never the test set, which stays untouched for the final report. The study
lives in a database (SQLite by default), so an interrupted search resumes where it stopped and
several processes or machines pointed at the same URL share the work; ``trials`` is the number of
completed trials the study should reach, not the number this process runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..config import Recipe, apply_overrides, recipe_from_dict
from ..errors import ConfigError, KDLabError
from ..pipeline import distill_objective, prepare_data, train_role
from .teacher_cache import cached_teacher

ALIASES = {
    "T": "distill.temperature",
    "temperature": "distill.temperature",
    "soft_weight": "distill.soft_weight",
    "hard_weight": "distill.hard_weight",
    "lr": "student.train.optimizer.lr",
    "weight_decay": "student.train.optimizer.weight_decay",
    "batch_size": "student.train.batch_size",
}
DEFAULT_VAL_FRACTION = 0.1


@dataclass
class SearchParam:
    """``name=lo:hi`` (float range), ``name=lo:hi:log`` (log scale) or ``name=a,b,c`` (choices)."""

    name: str
    key: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: Optional[List[Any]] = None

    def grid(self, points: int) -> List[Any]:
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if points == 1:
            return [self.low]
        if self.log:
            a, b = math.log(self.low), math.log(self.high)
            return [math.exp(a + (b - a) * i / (points - 1)) for i in range(points)]
        return [self.low + (self.high - self.low) * i / (points - 1) for i in range(points)]


def parse_param(text: str) -> SearchParam:
    import yaml

    if "=" not in text:
        raise ConfigError(f"--param {text!r}: expected NAME=LOW:HIGH or NAME=A,B,C, e.g. --param T=1:10")
    name, spec = (x.strip() for x in text.split("=", 1))
    key = ALIASES.get(name, name)
    if ":" in spec:
        parts = spec.split(":")
        log = len(parts) == 3 and parts[2] == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
            raise ConfigError(f"--param {text!r}: a range is LOW:HIGH or LOW:HIGH:log")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"--param {text!r}: LOW and HIGH must be numbers") from None
        if not (math.isfinite(low) and math.isfinite(high)):  # float() accepts 'inf' and 'nan'
            raise ConfigError(f"--param {text!r}: LOW and HIGH must be finite numbers, got {parts[0]} and {parts[1]}")
        if not low < high:
            raise ConfigError(f"--param {text!r}: LOW must be < HIGH")
        if log and low <= 0:
            raise ConfigError(f"--param {text!r}: a log range needs LOW > 0")
        return SearchParam(name, key, low, high, log)
    choices = [yaml.safe_load(c) for c in spec.split(",") if c.strip()]
    if not choices:
        raise ConfigError(f"--param {text!r}: no values")
    return SearchParam(name, key, choices=choices)


@dataclass
class TuneResult:
    study_name: str
    storage: str
    best_params: Dict[str, Any]
    best_value: float
    trials: List[Dict[str, Any]]  # number, state, params, val_acc, seconds
    params: List[SearchParam]


def _storage_url(storage: str) -> str:
    """A database URL; a plain path becomes an SQLite file (its folder is created)."""
    if "://" in storage:
        return storage
    path = Path(storage).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _sampler(name: str, params: Sequence[SearchParam], seed: int, grid_points: int):
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler({p.name: p.grid(grid_points) for p in params}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}; choose one of: grid, random, tpe")


def _suggest(trial: Any, p: SearchParam) -> Any:
    if p.choices is not None:
        return trial.suggest_categorical(p.name, p.choices)
    return trial.suggest_float(p.name, p.low, p.high, log=p.log)


def tune(
    recipe: Recipe,
    params: Sequence[str | SearchParam],
    trials: int,
    sampler: str = "tpe",
    storage: str = "tune.db",
    study_name: Optional[str] = None,
    grid_points: int = 5,
    teacher_cache: Optional[str | os.PathLike] = None,
    progress: Optional[bool] = None,
    log=print,
) -> TuneResult:
    """Run trials until the study holds ``trials`` completed ones; returns the whole study."""
    try:
        import optuna
    except ImportError:
        raise KDLabError("tune needs Optuna: pip install 'kdlab[tune]'") from None
    space = [p if isinstance(p, SearchParam) else parse_param(p) for p in params]
    if not space:
        raise ConfigError("give at least one --param, e.g. --param T=1:10")
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    base = recipe.to_dict()
    for p in space:  # validate every key and both ends of every range before any training
        for value in (p.choices or [p.low, p.high]):
            recipe_from_dict(apply_overrides(base, [f"{p.key}={value!r}"]))
    if recipe.dataset.val_fraction == 0:
        recipe = dataclasses.replace(recipe, dataset=dataclasses.replace(recipe.dataset, val_fraction=DEFAULT_VAL_FRACTION))
        base = recipe.to_dict()
        log(f"tune: carving a {DEFAULT_VAL_FRACTION:.0%} validation split from the training set (the test set is not used)")
    data = prepare_data(recipe)
    cached = cached_teacher(recipe, data, teacher_cache, progress)
    log(f"teacher: {'reused' if cached.hit else 'trained and cached'} at {cached.path}")
    logits = cached.teacher.logits_for(data.train.x, recipe.teacher.train.eval_batch_size)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = _storage_url(storage)
    name = study_name or f"{recipe.name}-tune"
    try:
        study = optuna.create_study(
            study_name=name, storage=url, direction="maximize",
            sampler=_sampler(sampler, space, recipe.seed, grid_points), load_if_exists=True,
        )
    except Exception as exc:  # bad URL, unreachable database, locked file …
        raise ConfigError(f"cannot open study storage {url}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None

    def objective(trial: Any) -> float:
        values = {p.name: _suggest(trial, p) for p in space}
        r = recipe_from_dict(apply_overrides(base, [f"{p.key}={values[p.name]!r}" for p in space]))
        t0 = time.perf_counter()
        result = train_role(r, "student", "tune", data, distill_objective(r), out=False, progress=progress, teacher_logits=logits)
        val = float(result.fit.final["val_acc"])
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        log(f"trial {trial.number}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            + f" -> val acc {100 * val:.2f}%")
        return val

    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    if done < trials:
        stop = optuna.study.MaxTrialsCallback(trials, states=(optuna.trial.TrialState.COMPLETE,))
        study.optimize(objective, n_trials=trials - done, callbacks=[stop], catch=())
    rows = [
        {"number": t.number, "state": t.state.name, **t.params, "val_acc": t.value, "seconds": t.user_attrs.get("seconds")}
        for t in study.trials
    ]
    best = study.best_trial
    return TuneResult(name, url, dict(best.params), float(best.value), rows, space)


def tune_report(result: TuneResult, out: str | os.PathLike, plot: bool = True) -> Path:
    """trials.csv, best.json, report.md and (with matplotlib) val_acc_vs_<param>.png."""
    from ..utils import atomic_write_json, atomic_write_text
    from .report import csv_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "trials.csv", csv_text(result.trials))
    atomic_write_json(out / "best.json", {"study": result.study_name, "storage": result.storage,
                                          "best_params": result.best_params, "best_val_acc": result.best_value})
    names = [p.name for p in result.params]
    x_name = next((n for n in names if ALIASES.get(n, n) == "distill.temperature"), names[0])
    image = None
    if plot:
        image = f"val_acc_vs_{x_name}.png"
        _plot(result, x_name, out / image)
    lines = [f"# kdlab tune: {result.study_name}", "", f"Storage `{result.storage}`. Objective: final-epoch validation accuracy.", "",
             "Best: " + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in result.best_params.items())
             + f" → val acc {100 * result.best_value:.2f}%", "",
             "| trial | " + " | ".join(names) + " | val acc % | seconds |", "| ---: |" + " ---: |" * (len(names) + 2)]
    for row in result.trials:
        if row["state"] != "COMPLETE":
            continue
        cells = [f"{row[n]:.4g}" if isinstance(row.get(n), float) else str(row.get(n)) for n in names]
        lines.append(f"| {row['number']} | " + " | ".join(cells) + f" | {100 * row['val_acc']:.2f} | {row['seconds'] or 0:.1f} |")
    if image:
        lines += ["", f"![validation accuracy vs {x_name}]({image})"]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return out


def _plot(result: TuneResult, x_name: str, path: Path) -> None:
    from .plots import _pyplot, _save

    plt = _pyplot()
    done = [r for r in result.trials if r["state"] == "COMPLETE"]
    xs = [r[x_name] for r in done]
    ys = [100 * r["val_acc"] for r in done]
    others = [p.name for p in result.params if p.name != x_name and p.choices is None]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if others:
        sc = ax.scatter(xs, ys, c=[r[others[0]] for r in done], cmap="viridis", s=28)
        fig.colorbar(sc, ax=ax, label=others[0])
    else:
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        ax.plot([xs[i] for i in order], [ys[i] for i in order], "o-", ms=4)
    ax.set_xlabel(x_name)
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{result.study_name}: {len(done)} trials")
    _save(fig, path)
    plt.close(fig)
