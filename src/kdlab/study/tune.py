"""``kdlab tune``: search T, loss weights or any recipe value with Optuna.

The objective is the distilled student's final-epoch accuracy on a validation split carved from
the training set — never the test set, which stays untouched for the final report. The study
lives in a database (SQLite by default), so an interrupted search resumes where it stopped and
several processes or machines pointed at the same URL share the work; ``trials`` is the number of
completed trials the study should reach, not the number this process runs (workers started at the
same moment create the study safely and stop at exactly that many). What the trials depend on —
search space, sampler, recipe, data — is stored with the study; joining it with other settings is
refused, so results of different searches never mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import yaml

from ..config import Recipe
from ..recipes import apply_overrides, recipe_from_dict
from ..errors import ConfigError, KDLabError
from ..pipeline import distill_method, load_teacher, plan_threads_for, prepare_data, run_teacher, train_role
from ..train.records import NonFiniteLossError
from ..data import data_fingerprint
from ..utils import atomic_write_json, atomic_write_text, check_output_location
from ..teacher_cache import cached_teacher, check_teacher_cache
from .plots import pyplot, save_png
from .report import csv_text

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: study creation is only retried, not locked)
    fcntl = None  # type: ignore[assignment]

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
CREATE_ATTEMPTS = 5
HEARTBEAT_SECONDS = 10


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


def _sqlite_path(storage: str) -> Optional[Path]:
    """The SQLite file behind ``storage`` (a plain path or ``sqlite:///`` URL); None for other databases."""
    if "://" not in storage:
        return Path(storage).expanduser()
    if storage.startswith("sqlite:///"):
        rest = storage[len("sqlite:///"):]
        return Path(rest).expanduser() if rest and not rest.startswith(":memory:") else None
    return None


def check_storage(storage: str) -> None:
    """One line now, before any training, when an SQLite storage path cannot hold the study."""
    path = _sqlite_path(storage)
    if path is None:
        return
    if path.is_dir():
        raise KDLabError(f"tune storage {path} is a folder; pass a file path such as {path / 'study.db'}")
    check_output_location(path.parent, "tune storage folder")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise KDLabError(f"tune storage {path} is not writable (permission denied); fix its permissions or pass another --storage")


def _storage_url(storage: str) -> str:
    """A database URL; a plain path becomes an SQLite file (its folder is created)."""
    if "://" in storage:
        return storage
    path = Path(storage).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Recipe keys that cannot change a trial's result (where files go, what the recipe is called).
_NEUTRAL_KEYS = ("name", "out_dir", "dataset.data_dir", "dataset.download")


def study_settings(recipe_dict: Dict[str, Any], space: Sequence[SearchParam], sampler: str, grid_points: int,
                   fingerprint: str) -> Dict[str, Any]:
    """What a study's trials depend on, stored in its user attrs: a resumed study must match it.

    The searched keys are left out of the recipe (every trial sets them), as are keys that do not
    affect results; the data are identified by content, not by folder.
    """
    searched = {p.key for p in space}
    recipe = {k: v for k, v in _flat(recipe_dict).items()
              if k not in _NEUTRAL_KEYS and not any(k == s or k.startswith(s + ".") for s in searched)}
    return {
        "space": [{"name": p.name, "key": p.key, "low": p.low, "high": p.high, "log": p.log, "choices": p.choices} for p in space],
        "sampler": sampler,
        "grid_points": grid_points if sampler == "grid" else None,
        "recipe": recipe,
        "data_fingerprint": fingerprint,
    }


def _settings_difference(stored: Dict[str, Any], wanted: Dict[str, Any]) -> Optional[str]:
    """None when equal, else a short description of the first kind of difference."""
    stored, wanted = json.loads(json.dumps(stored)), json.loads(json.dumps(wanted))
    if stored.get("space") != wanted["space"]:
        show = lambda sp: " ".join(  # noqa: E731
            f"{p['name']}={','.join(map(str, p['choices']))}" if p["choices"] is not None
            else f"{p['name']}={p['low']:g}:{p['high']:g}{':log' if p['log'] else ''}" for p in sp or [])
        return f"search space (it has --param {show(stored.get('space'))}, this run asks for {show(wanted['space'])})"
    for key in ("sampler", "grid_points", "data_fingerprint"):
        if stored.get(key) != wanted[key]:
            return f"{key.replace('_', ' ')} ({stored.get(key)} vs {wanted[key]})"
    old, new = stored.get("recipe") or {}, wanted["recipe"]
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if keys:
        return "recipe (" + ", ".join(f"{k}: {old.get(k)!r} vs {new.get(k)!r}" for k in keys[:4]) + (", ..." if len(keys) > 4 else "") + ")"
    return None


@contextlib.contextmanager
def _file_lock(path: Optional[Path]) -> Iterator[None]:
    """Serialise study creation between workers sharing one SQLite file (no-op without one)."""
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def open_study(storage: str, name: str, sampler: Any, settings: Dict[str, Any]) -> tuple[Any, bool]:
    """Create the study or join it, safely when several workers start at the same moment.

    Optuna's ``create_study(load_if_exists=True)`` can still race on a fresh database (two workers
    creating the tables or the study row at once → IntegrityError). On SQLite, creation is done
    under a file lock next to the database; on server databases, a lost race is retried as a
    ``load_study``. The study's settings are stored in its user attrs on creation and checked on
    every join, so a changed search space never mixes into an existing study. Returns
    ``(study, created)``.
    """
    import optuna  # optional: optuna

    url = _storage_url(storage)
    sqlite = _sqlite_path(storage)
    for attempt in range(CREATE_ATTEMPTS):
        try:
            with _file_lock(sqlite):
                with warnings.catch_warnings():  # heartbeats are marked experimental; a warning would break one-line output
                    warnings.simplefilter("ignore")
                    rdb = optuna.storages.RDBStorage(
                        url,
                        engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
                        heartbeat_interval=HEARTBEAT_SECONDS,  # a killed worker's trial is failed, not RUNNING forever
                    )
                study = optuna.create_study(study_name=name, storage=rdb, direction="maximize", sampler=sampler,
                                            load_if_exists=True)
                stored = study.user_attrs.get("kdlab_settings")
                created = stored is None
                if created:
                    study.set_user_attr("kdlab_settings", settings)
                    stored = settings
            break
        except Exception as exc:  # bad URL, unreachable database, corrupt file, lost creation race …
            race = isinstance(exc, optuna.exceptions.DuplicatedStudyError) or any(
                w in f"{type(exc).__name__} {exc}" for w in ("IntegrityError", "already exists", "database is locked"))
            if not race or attempt == CREATE_ATTEMPTS - 1:
                raise ConfigError(f"cannot open study storage {url}: {type(exc).__name__}: {str(exc).splitlines()[0]}; "
                                  "check the path or URL (a plain path makes an SQLite file)") from None
            time.sleep(0.2 * (attempt + 1))
    diff = _settings_difference(stored, settings)
    if diff is not None:
        raise ConfigError(f"study {name!r} in {url} was created with a different {diff}; repeat the original settings "
                          "to resume it, or pass a new --study-name (or --storage) to start a new study")
    return study, created


def _sampler(name: str, params: Sequence[SearchParam], seed: int, grid_points: int):
    import optuna  # optional: optuna

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
        import optuna  # optional: optuna
    except ImportError:
        raise KDLabError("tune needs Optuna: pip install 'kdlab[tune]'") from None
    space = [p if isinstance(p, SearchParam) else parse_param(p) for p in params]
    if not space:
        raise ConfigError("give at least one --param, e.g. --param T=1:10")
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if grid_points < 1:
        raise ConfigError(f"--grid-points must be >= 1, got {grid_points}")
    check_storage(storage)
    check_teacher_cache(teacher_cache)
    base = recipe.to_dict()
    for p in space:  # validate every key and both ends of every range before any training
        for value in (p.choices or [p.low, p.high]):
            recipe_from_dict(apply_overrides(base, [f"{p.key}={value!r}"]))
    if recipe.dataset.val_fraction == 0:
        recipe = dataclasses.replace(recipe, dataset=dataclasses.replace(recipe.dataset, val_fraction=DEFAULT_VAL_FRACTION))
        base = recipe.to_dict()
        log(f"tune: carving a {DEFAULT_VAL_FRACTION:.0%} validation split from the training set (the test set is not used)")
    data = prepare_data(recipe)
    plan_threads_for(recipe, data, "student")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name or f"{recipe.name}-tune"
    settings = study_settings(base, space, sampler, grid_points, data_fingerprint(data))
    study, created = open_study(storage, name, _sampler(sampler, space, recipe.seed, grid_points), settings)
    if not created:  # joining or resuming: a sampler seeded like the first worker's would re-propose its trials
        study.sampler = _sampler(sampler, space, hash((recipe.seed, len(study.trials), os.getpid())) % 2**31, grid_points)
    url = _storage_url(storage)

    cached = cached_teacher(recipe, data, teacher_cache, progress, log, train=run_teacher, load=load_teacher)
    log(cached.describe())
    logits = cached.teacher.logits_for(data.train.x, recipe.teacher.train.eval_batch_size)
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    failures: List[int] = []  # trials of this worker whose training diverged (recorded as FAIL)

    def objective(trial: Any) -> float:
        # Several workers may start a trial at once; the storage numbers trials atomically, so a trial
        # with ``trials`` complete-or-running trials before it is one too many: it stops its worker.
        ahead = [t for t in trial.study.get_trials(deepcopy=False, states=counted) if t.number < trial.number]
        if len(ahead) >= trials:
            trial.study.stop()
            raise optuna.TrialPruned(f"the study already has {trials} complete or running trials")
        values = {p.name: _suggest(trial, p) for p in space}
        r = recipe_from_dict(apply_overrides(base, [f"{p.key}={values[p.name]!r}" for p in space]))
        t0 = time.perf_counter()
        try:
            result = train_role(r, "student", "tune", data, distill_method(r), out=False, progress=progress, teacher_logits=logits)
        except NonFiniteLossError as exc:  # a diverging setting is a result of the search, not a crash
            failures.append(trial.number)
            log(f"trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in values.items()) + f" -> diverged ({exc.term} "
                f"loss non-finite at epoch {exc.epoch}, step {exc.step}); recorded as failed")
            if len(failures) >= max(trials, 3):
                trial.study.stop()
            raise
        val = float(result.fit.final["val_acc"])
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        log(f"trial {trial.number}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            + f" -> val acc {100 * val:.2f}%")
        return val

    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    if done < trials:
        # MaxTrialsCallback stops after a trial once the study has ``trials`` complete ones; the check in
        # ``objective`` keeps concurrent workers from overshooting by starting one more each.
        stop = optuna.study.MaxTrialsCallback(trials, states=(optuna.trial.TrialState.COMPLETE,))
        study.optimize(objective, callbacks=[stop], catch=(NonFiniteLossError,))
        if failures and not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
            raise KDLabError(f"every trial diverged ({len(failures)} in this worker); narrow the ranges (e.g. a lower lr) "
                             "or set student.train.grad_clip")
    rows = [
        {"number": t.number, "state": t.state.name, **t.params, "val_acc": t.value, "seconds": t.user_attrs.get("seconds")}
        for t in study.trials
    ]
    best = study.best_trial
    return TuneResult(name, url, dict(best.params), float(best.value), rows, space)


def tune_report(result: TuneResult, out: str | os.PathLike, plot: bool = True) -> Path:
    """trials.csv, best.json, report.md and (with matplotlib) val_acc_vs_<param>.png."""
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
    plt = pyplot()
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
    save_png(fig, path)
    plt.close(fig)
