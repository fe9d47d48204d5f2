"""A tiny decorator registry, so models, datasets and losses are added in exactly one place."""

from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object mapping filled by ``@registry.register("name")``.

    Lookups of unknown names raise a :class:`ConfigError` that lists the valid choices, which is
    the message a user needs when they mistype ``--loss`` or a model name in a recipe.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a notebook re-running its registration cell, a test cleaning up)."""
        if name not in self._items:
            raise ConfigError(f"{self.kind} {name!r} is not registered")
        del self._items[name]

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
