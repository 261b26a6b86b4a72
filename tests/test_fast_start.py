"""Fast start: ``--help``, ``list`` and config errors never import the heavy libraries (torch, torchvision,
transformers, kornia, accelerate), and neither does importing any registered method or dataset module (the
registries read config classes from them); the layers of the package point one way (import-linter)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

HEAVY = ("torch", "torchvision", "transformers", "kornia", "accelerate")
TOY = str(ROOT / "experiments" / "toy" / "source_only.yaml")
ADVENT = str(ROOT / "experiments" / "toy" / "advent.yaml")

PROBE = """
import json, sys
from dasuite.cli import main
try:
    main(sys.argv[1:], prog_name="dasuite")
    code = 0
except SystemExit as exit:
    code = exit.code
print("\\n" + json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _probe(*args: str) -> tuple[int, list[str], str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["code"], result["heavy"], proc.stdout + proc.stderr


@pytest.mark.parametrize(("args", "code", "says"), [
    (["--help"], 0, "Commands:"),
    (["list", "models"], 0, "segformer_b0"),
    (["list", "methods"], 0, "advent"),
    (["list", "datasets"], 0, "cityscapes"),
    (["run", TOY, "trian.max_iters=3"], 2, "did you mean 'train'"),
    (["run", TOY, 'train.batch_size="8"'], 2, "expected an integer"),
    (["run", TOY, "method.name=sourc_only"], 2, "did you mean 'source_only'"),
    (["run", TOY, "model.arch=segformer_b9"], 2, "unknown model 'segformer_b9'"),
    (["run", ADVENT, "method.adv_wieght.main=1"], 2, "did you mean 'method.adv_weight'"),
    (["run", TOY, "data.source.augment.crop=[a,1]"], 2, "expected an integer"),
])
def test_commands_answer_without_heavy_imports(args, code, says):
    exit_code, heavy, output = _probe(*args)
    assert exit_code == code and says in output, output
    assert heavy == [], f"{args} imported {heavy}"


def test_every_registered_component_module_imports_light():
    code = """
import json, sys
from dasuite.registry import DATASETS, DISTILL_TERMS, METHODS
for registry in (METHODS, DATASETS, DISTILL_TERMS):
    for name in registry.names():
        registry.get(name)
from dasuite.config.schema import ExperimentConfig
print(json.dumps(sorted(m for m in %r if m in sys.modules)))
""" % (HEAVY,)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_registries_find_every_decorated_component_statically():
    """The source scan (no import) and the decorators (after importing every module) agree."""
    import importlib
    import pkgutil

    from dasuite.registry import DATASETS, DISTILL_TERMS, METHODS, MODELS, scan_package

    for registry in (METHODS, MODELS, DATASETS, DISTILL_TERMS):
        package = importlib.import_module(registry.package)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{registry.package}.{info.name}")
        registered = sorted(name for name in registry.names() if registry.entry(name).obj is not None)
        scanned = sorted(name for name, _, _ in scan_package(registry.package, registry.variable))
        assert registered == scanned == registry.names()


def test_layers_point_one_way():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is a dev dependency: pip install -e '.[dev]'"
    proc = subprocess.run([lint], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "0 broken" in proc.stdout, proc.stdout + proc.stderr
