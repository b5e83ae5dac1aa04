"""One name -> object table, the shape every qcompiler registry has (passes, schemes, backends,
ONNX export targets): register by name, look up with an error that lists what exists.

Built-ins that live in modules of their own are named in ``lazy`` (name -> module) or loaded all
at once by ``builtins`` (a module whose import registers them), so looking a name up is what
imports them, not an import of ``qcompiler`` for its side effects.
"""

from __future__ import annotations

import importlib
from typing import Generic, Iterator, TypeVar

from qcompiler.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one ``kind`` ("pass", "scheme", ...) by name."""

    def __init__(self, kind: str, *, builtins: str | None = None, lazy: dict[str, str] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._builtins = builtins
        self._lazy = dict(lazy or {})

    def _load_builtins(self) -> None:
        if self._builtins is not None:
            module, self._builtins = self._builtins, None
            importlib.import_module(module)

    def register(self, name: str, obj: T) -> T:
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        self._load_builtins()
        if name not in self._items and name in self._lazy:
            try:
                importlib.import_module(self._lazy[name])
            except ImportError as e:
                raise ConfigError(f"{self.kind} {name!r} is not available: {e}",
                                  hint="install what the message names, or choose another") from e
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}", hint=f"available: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Every name, including lazy ones not imported yet, sorted."""
        self._load_builtins()
        return sorted(set(self._items) | set(self._lazy))

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
