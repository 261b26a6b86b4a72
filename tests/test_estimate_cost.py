"""tools/estimate_cost.py: the cost estimates of docs/reproduce.md come from it (FLOPs and saved tensors counted on
PyTorch's meta device, no GPU)."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest

from tests.conftest import ROOT


def load_tool():
    spec = importlib.util.spec_from_file_location("estimate_cost", ROOT / "tools" / "estimate_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def settings() -> dict:
    return {s.name.split(" ")[0]: s for s in load_tool().SETTINGS}


def test_a_small_setting() -> None:
    b0 = load_tool().estimate(settings()["camvid/segformer_b0*.yaml"])
    assert 0.03 < b0["step_tflop"] < 0.06 and 1.5 < b0["memory_gib"] < 3


@pytest.mark.slow
def test_the_daformer_anchor() -> None:
    anchor = load_tool().estimate(settings()["daformer_anchor"])
    # the 2.8 TFLOPS assumption is what DAFormer's reported 16 h for 40k iterations implies under this counting
    assert anchor["hours"][0] == pytest.approx(16, abs=1)


@pytest.mark.slow
def test_docs_table_equals_the_tool(capsys) -> None:
    load_tool().main([])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "anchor" not in line]
    docs = (ROOT / "docs" / "reproduce.md").read_text()
    for line in printed[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        numbers = " | ".join(cells[1:])
        assert re.search(re.escape(numbers), docs), line
