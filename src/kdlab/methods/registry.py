"""Methods by name, each with the dataclass its recipe section is validated against.

``@register_method("fitnets", FitNetsParams)`` on a factory ``fn(params, distill) -> Distiller``
adds a method in one place; recipes and ``--method`` pick it by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from ..config import build_section
from ..errors import ConfigError
from ..registry import Registry


@dataclass(frozen=True)
class MethodEntry:
    """A method's factory and the dataclass of its parameters (None: it takes none)."""

    factory: Callable[..., Any]
    params: Optional[type]
    summary: str


METHODS: Registry[MethodEntry] = Registry("method")


def register_method(name: str, params: Optional[type] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        doc = (factory.__doc__ or "").strip().splitlines()
        METHODS.register(name)(MethodEntry(factory, params, doc[0] if doc else ""))
        return factory

    return decorator


def build_method(name: str, distill: Any, params: Optional[Dict[str, Any]] = None) -> Any:
    """The registered method ``name``, its parameters (plain data) validated against its dataclass.

    ``distill`` is the recipe's :class:`~kdlab.config.DistillConfig` (T, weights, coding).
    """
    entry = METHODS.get(name)
    params = dict(params or {})
    if entry.params is None:
        if params:
            raise ConfigError(f"method {name!r} takes no parameters, got {', '.join(params)}; drop them (`kdlab methods` lists each method's parameters)")
        method = entry.factory(None, distill)
    else:
        method = entry.factory(build_section(entry.params, params, f"distill.{name}"), distill)
    method.method_name = name  # messages name its recipe section (distill.<name>.<field>)
    return method
