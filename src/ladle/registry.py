"""One registry type for every kind of plug-in: recipes, data formats, model kinds, corruption suites, objectives,
optimisers, schedules, executors.

    FORMATS = Registry("data format")
    @FORMATS.register("imagefolder")
    def image_folder(...): ...
    FORMATS.get("imagefolder")              # or "package.module:name": imported on demand
    FORMATS.get("x")   # LadleError: unknown data format 'x' (known: imagefolder, or package.module:name)

Like lm-evaluation-harness's one `Registry`: register / get and one wording for unknown names, so a contract test
can run over every entry of every registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ladle.errors import LadleError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; `get` also imports `package.module:name` when `importable`."""

    def __init__(self, kind: str, *, importable: bool = True):
        self.kind = kind
        self.importable = importable
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """`REG.register("name", obj)`, or `@REG.register("name")` over a function or class; a name is taken once."""

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return add(entry) if entry is not None else add

    def get(self, name: str, where: str = "") -> T:
        """The entry registered under `name`, or the object `package.module:name` names; one line otherwise.

        `where` (e.g. "recipe", or "FILE:LINE: field 'recipe'") starts the line, so a caller needs no try/except."""
        if name in self._entries:
            return self._entries[name]
        prefix = f"{where}: " if where else ""
        if self.importable and ":" in name and not name.startswith(":"):
            module_name, _, attr = name.partition(":")
            try:
                return getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError, ValueError) as e:
                raise LadleError(f"{prefix or self.kind + ': '}cannot import '{name}': {e}") from None
        raise LadleError(f"{prefix}unknown {self.kind} '{name}' (known: {', '.join(self._entries) or 'none'}"
                         + (", or package.module:name)" if self.importable else ")"))

    def first(self, accepts: Callable[[T], bool]) -> T | None:
        """The first entry, in registration order, that `accepts` (formats and model kinds detect their input)."""
        return next((entry for entry in self._entries.values() if accepts(entry)), None)

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]
