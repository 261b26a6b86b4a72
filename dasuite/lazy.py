"""``lazy_import``: a module that is imported on its first attribute access.

Modules that registries import to read config classes (every method and dataset module, and the shared modules
their configs come from) must import without torch, kornia, transformers or accelerate, so that ``dasuite list``,
``--help`` and config errors answer in a fraction of a second. They write ``torch = lazy_import("torch")`` at the
top and use ``torch.<name>`` as usual inside functions (not in decorators or default values, which run at import).
``tests/test_fast_start.py`` checks every registered module.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """Stands for the module ``name``; the first attribute access imports it (and later ones read it directly)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_target"] = None

    def _load(self) -> ModuleType:
        target = self.__dict__["_lazy_target"]
        if target is None:
            target = self.__dict__["_lazy_target"] = importlib.import_module(self.__name__)
        return target

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._load(), attr)
        self.__dict__[attr] = value  # cached: later lookups bypass __getattr__
        return value

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_lazy_target"] is not None else "not loaded yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_import(name: str) -> Any:
    """A stand-in for ``import name`` (``import a.b as c`` is ``c = lazy_import("a.b")``) that imports on first use;
    ``sys.modules`` is untouched until then."""
    return LazyModule(name)
