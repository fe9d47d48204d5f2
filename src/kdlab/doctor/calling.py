"""Load a user's KD loss function and call it whatever its signature.

KD losses in the wild take ``(student_logits, teacher_logits)``, ``(s, t, T)``,
``(outputs, labels, teacher_outputs, T, alpha)`` … with T and weights as arguments, defaults or
closures. :func:`adapt` maps parameters by name (and by position for the first two) onto the
roles the doctor knows — student logits, teacher logits, labels, temperature — and leaves every
other parameter at its default or at a value the user gives (``--arg alpha=0.9``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from torch import Tensor

from ..errors import ConfigError

ROLE_NAMES = {
    "student": ("student_logits", "s", "student", "student_outputs", "student_output", "y_s", "logits_s", "z_s",
                "out_s", "outputs", "output", "logits", "preds", "student_preds", "input", "inputs"),
    "teacher": ("teacher_logits", "t", "teacher", "teacher_outputs", "teacher_output", "y_t", "logits_t", "z_t",
                "out_t", "teacher_preds", "soft_targets"),
    "labels": ("labels", "label", "y", "target", "targets", "true_labels", "y_true", "gt", "hard_labels"),
    "T": ("T", "temperature", "temp", "tau", "t_", "T_"),
}
EXPECTED = ("expected a function like f(student_logits, teacher_logits, T) or "
            "f(student_logits, teacher_logits, labels, T, ...) returning a scalar tensor "
            "(other arguments need defaults or --arg NAME=VALUE)")


def load_function(spec: str) -> Callable[..., Any]:
    """``package.module:function`` or ``path/to/file.py:function``."""
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
    except Exception as exc:  # the user's module failed to import: say so in one line
        raise ConfigError(f"cannot import {target}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{target} has no function {name!r}")
    return fn


@dataclass
class Adapted:
    """The user's function behind a uniform ``call(s, t, labels, T)``."""

    fn: Callable[..., Any]
    roles: Dict[str, str]  # role → parameter name
    extra: Dict[str, Any] = field(default_factory=dict)
    positional: bool = False

    @property
    def takes_T(self) -> bool:
        return "T" in self.roles

    @property
    def takes_labels(self) -> bool:
        return "labels" in self.roles

    def describe(self) -> str:
        order = ", ".join(f"{p}={r}" for r, p in self.roles.items())
        extra = "".join(f", {k}={v!r}" for k, v in self.extra.items())
        return f"{getattr(self.fn, '__name__', 'fn')}({order}{extra})"

    def call(self, s: Tensor, t: Tensor, labels: Optional[Tensor], T: Optional[float]) -> Tensor:
        values = {"student": s, "teacher": t, "labels": labels, "T": T}
        kwargs = {param: values[role] for role, param in self.roles.items()}
        kwargs.update(self.extra)
        try:
            out = self.fn(**kwargs)
        except Exception as exc:
            raise ConfigError(
                f"calling {self.describe()} failed with {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; {EXPECTED}"
            ) from None
        return _scalar(out, self.describe())


def _scalar(out: Any, where: str) -> Tensor:
    if isinstance(out, dict):
        for key in ("loss", "total", "kd", "soft", "loss_kd"):
            if key in out:
                out = out[key]
                break
        else:
            out = sum(v for v in out.values() if isinstance(v, Tensor))
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, Tensor) or out.numel() != 1:
        raise ConfigError(f"{where} returned {type(out).__name__}, not a scalar tensor; {EXPECTED}")
    return out.reshape(())


def adapt(fn: Callable[..., Any], extra: Optional[Dict[str, Any]] = None) -> Adapted:
    """Work out which parameter is which; a one-line error says what could not be matched."""
    extra = dict(extra or {})
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        raise ConfigError(f"cannot inspect the signature of {fn!r}; {EXPECTED}") from None
    params = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    roles: Dict[str, str] = {}
    for p in params:
        if p.name in extra:
            continue
        for role, names in ROLE_NAMES.items():
            if role not in roles and p.name in names and (p.name != "t" or "teacher" not in roles):
                roles[role] = p.name
                break
    # Unnamed positional logits: the first two free parameters are student then teacher.
    free = [p for p in params if p.name not in roles.values() and p.name not in extra]
    for role in ("student", "teacher"):
        if role not in roles and free and free[0].default is inspect.Parameter.empty:
            roles[role] = free.pop(0).name
    if "student" not in roles or "teacher" not in roles:
        raise ConfigError(f"cannot tell which parameters of {getattr(fn, '__name__', fn)}{inspect.signature(fn)} are the student and teacher logits; {EXPECTED}")
    unknown = [p.name for p in params if p.name not in roles.values() and p.name not in extra and p.default is inspect.Parameter.empty]
    if unknown:
        raise ConfigError(f"{getattr(fn, '__name__', fn)}: no value for required parameter(s) {', '.join(unknown)}; pass --arg {unknown[0]}=VALUE ({EXPECTED})")
    return Adapted(fn, {r: roles[r] for r in ("student", "teacher", "labels", "T") if r in roles}, extra)


def parse_args(items: list) -> Dict[str, Any]:
    """``NAME=VALUE`` pairs, values as Python literals where possible (``alpha=0.9``)."""
    import ast

    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--arg {item!r}: expected NAME=VALUE, e.g. --arg alpha=0.9")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out
