"""Call a user's KD loss whatever its signature: function, ``nn.Module`` class or instance.

KD losses in the wild take ``(student_logits, teacher_logits)``, ``(s, t, T)``,
``(outputs, labels, teacher_outputs, T, alpha)``, ``(y_s, y_t)`` with T in the constructor, …
:func:`adapt` maps parameters by name onto the roles the doctor knows — student logits, teacher
logits, labels, temperature — and leaves every other parameter at its default or at a value the
user gives (``--arg alpha=0.9``). Names that only *suggest* a role (``outputs``, ``soft_labels``,
``targets``) are a guess, which is printed. So are names that merely *contain* a role word —
``y_pred_student``/``y_pred_teacher``, ``stu_out``/``tea_out``, ``studentLogits``, ``kd_temp`` — split
into words at ``_`` and camelCase. Names it cannot place are an error that asks for
``--student-arg NAME --teacher-arg NAME``. It never falls back to argument positions.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import Tensor, nn

from ..errors import ConfigError
from .loading import first_line, load_function, parse_args, parse_values

__all__ = ["Adapted", "UserFunctionError", "adapt", "load_function", "parse_args", "parse_values"]

# role -> (names that say it, names that suggest it: using those is a printed guess)
ROLE_NAMES: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "student": (
        ("student_logits", "logits_student", "student", "s", "y_s", "logits_s", "logit_s", "z_s", "out_s",
         "s_logits", "s_out", "student_outputs", "student_output", "outputs_student", "output_student",
         "student_out", "student_preds", "student_pred", "preds_s", "pred_s", "stu_logits", "student_scores"),
        ("outputs", "output", "logits", "logit", "preds", "pred", "predictions", "prediction", "soft_predictions",
         "soft_preds", "y_pred", "y_hat", "yhat", "scores", "input", "inputs", "out"),
    ),
    "teacher": (
        ("teacher_logits", "logits_teacher", "teacher", "t", "y_t", "logits_t", "logit_t", "z_t", "out_t",
         "t_logits", "t_out", "teacher_outputs", "teacher_output", "outputs_teacher", "output_teacher",
         "teacher_out", "teacher_preds", "teacher_pred", "preds_t", "pred_t", "tea_logits", "teacher_scores"),
        ("soft_labels", "soft_targets", "soft_target", "soft_label", "target_logits", "targets_soft", "y_soft",
         "soft_y", "teacher_probs", "soft"),
    ),
}
LABEL_NAMES = ("labels", "label", "y", "y_true", "true_labels", "hard_labels", "hard_targets", "hard_target",
               "gt", "gt_labels", "class_labels", "classes", "lbl", "lbls")
TARGET_NAMES = ("targets", "target")  # hard labels next to a teacher argument, else the teacher's soft targets
T_NAMES = ("T", "temperature", "temp", "tau", "T_", "kd_T", "kd_temperature", "temperature_kd")
# words inside a parameter name (split at "_" and camelCase) that say its role
ROLE_WORDS: Dict[str, Tuple[str, ...]] = {
    "student": ("student", "students", "stu", "stud", "s"),
    "teacher": ("teacher", "teachers", "tea", "teach", "tch", "tchr", "t"),
}
LABEL_WORDS = ("label", "labels", "lbl", "lbls", "gt")
TARGET_WORDS = ("target", "targets")  # labels, unless the name also says student or teacher (teacher_targets)
T_WORDS = ("temp", "temperature", "temperatures", "tau")
LOGIT_WORDS = ("logits", "logit", "out", "outs", "output", "outputs", "pred", "preds", "prediction", "predictions",
               "scores", "score", "probs", "prob", "soft", "y", "z", "feat", "feats")
NOT_LOGITS = LABEL_WORDS + T_WORDS + ("weight", "weights", "alpha", "beta", "gamma", "lambda", "lam", "coef", "ratio",
                                      "scale", "mask", "eps", "reduction", "dim")
EXPECTED = ("expected a function like f(student_logits, teacher_logits, T) or "
            "f(student_logits, teacher_logits, labels, T, ...) returning a scalar tensor "
            "(other arguments need defaults or --arg NAME=VALUE)")


class UserFunctionError(ConfigError):
    """The user's function (or constructor) raised: one line naming it, the exception type and message."""

    def __init__(self, message: str, cause: str = ""):
        super().__init__(message)
        self.cause = cause  # "ValueError: not enough values to unpack ..."


def _positive_number(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


@dataclass
class Adapted:
    """The user's loss behind a uniform ``call(s, t, labels, T)``."""

    name: str
    target: Any  # the function or instance; None when a class is instantiated per temperature
    roles: Dict[str, str]  # role -> parameter name of the call
    extra: Dict[str, Any] = field(default_factory=dict)
    cls: Optional[type] = None
    init: Dict[str, Any] = field(default_factory=dict)
    init_T: Optional[str] = None  # constructor argument holding T (then T varies by re-instantiating)
    guessed: List[str] = field(default_factory=list)  # roles placed from a name that only suggests them
    default_T: Optional[float] = None
    default_T_source: Optional[str] = None  # said in the guess line when T comes from an attribute
    _instances: Dict[Optional[float], Any] = field(default_factory=dict, repr=False)

    @property
    def takes_T(self) -> bool:
        return "T" in self.roles or self.init_T is not None

    @property
    def takes_labels(self) -> bool:
        return "labels" in self.roles

    def describe(self) -> str:
        order = ", ".join(f"{p}={r}" for r, p in self.roles.items())
        extra = "".join(f", {k}={v!r}" for k, v in self.extra.items())
        if self.cls is None:
            return f"{self.name}({order}{extra})"
        init = ", ".join([f"{k}={v!r}" for k, v in self.init.items() if k != self.init_T]
                         + ([f"{self.init_T}=T"] if self.init_T else []))
        return f"{self.name}({init}).forward({order}{extra})"

    def guess_lines(self) -> List[str]:
        """What was guessed, one line each (printed on stdout before the diagnosis)."""
        out = []
        if self.guessed:
            shown = ("student", "teacher", "labels") + (("T",) if "T" in self.guessed else ())
            used = ", ".join(f"{r}={self.roles[r]}" for r in shown if r in self.roles)
            out.append(f"doctor: using {used} (guessed from the names; override with --student-arg/--teacher-arg)")
        if self.default_T_source:
            out.append(f"doctor: using T={self.default_T:g} {self.default_T_source} (override with -T)")
        return out

    def _callable(self, T: Optional[float]) -> Any:
        if self.cls is None:
            return self.target
        key = T if self.init_T else None
        if key not in self._instances:
            kwargs = dict(self.init)
            if self.init_T:
                kwargs[self.init_T] = T
            try:
                self._instances[key] = self.cls(**kwargs)
            except Exception as exc:
                args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
                raise UserFunctionError(f"constructing {self.name}({args}) failed with {first_line(exc)}; "
                                        f"pass its arguments with --init NAME=VALUE") from None
        return self._instances[key]

    def call(self, s: Tensor, t: Tensor, labels: Optional[Tensor], T: Optional[float]) -> Tensor:
        values = {"student": s, "teacher": t, "labels": labels, "T": T}
        kwargs = {param: values[role] for role, param in self.roles.items()}
        kwargs.update(self.extra)
        obj = self._callable(T)
        try:
            out = obj(**kwargs)
        except Exception as exc:
            raise UserFunctionError(f"calling {self.describe()} failed with {first_line(exc)}; {EXPECTED}",
                                    first_line(exc)) from None
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


def _signature(obj: Any, name: str) -> inspect.Signature:
    try:
        if inspect.isclass(obj):
            method = obj.forward if issubclass(obj, nn.Module) else obj.__call__
            sig = inspect.signature(method)
            return sig.replace(parameters=list(sig.parameters.values())[1:])  # drop self
        return inspect.signature(obj.forward if isinstance(obj, nn.Module) else obj)
    except (TypeError, ValueError, AttributeError):
        raise ConfigError(f"cannot inspect the signature of {name}; {EXPECTED}") from None


def _init_kwargs(cls: type, init: Dict[str, Any]) -> Tuple[Optional[str], Optional[float]]:
    """Check ``--init`` against the constructor; return its temperature argument and value, if any."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    named = {n: p for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in init if k not in named and not open_kwargs]
    if unknown:
        raise ConfigError(f"{cls.__name__} has no constructor argument {unknown[0]!r} (its arguments: "
                          f"{', '.join(named) or 'none'}); fix --init {unknown[0]}=...")
    init_T = next((n for n in named if n in T_NAMES), None) or next((n for n, p in named.items() if _word_role(p) == "T"), None)
    missing = [n for n, p in named.items() if p.default is p.empty and n not in init and n != init_T]
    if missing:
        raise ConfigError(f"{cls.__name__} needs constructor argument(s) {', '.join(missing)}; pass --init {missing[0]}=VALUE")
    if init_T is None:
        return None, None
    value = init[init_T] if init_T in init else named[init_T].default
    return init_T, _positive_number(value)


def name_words(name: str) -> List[str]:
    """``y_pred_student`` -> [y, pred, student]; ``studentLogits`` -> [student, Logits]; ``kdT`` -> [kd, T] (case kept)."""
    return [w for part in name.split("_") for w in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", part)]


def _value_default(p: inspect.Parameter) -> bool:
    """A number, string or bool default: a setting, not a tensor argument."""
    return p.default is not p.empty and isinstance(p.default, (int, float, str))


def _word_role(p: inspect.Parameter) -> Optional[str]:
    """The role a parameter's name contains a word for: student, teacher, labels, T, or None."""
    words = name_words(p.name)
    low = {w.lower() for w in words}
    # case matters for one letter: "t"/"s" are the teacher/student, "T" the temperature
    roles = [r for r, ws in ROLE_WORDS.items() if any(w in ws or (len(w) > 1 and w.lower() in ws) for w in words)]
    if low & set(T_WORDS) or ("T" in words and not low & set(LOGIT_WORDS)):
        return "T"
    if low & set(LABEL_WORDS) or (low & set(TARGET_WORDS) and not roles):
        return "labels" if not low & (set(LOGIT_WORDS) - {"y"}) else None
    if _value_default(p) or low & set(NOT_LOGITS) or len(roles) != 1:
        return None
    return roles[0]


def _place_roles(params: List[inspect.Parameter], forced: Dict[str, str], label: str) -> Tuple[Dict[str, str], List[str]]:
    roles, guessed = dict(forced), []
    free = [p.name for p in params if p.name not in forced.values()]
    for role, (sure, hints) in ROLE_NAMES.items():
        if role in roles:
            continue
        for strength, names in ((2, sure), (1, hints)):
            hits = [n for n in free if n in names or (len(n) > 2 and n.lower() in names)]
            if len(hits) > 1:
                raise ConfigError(f"{label}: {' and '.join(hits)} could both be the {role} logits (parameters: "
                                  f"{', '.join(p.name for p in params)}); say which with --student-arg NAME --teacher-arg NAME")
            if hits:
                roles[role] = hits[0]
                free.remove(hits[0])
                if strength == 1:
                    guessed.append(role)
                break
    _place_by_words([p for p in params if p.name in free], ("student", "teacher"), roles, guessed, free, label)
    targets = [n for n in free if n.lower() in TARGET_NAMES]
    if "teacher" not in roles and targets:  # f(outputs, targets, T): the only candidate for the teacher
        roles["teacher"] = targets.pop(0)
        free.remove(roles["teacher"])
        guessed.append("teacher")
    labels = [n for n in free if n in LABEL_NAMES or n.lower() in LABEL_NAMES + TARGET_NAMES]
    if labels:
        roles["labels"] = labels[0]
        free.remove(labels[0])
    temps = [n for n in free if n in T_NAMES]
    if temps:
        roles["T"] = temps[0]
        free.remove(temps[0])
    _place_by_words([p for p in params if p.name in free], ("labels", "T"), roles, guessed, free, label)
    return roles, guessed


def _place_by_words(params: List[inspect.Parameter], wanted: Tuple[str, ...], roles: Dict[str, str],
                    guessed: List[str], free: List[str], label: str) -> None:
    """Open roles from a word inside the name (``y_pred_student``, ``kd_temp``): always a printed guess."""
    found: Dict[str, List[str]] = {}
    for p in params:
        role = _word_role(p)
        if role in wanted and role not in roles:
            found.setdefault(role, []).append(p.name)
    for role, hits in found.items():
        if len(hits) > 1 and role in ("student", "teacher"):
            raise ConfigError(f"{label}: {' and '.join(hits)} could both be the {role} logits; "
                              f"say which with --student-arg NAME --teacher-arg NAME")
        if len(hits) == 1:
            roles[role] = hits[0]
            free.remove(hits[0])
            guessed.append(role)


def adapt(
    fn: Callable[..., Any],
    extra: Optional[Dict[str, Any]] = None,
    init: Optional[Dict[str, Any]] = None,
    student_arg: Optional[str] = None,
    teacher_arg: Optional[str] = None,
) -> Adapted:
    """Work out which parameter is which; a one-line error says what could not be matched."""
    extra, init = dict(extra or {}), dict(init or {})
    name = getattr(fn, "__name__", None) or type(fn).__name__
    is_class = inspect.isclass(fn)
    if init and not is_class:
        raise ConfigError(f"--init applies to a loss class, but {name} is not a class; use --arg NAME=VALUE for its arguments")
    sig = _signature(fn, name)
    given_T = {k: extra.pop(k) for k in list(extra)  # --arg T=3: the probe T
               if k in sig.parameters and (k in T_NAMES or _word_role(sig.parameters[k]) == "T")}
    for k, v in given_T.items():
        if _positive_number(v) is None:
            raise ConfigError(f"--arg {k}={v!r}: the temperature must be a finite number > 0")
    params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in extra]
    label = f"{name}{sig}"
    listed = ", ".join(p.name for p in params) or "none"
    forced = {}
    for role, given in (("student", student_arg), ("teacher", teacher_arg)):
        if given is not None:
            if given not in (p.name for p in params):
                raise ConfigError(f"--{role}-arg {given}: {name} has no such parameter (parameters: {listed})")
            forced[role] = given
    if student_arg is not None and student_arg == teacher_arg:
        raise ConfigError(f"--student-arg and --teacher-arg both name {student_arg}; give two different parameters")
    roles, guessed = _place_roles(params, forced, label)
    if "student" not in roles or "teacher" not in roles:
        raise ConfigError(f"cannot tell which parameters of {label} are the student and teacher logits (parameters: "
                          f"{listed}); say which with --student-arg NAME --teacher-arg NAME")
    unknown = [p.name for p in params if p.name not in roles.values() and p.default is inspect.Parameter.empty]
    if unknown:
        raise ConfigError(f"{name}: no value for required parameter(s) {', '.join(unknown)}; pass --arg {unknown[0]}=VALUE ({EXPECTED})")
    ordered = {r: roles[r] for r in ("student", "teacher", "labels", "T") if r in roles}
    a = Adapted(name, None if is_class else fn, ordered, extra, fn if is_class else None, init, guessed=guessed)
    if "T" in roles:
        a.default_T = _positive_number(given_T.get(roles["T"], sig.parameters[roles["T"]].default))
    elif is_class:
        a.init_T, a.default_T = _init_kwargs(fn, init)
    else:
        attr = next((n for n in T_NAMES if _positive_number(getattr(fn, n, None)) is not None), None)
        if attr is not None:
            a.default_T, a.default_T_source = float(getattr(fn, attr)), f"read from the instance attribute .{attr}"
    if is_class and "T" in roles:  # T is a forward argument; still check --init against the constructor
        _init_kwargs(fn, init)
    return a
