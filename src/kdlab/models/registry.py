"""Model registry: ``@MODELS.register("name")`` on a builder ``fn(in_shape, num_classes, **params)``.

Names with a library prefix (``torchvision:resnet18``, ``timm:resnet50``) are resolved on lookup
by a resolver registered with ``MODELS.register_prefix`` (see :mod:`kdlab.models.zoo`), so the
thousands of library models need no registry entry each, and the library is imported only when
such a name is used.
"""

from __future__ import annotations

import inspect
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


def check_model_params(name: str, params: Mapping[str, Any], where: str = "model") -> None:
    """Reject parameters model ``name`` does not accept, naming the offending key.

    Builders with ``**kwargs`` pass extra keys on to a library constructor, which alone knows
    them; a wrong key there surfaces from :func:`build_model` as a one-line error naming it.
    """
    if _passes_extra_params(name):
        return
    accepted = model_params(name)
    for key in params:
        if key not in accepted:
            raise ConfigError(
                f"{where}.{key}: unknown parameter for model {name!r}; accepted: {', '.join(accepted) or 'none'}"
            )


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


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
