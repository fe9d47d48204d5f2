"""Model registry: ``@MODELS.register("name")`` on a builder ``fn(in_shape, num_classes, **params)``."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Sequence

from torch import nn

from ..errors import ConfigError
from ..registry import Registry

ModelBuilder = Callable[..., nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model")


def model_params(name: str) -> Dict[str, Any]:
    """The configurable parameters of model ``name`` and their defaults."""
    sig = inspect.signature(MODELS.get(name))
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in list(sig.parameters.values())[2:]
    }


def check_model_params(name: str, params: Mapping[str, Any], where: str = "model") -> None:
    """Reject parameters model ``name`` does not accept, naming the offending key."""
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
