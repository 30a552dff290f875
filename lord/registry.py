"""Name -> class registries for the pluggable parts: decomposition methods, compression stages, evaluations.

A part registers itself with a decorator in its own module; the registry imports every module of its package
the first time a name is looked up, so adding a part is one new module (plus its ``conf/`` file) and no edit
anywhere else. Parts defined outside the package (a user's script, a test) register the same way, as long as
their module is imported before the name is used.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, TypeVar

from lord.errors import LordError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str, package: str):
        self.what = what  # "method", "stage", "evaluation": used in error messages
        self.package = package  # every module of this package is imported before a lookup
        self._entries: dict[str, type[T]] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def add(cls: type[T]) -> type[T]:
            known = self._entries.get(name)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise LordError(f"{self.what} {name!r} is registered twice ({known.__module__}, {cls.__module__})")
            cls.name = name
            self._entries[name] = cls
            return cls

        return add

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def registration_order(self) -> list[str]:
        """Every name, in the order the entries were registered (module import order, then source order)."""
        self._discover()
        return list(self._entries)

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def get(self, name: str) -> type[T]:
        self._discover()
        if name not in self._entries:
            raise LordError(f"unknown {self.what} {name!r}; registered: {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name in self._entries
