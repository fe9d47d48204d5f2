"""Typed recipe configuration: YAML → validated dataclasses, with ``key.path=value`` overrides.

Validation happens once, up front, and every problem becomes a one-line :class:`ConfigError`
naming the offending key (``teacher.train.epochs: expected int, got 'ten'``), so a typo never
surfaces as a traceback twenty minutes into a run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import reprlib
import sys
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from .errors import ConfigError


@dataclass
class DatasetConfig:
    name: str = "digits"
    data_dir: Optional[str] = None
    download: bool = True
    val_fraction: float = 0.0


@dataclass
class ModelConfig:
    """``name`` picks a registered model; every other key is passed to its builder."""

    name: str = "mlp"
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9


@dataclass
class SchedulerConfig:
    name: str = "constant"
    step_size: int = 10
    gamma: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_clip: Optional[float] = None
    eval_batch_size: int = 2000


@dataclass
class RoleConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class WeightScheduleConfig:
    """How hard/soft weights move over epochs; their sum stays ``hard_weight + soft_weight``.

    ``constant``; ``cosine``: hard = sum·0.5·(1 + cos(π·e/E)); ``exp``: hard = hard_weight·exp(−rate·e).
    """

    name: str = "constant"
    rate: float = 0.1


@dataclass
class TemperatureScheduleConfig:
    """``constant``, or ``linear``: T = max(min, T0 − step·e)."""

    name: str = "constant"
    min: float = 1.0
    step: float = 0.0


@dataclass
class DistillConfig:
    """total = hard_weight · CE(student, labels) + soft_weight · loss(student, teacher, T)."""

    loss: str = "hinton"
    temperature: float = 4.0
    hard_weight: float = 0.5
    soft_weight: float = 0.5
    weight_schedule: WeightScheduleConfig = field(default_factory=WeightScheduleConfig)
    temperature_schedule: TemperatureScheduleConfig = field(default_factory=TemperatureScheduleConfig)


@dataclass
class Recipe:
    name: str = "custom"
    seed: int = 0
    out_dir: str = "runs"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    teacher: RoleConfig = field(default_factory=RoleConfig)
    student: RoleConfig = field(default_factory=RoleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> Dict[str, Any]:
        return _to_plain(self)


# ---------------------------------------------------------------------------------------------
# validation


# A decimal number as YAML 1.2 (and JSON, and Python's float()) reads it, so ``lr: 1e-4`` is a float.
_DECIMAL = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# The spellings Python's float() accepts for non-finite values (argparse flags and tune ranges use it).
_NON_FINITE = re.compile(r"[-+]?(?:nan|inf|infinity|\.nan|\.inf)", re.IGNORECASE)

# Upper bounds for integers: sizes must fit a C int (torch shapes, DataLoader indices) and seeds the
# range every seeded library accepts (numpy's legacy seeding and Optuna's samplers: 0 .. 2**32 - 1).
MAX_COUNT = 2**31 - 1
MAX_SEED = 2**32 - 1


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (list, List, Sequence):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str) and (_DECIMAL.fullmatch(value.strip()) or _NON_FINITE.fullmatch(value.strip())):
            # YAML 1.1 reads 1e-4 (no dot) and nan/inf as strings; users mean numbers. Non-finite ones
            # are refused by the range checks, with the allowed range in the message.
            value = float(value.strip().replace(".", "", 1) if _NON_FINITE.fullmatch(value.strip()) else value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond float range, e.g. 1e400 written out in digits
                raise ConfigError(f"{where}: must be a finite number, got an integer with {len(str(value))} digits") from None
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (dict, Dict):
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - schema error, not user error
        raise TypeError(f"unsupported config type {tp}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_short(value)}")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60


def _short(value: Any) -> str:
    """repr cut to one readable piece: a pasted list, a huge number or binary junk must not flood
    the error line (reprlib also stops a self-referencing YAML alias from expanding)."""
    return _REPR.repr(value)


def _build(cls: Any, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if cls is ModelConfig and isinstance(data, str):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}; write {where}.name: {data}")
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping of keys, got {_short(data)}")
    prefix = f"{where}." if where else ""
    if cls is ModelConfig:
        data = dict(data)
        name = data.pop("name", ModelConfig.name)
        if not isinstance(name, str):
            raise ConfigError(f"{prefix}name: expected str, got {name!r}")
        return ModelConfig(name=name, params=data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"{prefix}{key}: unknown key; valid keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def _finite(value: float, key: str, rule: str) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number {rule}, got {value}")


def positive(value: float, key: str) -> None:
    """A finite number > 0 (NaN fails every comparison, so it is tested explicitly)."""
    _finite(value, key, "> 0")
    if not value > 0:
        raise ConfigError(f"{key}: must be a finite number > 0, got {value}")


def non_negative(value: float, key: str) -> None:
    _finite(value, key, ">= 0")
    if not value >= 0:
        raise ConfigError(f"{key}: must be a finite number >= 0, got {value}")


def fraction(value: float, key: str) -> None:
    """A finite number in [0, 1): dropout rates, momentum, held-out fractions."""
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ConfigError(f"{key}: must be a number in [0, 1), got {_short(value)}")


def count(value: int, key: str, high: int = MAX_COUNT) -> None:
    """An integer in [1, high]; huge values would overflow torch's C integers deep inside a run."""
    if not 1 <= value <= high:
        raise ConfigError(f"{key}: must be an integer in [1, {high}], got {_short(value)}")


def _check_ranges(r: Recipe) -> None:
    if not 0 <= r.seed <= MAX_SEED:
        raise ConfigError(f"seed: must be an integer in [0, {MAX_SEED}] (the range numpy and Optuna accept), got {_short(r.seed)}")
    _check_text(r)
    positive(r.distill.temperature, "distill.temperature")
    non_negative(r.distill.hard_weight, "distill.hard_weight")
    non_negative(r.distill.soft_weight, "distill.soft_weight")
    if r.distill.hard_weight == 0 and r.distill.soft_weight == 0:
        raise ConfigError("distill.hard_weight and distill.soft_weight are both 0; nothing would be trained")
    if not math.isfinite(r.distill.hard_weight + r.distill.soft_weight):
        raise ConfigError("distill.hard_weight + distill.soft_weight overflows to inf; use weights that sum to about 1")
    non_negative(r.distill.weight_schedule.rate, "distill.weight_schedule.rate")
    positive(r.distill.temperature_schedule.min, "distill.temperature_schedule.min")
    non_negative(r.distill.temperature_schedule.step, "distill.temperature_schedule.step")
    fraction(r.dataset.val_fraction, "dataset.val_fraction")
    for role in ("teacher", "student"):
        t: TrainConfig = getattr(r, role).train
        count(t.epochs, f"{role}.train.epochs")
        count(t.batch_size, f"{role}.train.batch_size")
        count(t.eval_batch_size, f"{role}.train.eval_batch_size")
        positive(t.optimizer.lr, f"{role}.train.optimizer.lr")
        non_negative(t.optimizer.weight_decay, f"{role}.train.optimizer.weight_decay")
        fraction(t.optimizer.momentum, f"{role}.train.optimizer.momentum")
        count(t.scheduler.step_size, f"{role}.train.scheduler.step_size")
        positive(t.scheduler.gamma, f"{role}.train.scheduler.gamma")
        if t.grad_clip is not None:
            positive(t.grad_clip, f"{role}.train.grad_clip")
    _check_names(r)


def _check_text(r: Recipe) -> None:
    """``name`` becomes part of a folder name and the paths must be openable: refuse what would fail later."""
    if not r.name.strip() or r.name.strip() in (".", "..") or any(c in r.name for c in "/\\") or not r.name.isprintable():
        raise ConfigError(f"name: must be a non-empty name usable in a folder name (no '/', '\\' or control "
                          f"characters), got {r.name!r}")
    for key, value in (("out_dir", r.out_dir), ("dataset.data_dir", r.dataset.data_dir)):
        if value is not None and ("\0" in value or (key == "out_dir" and not value.strip())):
            raise ConfigError(f"{key}: must be a usable folder path, got {value!r}")


def _check_names(r: Recipe) -> None:
    # Imported here: the registries import torch-heavy modules the config layer should not need.
    from .data import DATASETS
    from .losses import SOFT_LOSSES
    from .models import MODELS, check_model_params
    from .schedules import TEMPERATURE_SCHEDULES, WEIGHT_SCHEDULES
    from .train.optim import OPTIMIZERS, SCHEDULERS

    def known(registry: Any, name: str, key: str) -> None:
        if name not in registry:
            raise ConfigError(f"{key}: unknown value {name!r}; choose one of: {', '.join(registry.names())}")

    known(DATASETS, r.dataset.name, "dataset.name")
    known(SOFT_LOSSES, r.distill.loss, "distill.loss")
    known(WEIGHT_SCHEDULES, r.distill.weight_schedule.name, "distill.weight_schedule.name")
    known(TEMPERATURE_SCHEDULES, r.distill.temperature_schedule.name, "distill.temperature_schedule.name")
    for role in ("teacher", "student"):
        rc: RoleConfig = getattr(r, role)
        known(MODELS, rc.model.name, f"{role}.model.name")
        check_model_params(rc.model.name, rc.model.params, f"{role}.model")
        known(OPTIMIZERS, rc.train.optimizer.name, f"{role}.train.optimizer.name")
        known(SCHEDULERS, rc.train.scheduler.name, f"{role}.train.scheduler.name")


def _check_all_finite(obj: Any, where: str = "") -> None:
    """Safety net behind the range checks: no float field anywhere may be NaN or infinite."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_all_finite(value, key + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")


def recipe_from_dict(data: Dict[str, Any]) -> Recipe:
    recipe = _build(Recipe, data, "")
    _check_ranges(recipe)
    _check_all_finite(recipe)
    return recipe


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, ModelConfig):
        return {"name": obj.name, **copy.deepcopy(obj.params)}
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# files and overrides


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
            from .utils import os_error_reason

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
        raise ConfigError(f"override {_short(text)}: expected KEY=VALUE, e.g. teacher.train.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {_short(text)}: empty key")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    except ConfigError as exc:
        raise ConfigError(f"override {_short(text)}: {exc}") from None
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
                raise ConfigError(f"override {_short(item)}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        if isinstance(node.get(path[-1]), dict) and not isinstance(value, dict):
            # ``--set teacher=`` would otherwise swap the whole section for the built-in defaults
            raise ConfigError(f"override {_short(item)}: {'.'.join(path)} is a section; set one of its keys, "
                              f"e.g. {'.'.join(path + _first_leaf(node[path[-1]]))}=VALUE")
        node[path[-1]] = value
    return data


def load_recipe(spec: str | None = None, overrides: Sequence[str] = ()) -> Recipe:
    """Load a bundled recipe by name or a YAML path, apply overrides, validate."""
    data = read_recipe_dict(spec) if spec else {}
    return recipe_from_dict(apply_overrides(data, overrides))


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
