"""The cache's entries: find a trusted one, or train the teacher into it (see :mod:`kdlab.teacher_cache`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol

from torch import nn

from ..config import Recipe
from ..data import DatasetSplits
from ..errors import KDLabError
from ..teacher import FrozenTeacher, TeacherEnsemble
from ..train import distributed
from ..train.checkpoint import load_checkpoint, model_from_payload
from ..train.records import evaluate
from ..utils import atomic_write_json, check_output_location, file_digest, os_error_reason
from .keys import key_digest, normal, teacher_cache_path, teacher_cache_root, teacher_key
from .lock import entry_lock

KEY_FILE = "key.json"
ENTRY_FILE = "entry.json"


class TrainedTeacher(Protocol):
    """What training a teacher returns (``kdlab.pipeline.RunResult``)."""

    model: nn.Module

    @property
    def final_acc(self) -> float: ...


class TrainTeacher(Protocol):
    """Trains the recipe's teacher into the run folder ``out`` (``kdlab.pipeline.run_teacher``)."""

    def __call__(self, recipe: Recipe, data: DatasetSplits, *, out: Path, progress: Optional[bool],
                 resume: bool) -> TrainedTeacher: ...


class LoadTeacher(Protocol):
    """Loads a teacher checkpoint and checks it fits ``data`` (``kdlab.pipeline.load_teacher``)."""

    def __call__(self, path: str | os.PathLike, data: DatasetSplits) -> FrozenTeacher: ...


def check_teacher_cache(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """One-line error now (before any training) when the cache folder cannot be written."""
    return check_output_location(teacher_cache_root(cache_dir), "teacher cache")


@dataclass
class CachedTeacher:
    teacher: FrozenTeacher
    path: Path
    hit: bool  # True when no training was needed
    test_acc: float  # of exactly this teacher (the weights returned), on this data's test split
    waited: bool = False  # another process held the entry (was training it) when we asked
    members: List["CachedTeacher"] = field(default_factory=list)  # the recipe's teachers, when several

    @property
    def paths(self) -> List[Path]:
        """Every cache entry behind this teacher (one, or one per member)."""
        return [m.path for m in self.members] or [self.path]

    @property
    def checkpoints(self) -> List[Path]:
        """The checkpoint file of every teacher behind this one (a cache entry's ``last.pt``, or the
        recipe's own ``checkpoint``), as ``--resume`` checks them."""
        return [p if p.is_file() else p / "last.pt" for p in self.paths]

    def describe(self) -> str:
        """One line for the user: which teacher is used, where it came from, how good it is."""
        if self.members:
            parts = ", ".join(f"{100 * m.test_acc:.2f}% ({'checkpoint' if m.path.is_file() else 'reused' if m.hit else 'trained'})"
                              for m in self.members)
            return f"teacher: {len(self.members)} teachers [{parts}], test acc of their mean {100 * self.test_acc:.2f}%"
        how = "reused from the cache" if self.hit else "trained and cached"
        if self.path.is_file():
            return f"teacher: checkpoint {self.path}, test acc {100 * self.test_acc:.2f}% (measured now)"
        if self.waited:
            how += " (after waiting for another process)"
        return f"teacher: {how} at {self.path}, test acc {100 * self.test_acc:.2f}%"




def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _checkpoint_fits(payload: Dict[str, Any], recipe: Recipe, data: DatasetSplits) -> bool:
    """The checkpoint says it is this recipe's teacher for this data's shape and classes."""
    expected = {"name": recipe.teacher.model.name, "params": dict(recipe.teacher.model.params),
                "in_shape": list(data.in_shape), "num_classes": data.num_classes}
    return payload.get("role", "teacher") == "teacher" and normal(payload.get("model")) == normal(expected)


def _load_verified(path: Path, key: Dict[str, Any], recipe: Recipe, data: DatasetSplits, finished: bool):
    """(payload, model) of the entry's ``last.pt`` if it provably holds ``key``'s teacher, else None.

    ``finished=True`` also demands ``entry.json`` with the checkpoint's sha256 and all epochs done.
    """
    last = path / "last.pt"
    if normal(_read_json(path / KEY_FILE)) != normal(key) or not last.is_file():
        return None
    if finished:
        entry = _read_json(path / ENTRY_FILE)
        if not isinstance(entry, dict) or entry.get("key_digest") != key_digest(key) or entry.get("checkpoint_sha256") != file_digest(last):
            return None
    try:
        payload = load_checkpoint(last)
        if not _checkpoint_fits(payload, recipe, data):
            return None
        epoch = int(payload["epoch"])
        float(payload["metrics"]["test_acc"])
        if finished and epoch < recipe.teacher.train.epochs:
            return None
        return payload, model_from_payload(payload, last)
    except (KDLabError, KeyError, TypeError, ValueError):
        return None  # a damaged or foreign entry is retrained, not trusted


def _set_aside(path: Path, log: Callable[[str], None]) -> None:
    """Move an entry that cannot be trusted out of the way (kept for inspection, never reused)."""
    if not path.exists():
        return
    if not (path / "last.pt").exists():
        shutil.rmtree(path)  # nothing trained yet: only config files of an interrupted start
        return
    aside = path.with_name(f"{path.name}.rejected-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    log(f"teacher: cache entry {path} does not hold this teacher (foreign or stale checkpoint); moved it to {aside} and retraining")


def announce_training(recipe: Recipe, data: DatasetSplits, root: Path, done: int, progress: Optional[bool], why: str = "") -> str:
    """The line printed (on stderr, terminal or not) before the cache trains a teacher: why, and how much work.

    The size is stated as epochs of steps, which is exact; a duration would be a guess before any
    step has run, so the progress display gives the time left once steps are timed.
    """
    t = recipe.teacher
    epochs, steps = t.train.epochs, -(-len(data.train) // t.train.batch_size)
    what = f"teacher {t.model.name} for {recipe.dataset.name} (seed {recipe.seed})"
    if done:
        head = f"resuming the interrupted training of {what} in the teacher cache {root} at epoch {done}/{epochs}"
    else:
        head = f"{what} is not in the teacher cache {root}{f' ({why})' if why else ''}; training it first"
    size = f"{epochs - done} epoch{'s' if epochs - done != 1 else ''} of {steps} steps (batch {t.train.batch_size})"
    tail = "" if progress is False else "; the time left is shown as it trains"
    return f"kdlab: {head}: {size}{tail}"


def cached_teacher(
    recipe: Recipe,
    data: DatasetSplits,
    cache_dir: Optional[str | os.PathLike] = None,
    progress: Optional[bool] = None,
    log: Optional[Callable[[str], None]] = None,
    why: str = "",
    *,
    train: TrainTeacher,
    load: LoadTeacher,
) -> CachedTeacher:
    """The recipe's trained teacher, from the cache or trained (and cached) now.

    The returned ``test_acc`` belongs to the returned weights, whichever process trained them.
    With ``recipe.teachers`` each is cached on its own and the result is their ensemble. Before
    training, one line on stderr says why and how much (:func:`announce_training`; ``why`` adds
    the caller's reason, e.g. that no teacher was given). ``train`` trains a teacher into a cache
    entry and ``load`` loads the recipe's own ``teacher.checkpoint`` (``kdlab.pipeline.run_teacher``
    and ``load_teacher``), so the cache needs nothing from the layers above it.
    """
    if recipe.teachers:
        members = [cached_teacher(dataclasses.replace(recipe, teacher=t, teachers=[]), data, cache_dir, progress, log, why,
                                  train=train, load=load)
                   for t in recipe.teachers]
        if len(members) == 1:
            return members[0]
        ensemble = FrozenTeacher(TeacherEnsemble([m.teacher.release() for m in members]))
        acc = evaluate(ensemble, data.test, recipe.teacher.train.eval_batch_size)["acc"]
        return CachedTeacher(ensemble, members[0].path, all(m.hit for m in members), acc, any(m.waited for m in members), members)

    if recipe.teacher.checkpoint is not None:  # a trained teacher named by the recipe: nothing to cache
        frozen = load(recipe.teacher.checkpoint, data)
        acc = evaluate(frozen, data.test, recipe.teacher.train.eval_batch_size)["acc"]
        return CachedTeacher(frozen, Path(recipe.teacher.checkpoint), True, acc)

    say = log or (lambda _msg: None)
    root = check_teacher_cache(cache_dir)
    key = teacher_key(recipe, data)
    path = teacher_cache_path(recipe, cache_dir, data)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with entry_lock(path, say) as waited:
            found = _load_verified(path, key, recipe, data, finished=True)
            if found is not None:
                payload, model = found
                return CachedTeacher(FrozenTeacher(model.to(data.train.x.device)), path, True, float(payload["metrics"]["test_acc"]), waited)
            # An unfinished run of this key (no entry.json yet, epochs left) resumes; anything else starts over.
            partial = None if (path / ENTRY_FILE).exists() else _load_verified(path, key, recipe, data, finished=False)
            resume = partial is not None and int(partial[0]["epoch"]) < recipe.teacher.train.epochs
            if not resume:
                _set_aside(path, say)
                path.mkdir(parents=True)
                atomic_write_json(path / KEY_FILE, key)
            if distributed.is_main():
                print(announce_training(recipe, data, root, int(partial[0]["epoch"]) if resume else 0, progress, why),  # type: ignore[index]
                      file=sys.stderr, flush=True)
            result = train(recipe, data, out=path, progress=progress, resume=resume)
            atomic_write_json(path / ENTRY_FILE, {"key_digest": key_digest(key), "checkpoint_sha256": file_digest(path / "last.pt"),
                                                  "test_acc": result.final_acc})
            return CachedTeacher(FrozenTeacher(result.model), path, False, result.final_acc, waited)
    except OSError as exc:
        raise KDLabError(
            f"teacher cache {root} is unusable ({os_error_reason(exc)}: {exc.filename or path}); "
            "free space or pass --teacher-cache / $KDLAB_TEACHER_CACHE pointing at a writable folder"
        ) from None
