"""Load the object ``kdlab doctor`` examines and parse ``--arg`` / ``--init`` values.

The object may be a function, an ``nn.Module`` (or any callable) *instance* defined at module
level, or a *class* — then it is instantiated with the ``--init NAME=VALUE`` arguments, the way
``criterion = DistillKL(T=4)`` is written in training scripts.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable

import yaml

from ..errors import ConfigError


def first_line(exc: BaseException) -> str:
    """``TypeError: message`` on one line (the first line of the message)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_function(spec: str) -> Callable[..., Any]:
    """``package.module:name`` or ``path/to/file.py:name``; ``name`` is a function, class or instance."""
    if ":" not in spec:
        raise ConfigError(f"{spec!r}: expected MODULE:FUNCTION, e.g. mypkg.losses:kd_loss or losses.py:kd_loss")
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py") or Path(target).is_file():
            path = Path(target)
            if not path.is_file():
                raise ConfigError(f"{target} not found; give an existing .py file or an importable module")
            mod_spec = importlib.util.spec_from_file_location(f"kdlab_doctor_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
            sys.modules[mod_spec.name] = module  # type: ignore[union-attr]
            mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except BaseException as exc:  # the user's module failed to import (even sys.exit): one line
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ConfigError(f"cannot import {target}: {first_line(exc)}; fix the module or give another MODULE:FUNCTION") from None
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{target} has no function {name!r}; give MODULE:FUNCTION naming a function, loss class or loss instance")
    return fn


def _check_finite(flag: str, key: str, value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{flag} {key}={value}: values must be finite numbers")
    if isinstance(value, str):
        try:
            bad = not math.isfinite(float(value))
        except ValueError:
            bad = False
        if bad:
            raise ConfigError(f"{flag} {key}={value}: values must be finite numbers")
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_finite(flag, key, v)
    if isinstance(value, dict):
        for v in value.values():
            _check_finite(flag, key, v)
    return value


def parse_values(items: Iterable[str], flag: str = "--arg") -> Dict[str, Any]:
    """``NAME=VALUE`` pairs; a value is a Python literal (``1e-3``, ``None``) or else YAML
    (``mean``, ``[1, 2]``, ``true``); numbers must be finite (``nan``, ``.inf`` are refused)."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"{flag} {item!r}: expected NAME=VALUE, e.g. {flag} alpha=0.9")
        key, text = (x.strip() for x in item.split("=", 1))
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                value = text
        if key in out:
            raise ConfigError(f"{flag} {key} given twice; give each NAME once")
        out[key] = _check_finite(flag, key, value)
    return out


def parse_args(items: list) -> Dict[str, Any]:
    """Backward-compatible name for :func:`parse_values` with ``--arg``."""
    return parse_values(items, "--arg")
