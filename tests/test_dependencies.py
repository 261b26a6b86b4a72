"""Dependencies are honest: every third-party package the code imports (directly or through ``lazy_import``) is
declared in pyproject.toml, and every declared package is imported somewhere (or has a stated runtime role)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from tests.conftest import ROOT

#: declared, never imported by name, and why
RUNTIME_ONLY = {"tensorboard": "Accelerate's tensorboard tracker (log_with='tensorboard') imports it"}


def _imported_modules(folder: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_import" and node.args
                  and isinstance(node.args[0], ast.Constant)):
                found.add(node.args[0].value.split(".")[0])
    local = {"dasuite", "tests", "tools", *(p.stem for p in (ROOT / "tools").glob("*.py"))}  # tools import each other
    return {m for m in found if m not in sys.stdlib_module_names and m not in local}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(extra: str | None = None) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return {_normalise(re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0]) for spec in specs}


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    mapping = packages_distributions()
    return {m: {_normalise(d) for d in mapping.get(m, [m])} for m in modules}


def test_every_imported_package_is_declared_and_every_declared_one_is_used():
    declared = _declared()
    used = _distributions(_imported_modules("dasuite"))
    undeclared = {m: d for m, d in used.items() if not d & declared}
    assert not undeclared, f"imported by dasuite/ but not in [project].dependencies: {undeclared}"
    imported = set().union(*used.values())
    unused = declared - imported - set(RUNTIME_ONLY)
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_tools_and_tests_need_only_declared_packages():
    allowed = _declared() | _declared("dev")
    used = _distributions(_imported_modules("tools") | _imported_modules("tests"))
    undeclared = {m: d for m, d in used.items() if not d & allowed}
    assert not undeclared, f"imported by tools/ or tests/ but not declared (dependencies or [dev]): {undeclared}"
