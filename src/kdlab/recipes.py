"""Recipes: bundled names or YAML files, ``key.path=value`` overrides, and validation of every name
against the registries (models, datasets, losses, methods, optimizers, schedules).

The schema (:mod:`kdlab.config`) checks types and ranges; this module resolves names, so a recipe
is fully validated before any data is read or folder made.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Sequence

import yaml

from .config import DistillConfig, Recipe, role_configs, schema_from_dict, short_repr
from .errors import ConfigError


def recipe_from_dict(data: Dict[str, Any]) -> Recipe:
    """A recipe from plain data: schema, ranges, the user's ``imports``, and every name checked."""
    recipe = schema_from_dict(data)
    import_user_modules(recipe.imports)
    check_names(recipe)
    return recipe


def import_user_modules(modules: Sequence[str]) -> None:
    """Import the modules that register a user's models, datasets, losses or methods.

    The working directory is importable (as with ``python -m``), so ``--import mypkg.models`` finds
    ``./mypkg/models.py``. A failing import is one line naming the module and the error.
    """
    for name in modules:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"imports: expected module names like mypkg.models, got {short_repr(name)}")
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            importlib.import_module(name.strip())
        except ImportError as exc:
            raise ConfigError(f"imports: cannot import {name!r} ({type(exc).__name__}: {exc}); check the module name "
                              "and that its folder is the working directory or on PYTHONPATH") from None
        except ConfigError:
            raise
        except Exception as exc:  # the user's module itself failed
            raise ConfigError(f"imports: importing {name!r} raised {type(exc).__name__}: {' '.join(str(exc).split())}") from None


def check_method(r: Recipe) -> None:
    """``distill.method`` is registered, each section names a method, and each section fits its dataclass."""
    from .methods import METHODS, build_method  # start-up time: the registries import torch

    d = r.distill
    if d.method not in METHODS:
        raise ConfigError(f"distill.method: unknown value {d.method!r}; choose one of: {', '.join(METHODS.names())}")
    for name, section in d.sections.items():
        if name not in METHODS:
            raise ConfigError(f"distill.{name}: unknown key; valid keys here: {', '.join(sorted(_distill_keys()))}, "
                              f"or a method section: {', '.join(METHODS.names())}")
        if METHODS.get(name).params is None:
            raise ConfigError(f"distill.{name}: method {name!r} takes no parameters; remove the section")
        # built, not only typed: a method checks its own ranges (NaN, negative weights) when it is
        # constructed, and a section compare --methods will use must not wait for that to be refused
        build_method(name, d, section)


def _distill_keys() -> List[str]:
    return [f for f in DistillConfig.__dataclass_fields__ if f != "sections"]


def check_names(r: Recipe) -> None:
    """Every name in the recipe exists in its registry; the chosen method's section fits its dataclass."""
    # Imported here: the registries import torch, which `kdlab recipes` and errors should not wait for.
    from .data import DATASETS
    from .losses import SOFT_LOSSES
    from .models import MODELS, check_model_params
    from .schedules import TEMPERATURE_SCHEDULES, WEIGHT_SCHEDULES
    from .train.optim import OPTIMIZERS, SCHEDULERS

    def known(registry: Any, name: str, key: str) -> None:
        if name not in registry:
            raise ConfigError(f"{key}: unknown value {name!r}; choose one of: {', '.join(registry.names())}")

    from .device import resolve_device  # start-up time: torch

    resolve_device(r.device)
    known(DATASETS, r.dataset.name, "dataset.name")
    known(SOFT_LOSSES, r.distill.loss, "distill.loss")
    check_method(r)
    from .data.augment import AugmentConfig  # start-up time: torch

    AugmentConfig.from_dict(r.augment, "augment")
    for role, rc in role_configs(r)[:-1]:  # the teachers' own augmentation
        AugmentConfig.from_dict(rc.augment, f"{role}.augment")
    from .train.stored import TeacherSignalsConfig  # start-up time: torch

    TeacherSignalsConfig.from_dict(r.teacher_signals, "teacher_signals")
    known(WEIGHT_SCHEDULES, r.distill.weight_schedule.name, "distill.weight_schedule.name")
    known(TEMPERATURE_SCHEDULES, r.distill.temperature_schedule.name, "distill.temperature_schedule.name")
    for role, rc in role_configs(r):
        known(MODELS, rc.model.name, f"{role}.model.name")
        check_model_params(rc.model.name, rc.model.params, f"{role}.model")
        known(OPTIMIZERS, rc.train.optimizer.name, f"{role}.train.optimizer.name")
        known(SCHEDULERS, rc.train.scheduler.name, f"{role}.train.scheduler.name")



class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping.

    PyYAML keeps the last value silently, so a second ``teacher:`` block would drop the first one.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise ConfigError(f"key {key!r} appears twice (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                                      f"keep one")
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key; SafeLoader reports it below
                pass
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    """Parse with :class:`_StrictLoader`; a number beyond Python's digit limit is a ConfigError, not a traceback."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ValueError:  # int('9' * 5000) exceeds Python's limit for integer string conversion
        raise ConfigError(f"a number has more than {sys.get_int_max_str_digits()} digits; no kdlab value is that large") from None


def bundled_recipes() -> List[str]:
    folder = resources.files("kdlab") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_recipe_dict(spec: str) -> Dict[str, Any]:
    """Raw dict of a bundled recipe name (``mnist-mlp``) or a path to a YAML file."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise ConfigError(f"recipe {spec} is a folder; give a YAML file or one of: {', '.join(bundled_recipes())}")
        if not path.is_file():
            raise ConfigError(f"recipe file {spec} not found; give a YAML path or one of: {', '.join(bundled_recipes())}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"recipe {spec} is not a UTF-8 text file; give a YAML recipe (see `kdlab recipes mnist-mlp`)") from None
        except OSError as exc:
            from .utils import os_error_reason  # start-up time: utils imports torch

            raise ConfigError(f"cannot read recipe {spec} ({os_error_reason(exc)}); check the path and its permissions") from None
    else:
        res = resources.files("kdlab") / "recipes" / f"{spec}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown recipe {spec!r}; give a YAML path or one of: {', '.join(bundled_recipes())}")
        text = res.read_text(encoding="utf-8")
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise ConfigError(f"recipe {spec}: invalid YAML{at}{f' ({problem})' if problem else ''}; fix the syntax") from None
    except ConfigError as exc:
        raise ConfigError(f"recipe {spec}: {exc}") from None
    if data is None:  # an empty file would silently train the built-in defaults
        raise ConfigError(f"recipe {spec} is empty; start from a bundled one: kdlab recipes mnist-mlp > {Path(spec).name}")
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {spec}: top level must be a mapping of keys, got {type(data).__name__}; "
                          f"see `kdlab recipes mnist-mlp` for the layout")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {short_repr(text)}: expected KEY=VALUE, e.g. teacher.train.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {short_repr(text)}: empty key")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    except ConfigError as exc:
        raise ConfigError(f"override {short_repr(text)}: {exc}") from None
    return key.split("."), value


def _first_leaf(section: Dict[str, Any]) -> List[str]:
    """Key path to the first non-section value under ``section`` (for an example in a message)."""
    for key, value in section.items():
        return [str(key)] + (_first_leaf(value) if isinstance(value, dict) else [])
    return ["name"]


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` applied (values parsed as YAML)."""
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {short_repr(item)}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        if isinstance(node.get(path[-1]), dict) and not isinstance(value, dict):
            # ``--set teacher=`` would otherwise swap the whole section for the built-in defaults
            raise ConfigError(f"override {short_repr(item)}: {'.'.join(path)} is a section; set one of its keys, "
                              f"e.g. {'.'.join(path + _first_leaf(node[path[-1]]))}=VALUE")
        node[path[-1]] = value
    return data


def load_recipe(spec: str | None = None, overrides: Sequence[str] = (), imports: Sequence[str] = ()) -> Recipe:
    """Load a bundled recipe by name or a YAML path, apply overrides, add ``imports``, validate."""
    data = apply_overrides(read_recipe_dict(spec) if spec else {}, overrides)
    if imports:
        listed = data.get("imports") or []
        if not isinstance(listed, list):
            raise ConfigError(f"imports: expected a list of module names, got {short_repr(listed)}")
        data["imports"] = list(dict.fromkeys([*listed, *imports]))
    return recipe_from_dict(data)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
