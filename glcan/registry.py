"""Names to factories for one kind of thing (backbones, heads): the rules live in one place.

A config says ``backbone: resnet110`` or ``head: dgl``; the registry turns the string into the
factory, refuses a name registered twice, and answers an unknown name with the list of the
known ones.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Optional, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Factories by name.

    Args:
        kind: what is registered (``backbone``, ``head``), for messages.
        sort_key: the order in which :meth:`names` lists them (default: alphabetical).
    """

    def __init__(self, kind: str, sort_key: Optional[Callable[[str], Any]] = None) -> None:
        self.kind, self._sort_key = kind, sort_key
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator that stores a factory under ``name`` (non-empty, not taken) and returns it unchanged."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def decorator(factory: F) -> F:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        """Every registered name, in listing order."""
        return sorted(self._factories, key=self._sort_key)

    def get(self, name: str) -> F:
        """The factory registered as ``name``; an unknown name is one clear line."""
        if name not in self._factories:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint}; choose one of: {', '.join(self.names())}")
        return self._factories[name]
