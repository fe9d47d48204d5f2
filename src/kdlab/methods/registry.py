"""Methods by name, each with the dataclass its recipe section is validated against.

``@register_method("fitnets", FitNetsParams)`` on a factory ``fn(params, distill) -> Distiller``
adds a method in one place; recipes and ``--method`` pick it by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

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
