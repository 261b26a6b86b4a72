"""`dasuite report` over real toy runs (3 seeds): mean, std and 95% CI recomputed independently from the files."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from dasuite.cli import main
from dasuite.engine.loop import train
from tests.conftest import tiny_toy_config


def test_report_over_three_real_toy_runs(tmp_path):
    for seed in (0, 1, 2):
        train(tiny_toy_config(tmp_path, f"seed={seed}", max_iters=3))
    root = tmp_path / "runs" / "toy_source_only"
    values = {}
    for seed in (0, 1, 2):
        test = json.loads((root / f"seed{seed}" / "summary.json").read_text())["test"]
        values.setdefault("mIoU", []).append(test["mIoU"])
        values.setdefault("aAcc", []).append(test["aAcc"])
    result = CliRunner().invoke(main, ["report", str(root), "--format", "json"])
    assert result.exit_code == 0, result.output
    group = json.loads(result.stdout)["groups"]["toy_source_only"]
    assert group["n"] == 3
    for metric, xs in values.items():
        x = np.array(xs)
        half = stats.t.ppf(0.975, df=2) * x.std(ddof=1) / np.sqrt(3)
        assert group[metric]["mean"] == pytest.approx(x.mean())
        assert group[metric]["std"] == pytest.approx(x.std(ddof=1))
        assert group[metric]["ci"] == pytest.approx(half)
    table = CliRunner().invoke(main, ["report", str(root)])
    assert f"{100 * np.mean(values['mIoU']):.2f}" in table.output
