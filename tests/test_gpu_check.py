"""tools/gpu_check.py: its --smoke mode runs every measurement of the GPU check on the CPU and reports them."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

SCRIPT = ROOT / "tools" / "gpu_check.py"


def test_smoke_runs_every_measurement(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu (smoke)"
    printed = dict(re.findall(r"^(\w+): ((?:\w+_ratio=[\d.]+ ?)+)$", proc.stdout, flags=re.M))
    for key, ratios in [("engine_vs_bare_eager", ("time", "memory")), ("engine_vs_bare_compiled", ("time", "memory")),
                        ("dacs_vs_source_only", ("time", "memory")), ("slide_vs_whole", ("time", "peak")),
                        ("mic_hrda_memory", ("time", "memory"))]:
        figures = result[key]
        sides = [v for v in figures.values() if isinstance(v, dict)]
        assert len(sides) == 2, key
        for side in sides:  # real measurements: positive times and a resident size of a torch process
            assert (side.get("step_s") or side.get("seconds")) > 0 and side["peak_mib"] > 100, (key, side)
        a, b = sides[1], sides[0]
        time_key = "step_s" if "step_s" in a else "seconds"
        assert figures["time_ratio"] == pytest.approx(a[time_key] / b[time_key])
        for name in ratios:
            value = figures[f"{name}_ratio"]
            assert math.isfinite(value) and value > 0
            assert f"{name}_ratio={value:.3f}" in printed[key], (key, printed.get(key))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_without_cuda_it_says_to_use_smoke():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device here; run it on the GPU machine, or `python tools/gpu_check.py --smoke` to check "
        "the script on this CPU"]
