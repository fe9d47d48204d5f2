"""Where a teacher is cached: the key of exactly what determines its weights, and the entry's folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..config import Recipe
from ..data import DatasetSplits, data_fingerprint, load_dataset
from ..data.paths import default_cache_dir
from ..device import autocast_dtype, precision_name, resolve_channels_last, resolve_device
from ..models import build_model


CACHE_FORMAT = 2

# Train keys added after the cache format was fixed: left out of the key at their defaults, so
# existing cache entries stay valid; ``tensorboard`` only chooses what is logged, never the weights.
_LATER_TRAIN_DEFAULTS = {"precision": "fp32", "accumulate_steps": 1, "warmup_epochs": 0, "flush_denormal": True,
                         "channels_last": False, "max_norm": None}


def teacher_cache_root(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """``cache_dir`` > ``$KDLAB_TEACHER_CACHE`` > ``<user cache>/kdlab/teachers``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("KDLAB_TEACHER_CACHE")
    return Path(env).expanduser() if env else default_cache_dir() / "teachers"


def _data(recipe: Recipe, data: Optional[DatasetSplits]) -> DatasetSplits:
    """``data``, else the recipe's dataset loaded as ``kdlab.pipeline.prepare_data`` loads it."""
    if data is not None:
        return data
    d = recipe.dataset
    return load_dataset(d.name, d.data_dir, d.download, d.val_fraction, recipe.seed).to(resolve_device(recipe.device))


def teacher_key(recipe: Recipe, data: Optional[DatasetSplits] = None) -> Dict[str, Any]:
    """Everything that determines the trained teacher's weights (``data`` defaults to the recipe's)."""
    d, data = recipe.dataset, _data(recipe, data)  # loaded once: the fingerprint and, for auto, the model's shapes
    return {
        "format": CACHE_FORMAT,
        "dataset": {"name": d.name, "val_fraction": d.val_fraction, "fingerprint": data_fingerprint(data)},
        "teacher": _weights_config(recipe.to_dict()["teacher"], recipe.device, lambda: _teacher_model(recipe, data)),
        "seed": recipe.seed,
    }


def _teacher_model(recipe: Recipe, data: DatasetSplits) -> Any:
    m = recipe.teacher.model
    return build_model(m.name, data.in_shape, data.num_classes, m.params, where="teacher.model")


def _weights_config(role: Dict[str, Any], device: str, model: Callable[[], Any]) -> Dict[str, Any]:
    """The role's settings as they decide the weights: ``auto`` values as they resolve here, and
    keys added later left out at their old defaults (``model()`` builds the teacher, when needed)."""
    train = dict(role["train"])
    if train.get("precision") == "auto":  # what it resolves to on this machine decides the weights
        train["precision"] = precision_name(autocast_dtype("auto", resolve_device(device)))
    if train.get("channels_last") == "auto":  # False for a model without convolutions: the old default
        train["channels_last"] = resolve_channels_last("auto", resolve_device(device), train["precision"], model())[0]
    train = {k: v for k, v in train.items()
             if k != "tensorboard" and not (k in _LATER_TRAIN_DEFAULTS and v == _LATER_TRAIN_DEFAULTS[k])}
    role = {k: v for k, v in role.items() if not (k == "augment" and not v)}  # added later: absent when empty
    return {**role, "train": train}


def key_digest(key: Any) -> str:
    """sha256 of the key's canonical JSON (the entry's folder name and ``entry.json`` use it)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def normal(obj: Any) -> Any:
    """JSON round trip, so tuples and lists (and int/float keys) compare as they were stored."""
    return json.loads(json.dumps(obj, sort_keys=True))


def teacher_cache_path(recipe: Recipe, cache_dir: Optional[str | os.PathLike] = None, data: Optional[DatasetSplits] = None) -> Path:
    digest = key_digest(teacher_key(recipe, data))[:16]
    return teacher_cache_root(cache_dir) / f"{recipe.dataset.name}-{recipe.teacher.model.name}-{digest}"
