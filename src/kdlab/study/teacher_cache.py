"""A teacher is trained once per (data, teacher config, seed) and reused by every study.

The cache key hashes exactly what determines the teacher's weights — the dataset's name, its
content fingerprint (a hash of the image and label tensors and the validation split, so changed
files under the same name never reuse a teacher trained on the old ones), the teacher's model and
training config, the seed — and nothing else: changing the student, the loss or T reuses the
teacher, while changing e.g. the teacher's epochs retrains it.

An entry is trusted only when it proves what it holds: ``key.json`` equals the expected key,
``entry.json`` (written once training finished) names the sha256 of ``last.pt``, and the
checkpoint itself is a teacher with the expected model spec. Anything else — a foreign checkpoint
copied in, a half-written entry of another config — is moved aside and retrained, never reused.
An interrupted run of the same key resumes from its ``last.pt``.

Concurrent runs serialise on an ``fcntl.flock`` lock next to the entry: a run that finds another
process training the same teacher waits for it and then reuses its result. The kernel drops the
lock when its holder dies (even by SIGKILL), so a crashed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from ..config import Recipe
from ..data import DatasetSplits, data_fingerprint
from ..data.mnist_family import default_cache_dir
from ..device import autocast_dtype, precision_name, resolve_device
from ..errors import KDLabError
from ..teacher import FrozenTeacher
from ..train import distributed
from ..train.checkpoint import load_checkpoint, model_from_payload
from ..utils import atomic_write_json, check_output_location, file_digest, os_error_reason

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no locking; concurrent runs may train the same teacher twice)
    fcntl = None  # type: ignore[assignment]

CACHE_FORMAT = 2
KEY_FILE = "key.json"
ENTRY_FILE = "entry.json"


def teacher_cache_root(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """``cache_dir`` > ``$KDLAB_TEACHER_CACHE`` > ``<user cache>/kdlab/teachers``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("KDLAB_TEACHER_CACHE")
    return Path(env).expanduser() if env else default_cache_dir() / "teachers"


def check_teacher_cache(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """One-line error now (before any training) when the cache folder cannot be written."""
    return check_output_location(teacher_cache_root(cache_dir), "teacher cache")


def _data(recipe: Recipe, data: Optional[DatasetSplits]) -> DatasetSplits:
    if data is not None:
        return data
    from ..pipeline import prepare_data

    return prepare_data(recipe)


def teacher_key(recipe: Recipe, data: Optional[DatasetSplits] = None) -> Dict[str, Any]:
    """Everything that determines the trained teacher's weights (``data`` defaults to the recipe's)."""
    d = recipe.dataset
    return {
        "format": CACHE_FORMAT,
        "dataset": {"name": d.name, "val_fraction": d.val_fraction, "fingerprint": data_fingerprint(_data(recipe, data))},
        "teacher": _weights_config(recipe.to_dict()["teacher"], recipe.device),
        "seed": recipe.seed,
    }


# Train keys added after the cache format was fixed: left out of the key at their defaults, so
# existing cache entries stay valid; ``tensorboard`` only chooses what is logged, never the weights.
_LATER_TRAIN_DEFAULTS = {"precision": "fp32", "accumulate_steps": 1, "warmup_epochs": 0, "flush_denormal": True,
                         "channels_last": False}


def _weights_config(role: Dict[str, Any], device: str) -> Dict[str, Any]:
    train = dict(role["train"])
    if train.get("precision") == "auto":  # what it resolves to on this machine decides the weights
        train["precision"] = precision_name(autocast_dtype("auto", resolve_device(device)))
    train = {k: v for k, v in train.items()
             if k != "tensorboard" and not (k in _LATER_TRAIN_DEFAULTS and v == _LATER_TRAIN_DEFAULTS[k])}
    return {**role, "train": train}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def teacher_cache_path(recipe: Recipe, cache_dir: Optional[str | os.PathLike] = None, data: Optional[DatasetSplits] = None) -> Path:
    digest = _digest(teacher_key(recipe, data))[:16]
    return teacher_cache_root(cache_dir) / f"{recipe.dataset.name}-{recipe.teacher.model.name}-{digest}"


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


def _normal(obj: Any) -> Any:
    """JSON round trip, so tuples and lists (and int/float keys) compare as they were stored."""
    return json.loads(json.dumps(obj, sort_keys=True))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _checkpoint_fits(payload: Dict[str, Any], recipe: Recipe, data: DatasetSplits) -> bool:
    """The checkpoint says it is this recipe's teacher for this data's shape and classes."""
    expected = {"name": recipe.teacher.model.name, "params": dict(recipe.teacher.model.params),
                "in_shape": list(data.in_shape), "num_classes": data.num_classes}
    return payload.get("role", "teacher") == "teacher" and _normal(payload.get("model")) == _normal(expected)


def _load_verified(path: Path, key: Dict[str, Any], recipe: Recipe, data: DatasetSplits, finished: bool):
    """(payload, model) of the entry's ``last.pt`` if it provably holds ``key``'s teacher, else None.

    ``finished=True`` also demands ``entry.json`` with the checkpoint's sha256 and all epochs done.
    """
    last = path / "last.pt"
    if _normal(_read_json(path / KEY_FILE)) != _normal(key) or not last.is_file():
        return None
    if finished:
        entry = _read_json(path / ENTRY_FILE)
        if not isinstance(entry, dict) or entry.get("key_digest") != _digest(key) or entry.get("checkpoint_sha256") != file_digest(last):
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


@contextlib.contextmanager
def _entry_lock(path: Path, log: Callable[[str], None]) -> Iterator[bool]:
    """Hold the entry's lock for the ``with`` block; yields True if another process held it first."""
    if fcntl is None:  # pragma: no cover
        yield False
        return
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    waited = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            log(f"teacher: waiting for process {holder}, which is training this teacher into {path}")
            fcntl.flock(fd, fcntl.LOCK_EX)
            waited = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield waited
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking a lock file races with waiters)


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
) -> CachedTeacher:
    """The recipe's trained teacher, from the cache or trained (and cached) now.

    The returned ``test_acc`` belongs to the returned weights, whichever process trained them.
    With ``recipe.teachers`` each is cached on its own and the result is their ensemble. Before
    training, one line on stderr says why and how much (:func:`announce_training`; ``why`` adds
    the caller's reason, e.g. that no teacher was given).
    """
    from ..pipeline import run_teacher

    if recipe.teachers:
        from ..teacher import TeacherEnsemble
        from ..train.records import evaluate

        members = [cached_teacher(dataclasses.replace(recipe, teacher=t, teachers=[]), data, cache_dir, progress, log, why)
                   for t in recipe.teachers]
        if len(members) == 1:
            return members[0]
        ensemble = FrozenTeacher(TeacherEnsemble([m.teacher.release() for m in members]))
        acc = evaluate(ensemble, data.test, recipe.teacher.train.eval_batch_size)["acc"]
        return CachedTeacher(ensemble, members[0].path, all(m.hit for m in members), acc, any(m.waited for m in members), members)

    if recipe.teacher.checkpoint is not None:  # a trained teacher named by the recipe: nothing to cache
        from ..pipeline import load_teacher
        from ..train.records import evaluate

        frozen = load_teacher(recipe.teacher.checkpoint, data)
        acc = evaluate(frozen, data.test, recipe.teacher.train.eval_batch_size)["acc"]
        return CachedTeacher(frozen, Path(recipe.teacher.checkpoint), True, acc)

    say = log or (lambda _msg: None)
    root = check_teacher_cache(cache_dir)
    key = teacher_key(recipe, data)
    path = teacher_cache_path(recipe, cache_dir, data)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _entry_lock(path, say) as waited:
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
            result = run_teacher(recipe, data, out=path, progress=progress, resume=resume)
            atomic_write_json(path / ENTRY_FILE, {"key_digest": _digest(key), "checkpoint_sha256": file_digest(path / "last.pt"),
                                                  "test_acc": result.final_acc})
            return CachedTeacher(FrozenTeacher(result.model), path, False, result.final_acc, waited)
    except OSError as exc:
        raise KDLabError(
            f"teacher cache {root} is unusable ({os_error_reason(exc)}: {exc.filename or path}); "
            "free space or pass --teacher-cache / $KDLAB_TEACHER_CACHE pointing at a writable folder"
        ) from None
