"""``--resume`` continues a run with its *own* recorded recipe; only :func:`mutable_on_resume` keys may differ.

Here, above :mod:`kdlab.recipes`, so the run folder (:mod:`kdlab.train.rundir`) needs nothing from
the recipe loader.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence

from .config import Recipe
from .errors import ConfigError
from .recipes import apply_overrides, parse_override, read_recipe_dict, recipe_from_dict
from .utils import flatten_settings


def mutable_on_resume(role: str) -> List[str]:
    """Recipe keys ``--resume`` accepts changed: more epochs extend the run; data may have moved.

    Everything else defines the experiment, so a different value would record settings that were
    never used for the epochs already trained.
    """
    return [f"{role}.train.epochs", f"{role}.train.tensorboard", "dataset.data_dir", "dataset.download"]


_ABSENT = object()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "nothing"
    return repr(value) if isinstance(value, str) else json.dumps(value)


def resume_recipe(path: str | os.PathLike, role: str, recipe_spec: Optional[str] = None, overrides: Sequence[str] = ()) -> Recipe:
    """The recipe to resume the run in ``path`` with: the run's own ``config.yaml``.

    ``recipe_spec`` and ``overrides`` are what the command line gave; each value must equal the
    run's, except :func:`mutable_on_resume` keys, which are taken from ``overrides`` only (a
    recipe file's own epoch count is not a request to extend the run). Otherwise a one-line
    :class:`ConfigError` lists every differing key. Reads files only; writes nothing.
    """
    config = Path(path) / "config.yaml"
    run_dict = read_recipe_dict(str(config))
    try:
        recorded = recipe_from_dict(copy.deepcopy(run_dict))
    except ConfigError as exc:
        raise ConfigError(f"{config} is not a valid recipe ({exc}); restore it or start a new run with --overwrite") from None
    base = read_recipe_dict(recipe_spec) if recipe_spec else copy.deepcopy(run_dict)
    given = recipe_from_dict(apply_overrides(base, overrides))
    mutable = mutable_on_resume(role)
    ran, asked = flatten_settings(recorded.to_dict()), flatten_settings(given.to_dict())
    diffs = [
        f"{key}: run has {_show(ran.get(key, _ABSENT))}, command line gives {_show(asked.get(key, _ABSENT))}"
        for key in sorted(set(ran) | set(asked))
        if key not in mutable and ran.get(key, _ABSENT) != asked.get(key, _ABSENT)
    ]
    if diffs:
        raise ConfigError(
            f"cannot resume {path}: {'; '.join(diffs)}. A resumed run keeps its own config; only {', '.join(mutable)} "
            "and --progress may change (drop the other settings, or start a new run with another --out)"
        )
    explicit = [".".join(parse_override(item)[0]) for item in overrides]
    changes = [
        f"{key}={json.dumps(asked[key])}"
        for key in mutable
        if key in asked and any(key == k or key.startswith(k + ".") for k in explicit)
    ]
    return recipe_from_dict(apply_overrides(run_dict, changes))
