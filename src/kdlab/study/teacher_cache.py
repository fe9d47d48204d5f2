"""A teacher is trained once per (dataset, teacher config, seed) and reused by every study.

The cache key hashes exactly what determines the teacher's weights — dataset name and validation
split, the teacher's model and training config, the seed — and nothing else, so changing the
student, the loss or T reuses the teacher, while changing e.g. the teacher's epochs retrains it.
An interrupted teacher run resumes from its ``last.pt``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..config import Recipe
from ..data import DatasetSplits
from ..data.mnist_family import default_cache_dir
from ..errors import CheckpointError
from ..teacher import FrozenTeacher
from ..train.checkpoint import load_checkpoint
from ..utils import atomic_write_json

CACHE_FORMAT = 1


def teacher_cache_root(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """``cache_dir`` > ``$KDLAB_TEACHER_CACHE`` > ``<user cache>/kdlab/teachers``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("KDLAB_TEACHER_CACHE")
    return Path(env).expanduser() if env else default_cache_dir() / "teachers"


def teacher_key(recipe: Recipe) -> Dict[str, Any]:
    """Everything that determines the trained teacher's weights."""
    d = recipe.dataset
    return {
        "format": CACHE_FORMAT,
        "dataset": {"name": d.name, "val_fraction": d.val_fraction},
        "teacher": recipe.to_dict()["teacher"],
        "seed": recipe.seed,
    }


def teacher_cache_path(recipe: Recipe, cache_dir: Optional[str | os.PathLike] = None) -> Path:
    digest = hashlib.sha256(json.dumps(teacher_key(recipe), sort_keys=True).encode()).hexdigest()[:16]
    return teacher_cache_root(cache_dir) / f"{recipe.dataset.name}-{recipe.teacher.model.name}-{digest}"


@dataclass
class CachedTeacher:
    teacher: FrozenTeacher
    path: Path
    hit: bool  # True when no training was needed
    test_acc: float


def _finished(last: Path) -> Tuple[int, float]:
    """(last completed epoch, its test accuracy) of a cached teacher run; (0, nan) if none."""
    if not last.is_file():
        return 0, float("nan")
    try:
        state = load_checkpoint(last)
        return int(state.get("epoch", 0)), float(state["metrics"]["test_acc"])
    except (CheckpointError, KeyError, TypeError):
        return 0, float("nan")  # a damaged cache entry is retrained, not trusted


def cached_teacher(
    recipe: Recipe,
    data: DatasetSplits,
    cache_dir: Optional[str | os.PathLike] = None,
    progress: Optional[bool] = None,
) -> CachedTeacher:
    """The recipe's trained teacher, from the cache or trained (and cached) now."""
    from ..pipeline import load_teacher, run_teacher

    path = teacher_cache_path(recipe, cache_dir)
    last = path / "last.pt"
    done, acc = _finished(last)
    if done >= recipe.teacher.train.epochs:
        return CachedTeacher(load_teacher(last, data), path, True, acc)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / "key.json", teacher_key(recipe))
    # resume=True also covers a run killed before its first checkpoint: it then starts at epoch 1
    result = run_teacher(recipe, data, out=path, progress=progress, resume=True)
    return CachedTeacher(FrozenTeacher(result.model), path, False, result.final_acc)
