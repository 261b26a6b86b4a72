"""Registries of what users pick by name in YAML: methods, models, datasets and ``distill``'s terms.

A registry knows every name without importing anything: built-in names are read from the ``@<REGISTRY>.register(
"name", ...)`` decorators in its package's source files (parsed with ``ast``, never executed), third-party names
from the Python entry points of its group (``dasuite.methods``, ``dasuite.models``, ``dasuite.datasets``,
``dasuite.distill_terms``; the entry point's name is the registered name, its value the module that registers it). A
component's module is imported the first time its name is used (``get``, ``config``), and the decorator there
records the object and its config class.
So ``dasuite list`` and config validation never import torch for a component that is not used.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Optional, TypeVar, get_args

from dasuite.errors import ConfigError

T = TypeVar("T")


@dataclass
class Entry:
    """One registered name: the module that registers it, where it was found, and once imported the object."""

    module: str
    origin: str
    summary: str = ""
    obj: Any = None
    config: Optional[type] = None


class Registry(Generic[T]):
    """Name -> object (a class or factory) with its optional config class; see the module docstring."""

    def __init__(self, kind: str, package: str, group: str, variable: str) -> None:
        self.kind, self.package, self.group, self.variable = kind, package, group, variable
        self._entries: dict[str, Entry] = {}
        self._discovered = False

    # ------------------------------------------------------------------------------------------- registration
    def register(self, *names: str, config: Optional[type] = None) -> Callable[[T], T]:
        """Decorator recording ``obj`` under each of ``names`` (a model factory may serve several names) with its
        config class, whose ``name`` field must be ``Literal[<the registered name>]``."""
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{self.kind} registration needs at least one non-empty name, got {names!r}")
        if config is not None and len(names) != 1:
            raise ValueError(f"a {self.kind} registered with a config class has exactly one name, got {names!r}")

        def decorator(obj: T) -> T:
            self._discover()
            module = getattr(obj, "__module__", "?")
            for name in names:
                if config is not None:
                    _check_config_name(self.kind, name, config)
                entry = self._entries.get(name)
                if entry is not None and (entry.module != module or entry.obj not in (None, obj)):
                    raise ConfigError(f"{self.kind} {name!r} is registered twice: by {entry.module} "
                                      f"({entry.origin}) and by {module}")
                if entry is None:
                    entry = self._entries[name] = Entry(module, "registered at run time")
                entry.obj, entry.config = obj, config
            return obj

        return decorator

    # ------------------------------------------------------------------------------------------------ lookup
    def names(self) -> list[str]:
        """Every known name (built-in, plugin, registered at run time), sorted; imports nothing."""
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def entry(self, name: str) -> Entry:
        """The entry of ``name`` (not imported yet, maybe); unknown names get a "did you mean" error."""
        self._discover()
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self._entries, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{hint} (valid: {', '.join(self.names())})")
        return self._entries[name]

    def get(self, name: str) -> T:
        """The registered object, importing its module on first use."""
        entry = self.entry(name)
        if entry.obj is None:
            try:
                importlib.import_module(entry.module)
            except ConfigError:
                raise
            except Exception as err:
                raise ConfigError(f"{self.kind} {name!r} ({entry.origin}): importing {entry.module} failed: "
                                  f"{type(err).__name__}: {err}") from err
            if entry.obj is None:
                raise ConfigError(f"{self.kind} {name!r} ({entry.origin}): module {entry.module} does not register "
                                  f"it (expected @{self.variable}.register({name!r}, ...) at its top level)")
        return entry.obj

    def config(self, name: str) -> Optional[type]:
        """The config class ``name`` was registered with (None when it has none)."""
        self.get(name)
        return self._entries[name].config

    def configs(self) -> dict[str, type]:
        """Every name's config class, sorted by name (imports every component module of this kind)."""
        out = {}
        for name in self.names():
            cfg = self.config(name)
            if cfg is None:
                raise ConfigError(f"{self.kind} {name!r} was registered without a config class")
            out[name] = cfg
        return out

    def summary(self, name: str) -> str:
        """The first paragraph of the registering module's docstring, read without importing it."""
        return self.entry(name).summary

    # --------------------------------------------------------------------------------------------- discovery
    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for name, module, summary in scan_package(self.package, self.variable):
            self._add(name, Entry(module, "built-in", summary))
        for name, module, dist in _entry_points(self.group):
            self._add(name, Entry(module, f"plugin {dist}, entry point {self.group}"))

    def _add(self, name: str, entry: Entry) -> None:
        known = self._entries.get(name)
        if known is not None and known.module != entry.module:
            raise ConfigError(f"{self.kind} {name!r} is registered twice: by {known.module} ({known.origin}) and by "
                              f"{entry.module} ({entry.origin}); rename one of them")
        if known is None:
            self._entries[name] = entry
        elif not known.summary:
            known.summary = entry.summary


def _check_config_name(kind: str, name: str, config: type) -> None:
    field = getattr(config, "model_fields", {}).get("name")
    if field is None or get_args(field.annotation) != (name,):
        raise ValueError(f"{kind} {name!r}: its config class {config.__name__} needs the field "
                         f"name: Literal[{name!r}] = {name!r}")


def scan_package(package: str, variable: str) -> list[tuple[str, str, str]]:
    """``(name, module, docstring summary)`` for every ``@<variable>.register("name", ...)`` decorator at the top
    level of the package's modules, read with ``ast`` (nothing is imported; names must be string literals)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for folder in spec.submodule_search_locations:
        for path in sorted(Path(folder).glob("*.py")):
            if path.stem.startswith("_"):
                continue
            text = path.read_text(encoding="utf-8")
            if f"{variable}.register(" not in text:
                continue
            module = f"{package}.{path.stem}"
            tree = ast.parse(text, str(path))
            for node in tree.body:
                for name in _registered_names(node, variable):
                    doc = ast.get_docstring(tree) or ast.get_docstring(node) or ""  # type: ignore[arg-type]
                    found.append((name, module, " ".join(doc.split("\n\n", 1)[0].split()).replace("``", "")))
    return found


def _registered_names(node: ast.stmt, variable: str) -> list[str]:
    if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
        return []
    names = []
    for deco in node.decorator_list:
        call = deco if isinstance(deco, ast.Call) else None
        func = call.func if call is not None else None
        if (isinstance(func, ast.Attribute) and func.attr == "register" and isinstance(func.value, ast.Name)
                and func.value.id == variable):
            names += [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return names


def _entry_points(group: str) -> list[tuple[str, str, str]]:
    from importlib.metadata import entry_points

    out = []
    for ep in entry_points(group=group):
        dist = getattr(ep, "dist", None)
        out.append((ep.name, ep.value.split(":", 1)[0].strip(), getattr(dist, "name", None) or "unknown package"))
    return out


METHODS: Registry = Registry("method", "dasuite.methods", "dasuite.methods", "METHODS")
MODELS: Registry = Registry("model", "dasuite.models", "dasuite.models", "MODELS")
DATASETS: Registry = Registry("dataset", "dasuite.data", "dasuite.datasets", "DATASETS")
#: The loss terms of ``distill`` (``method.kl``, ``method.cirkd``, ...): one module each in dasuite/methods/kd_terms/.
DISTILL_TERMS: Registry = Registry("distillation term", "dasuite.methods.kd_terms", "dasuite.distill_terms",
                                   "DISTILL_TERMS")
