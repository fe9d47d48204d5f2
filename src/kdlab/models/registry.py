"""Model registry: ``@MODELS.register("name")`` on a builder ``fn(in_shape, num_classes, **params)``.

Names with a library prefix (``torchvision:resnet18``, ``timm:resnet50``) are resolved on lookup
by a resolver registered with ``MODELS.register_prefix`` (see :mod:`kdlab.models.zoo`), so the
thousands of library models need no registry entry each, and the library is imported only when
such a name is used.
"""

from __future__ import annotations

import inspect
import math
import reprlib
from typing import Any, Callable, Dict, Mapping, Sequence

from torch import nn

from ..errors import ConfigError
from ..registry import Registry

ModelBuilder = Callable[..., nn.Module]

PrefixResolver = Callable[[str], ModelBuilder]


class ModelRegistry(Registry[ModelBuilder]):
    """A :class:`Registry` that also resolves ``prefix:NAME`` through a registered resolver.

    ``"timm:x" in MODELS`` is true whenever the prefix is registered: whether ``x`` exists (and
    whether the library is installed) is decided by :meth:`get`, whose one-line error says which
    names are close or which ``pip install`` is missing; a plain "unknown model" would hide that.
    """

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self._prefixes: Dict[str, PrefixResolver] = {}

    def register_prefix(self, prefix: str, resolve: PrefixResolver) -> None:
        if prefix in self._prefixes:
            raise ValueError(f"{self.kind} prefix {prefix!r} is already registered")
        self._prefixes[prefix] = resolve

    def _split(self, name: object) -> tuple[str, str] | None:
        if isinstance(name, str) and ":" in name:
            prefix, rest = name.split(":", 1)
            if prefix in self._prefixes:
                return prefix, rest
        return None

    def get(self, name: str) -> ModelBuilder:
        split = self._split(name)
        if split is not None:
            return self._prefixes[split[0]](split[1])
        try:
            return super().get(name)
        except ConfigError:
            choices = ", ".join(super().names() + [f"{p}:NAME" for p in sorted(self._prefixes)])
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def prefixes(self) -> list[str]:
        return sorted(self._prefixes)

    def __contains__(self, name: object) -> bool:
        return self._split(name) is not None or super().__contains__(name)


MODELS: ModelRegistry = ModelRegistry("model")


def model_params(name: str) -> Dict[str, Any]:
    """The configurable parameters of model ``name`` and their defaults."""
    sig = inspect.signature(MODELS.get(name))
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in list(sig.parameters.values())[2:]
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def _passes_extra_params(name: str) -> bool:
    """True for builders taking ``**kwargs`` (library models forward them to their constructor)."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(MODELS.get(name)).parameters.values())


_REPR = reprlib.Repr()  # values in messages stay short, whatever was pasted into the recipe
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60

# Widths must fit torch's C int shapes; anything near this bound fails on memory and says so.
MAX_WIDTH = 2**31 - 1


def _check_rate(value: Any, key: str) -> None:
    """A dropout-like probability: a real number in [0, 1) (NaN passes ``p < 0 or p > 1`` in torch)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0 <= value < 1):
        raise ConfigError(f"{key}: must be a number in [0, 1), got {_REPR.repr(value)}")


def _check_widths(value: Any, key: str) -> None:
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_WIDTH for v in value)
    ):
        raise ConfigError(f"{key}: must be a non-empty list of integers in [1, {MAX_WIDTH}], e.g. [64, 32], got {_REPR.repr(value)}")


def _check_float(value: Any, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {_REPR.repr(value)}")


# Value checks by parameter name, shared by every model that uses the name; any other parameter whose
# default is a float must at least be a finite number.
PARAM_CHECKS: Dict[str, Callable[[Any, str], None]] = {
    "dropout": _check_rate,
    "input_dropout": _check_rate,
    "hidden": _check_widths,
    "channels": _check_widths,
}


def check_model_params(name: str, params: Mapping[str, Any], where: str = "model") -> None:
    """Reject parameters model ``name`` does not accept or values out of range, naming the key.

    Runs when the recipe is loaded, so a bad value fails before any data is read or folder made.
    Builders with ``**kwargs`` pass extra keys on to a library constructor, which alone knows
    them; a wrong key there surfaces from :func:`build_model` as a one-line error naming it.
    A builder with a ``check_params(params, where)`` attribute has it run last, for rules that
    belong to that model alone.
    """
    if _passes_extra_params(name):
        for key, value in params.items():
            if key in PARAM_CHECKS:
                PARAM_CHECKS[key](value, f"{where}.{key}")
            elif isinstance(value, float):
                _check_float(value, f"{where}.{key}")
        return
    accepted = model_params(name)
    for key, value in params.items():
        if key not in accepted:
            raise ConfigError(
                f"{where}.{key}: unknown parameter for model {name!r}; accepted: {', '.join(accepted) or 'none'}"
            )
        check = PARAM_CHECKS.get(key, _check_float if isinstance(accepted[key], float) else None)
        if check is not None:
            check(value, f"{where}.{key}")
    own = getattr(MODELS.get(name), "check_params", None)  # a model's own rules (e.g. cifar-resnet's depth = 6n+2)
    if own is not None:
        own(params, where)


def build_model(
    name: str, in_shape: Sequence[int], num_classes: int, params: Mapping[str, Any] | None = None, where: str = "model"
) -> nn.Module:
    """Build a registered model; unknown parameters raise a one-line error naming the key."""
    params = dict(params or {})
    check_model_params(name, params, where)
    try:
        return MODELS.get(name)(tuple(in_shape), int(num_classes), **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot build {name!r} with {params}: {exc}") from None
    except (RuntimeError, MemoryError) as exc:  # e.g. widths too large to allocate
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "alloc" in reason.lower() or isinstance(exc, MemoryError):
            raise ConfigError(f"{where}: cannot build {name!r} with {params}: not enough memory; use smaller layers") from None
        raise


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
