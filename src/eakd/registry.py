"""One registry type for every pluggable thing: losses, weight policies, tasks, models, data sets.

A registry maps names to objects. Users add their own from any module::

    from eakd.vision import DATASETS

    @DATASETS.register("my_images")
    def my_images(root, train, download):  # -> (data set of raw images, eakd.vision.Recipe)
        ...

and name them in a config. A registry with an entry-point group also finds what installed packages declare
there (eakd's own tasks are declared that way in pyproject.toml, so the engine never names a task).
``import_plugins`` imports the modules a config lists under ``imports`` before anything is built: that
list is the one place where a config runs code, so a name ``"package.module:attr"`` resolves only in a
module listed there (``PLUGINS``), never by importing it on lookup.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one kind. kind: the word errors use ("loss", "task", ...). group: an
    entry-point group (``eakd.tasks``) searched when a name is not registered yet."""

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind, self.group = kind, group
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; a name taken twice is an error."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._items[name]!r})")
            self._items[name] = obj
            return obj

        return add

    def _entry_point(self, name: str) -> bool:
        """Load the entry point ``name`` of the group (it registers itself or is the object)."""
        if self.group is None:
            return False
        for ep in entry_points(group=self.group, name=name):
            obj = ep.load()
            if name not in self._items:
                self._items[name] = obj
            return True
        return False

    def get(self, name: str) -> T:
        """The object called ``name``, or ``"module:attr"`` of a module the config lists under ``imports:``
        (``PLUGINS``; never imported here); ValueError naming the known names otherwise."""
        if ":" in name:
            module, _, attr = name.partition(":")
            if module not in PLUGINS:
                raise ValueError(
                    f"{self.kind} {name!r}: module {module!r} is not one of the config's `imports:`; list it "
                    "there (importing a module runs its code, so eakd uses only the modules you list)"
                )
            if not hasattr(sys.modules[module], attr):
                raise ValueError(f"{self.kind} {name!r}: module {module!r} has no attribute {attr!r}")
            return getattr(sys.modules[module], attr)
        if name in self._items or self._entry_point(name):
            return self._items[name]
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(known)}")

    def names(self) -> list[str]:
        """Registered names and the group's entry-point names, sorted."""
        found = set(self._items)
        if self.group is not None:
            found |= {ep.name for ep in entry_points(group=self.group)}
        return sorted(found)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._items or name in self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)


PLUGINS: set[str] = set()  # the modules import_plugins imported: the only ones "module:attr" names reach


def import_plugins(modules: list[str]) -> None:
    """Import the user modules (dotted names) that register losses, policies, tasks, models or data sets.

    The current folder is searched first, as ``python -m`` would, so ``imports: [my_plugin]`` finds
    ``./my_plugin.py`` when ``eakd train`` runs from the user's project.
    """
    cwd = str(Path.cwd())
    if modules and cwd not in sys.path:
        sys.path.insert(0, cwd)
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"cannot import plugin module {module!r}: {err}") from err
        PLUGINS.add(module)
