"""The cross-sequence CamVid adaptation files (experiments/camvid/xseq_*.yaml) train on real CamVid in both fold
directions: labelled fold K, unlabelled other fold's train frames, tested on the other fold's held-out val frames."""

from __future__ import annotations

import json

import pytest

from dasuite.config import load_config
from dasuite.config.sweep import with_fold
from dasuite.data.camvid import FOLDS_DIR
from dasuite.engine.loop import train
from tests.conftest import ROOT


def _listed(name: str) -> int:
    lines = (FOLDS_DIR / f"{name}.txt").read_text().splitlines()
    return sum(1 for line in lines if line.split("#", 1)[0].strip())


@pytest.mark.parametrize("method, fold", [("source_only", 2), ("fda", 1), ("dacs", 2), ("mic", 1), ("hrda", 1)])
def test_xseq_trains_and_tests_on_the_other_folds_val(method, fold, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DASUITE_DATA", str(shared_data))
    cfg = load_config(ROOT / "experiments" / "camvid" / f"xseq_{method}.yaml", [
        f"work_dir={tmp_path}", "train.max_iters=2", "train.batch_size=2", "data.num_workers=0",
        "log.progress_bar=false", "eval.batch_size=32"])
    cfg = with_fold(cfg, fold)
    assert cfg.data.test.split == "other_val" and (cfg.data.target is None) == (method == "source_only")
    assert (cfg.method.name == "mean_teacher") == (method in ("dacs", "mic", "hrda"))
    train(cfg)
    summary = json.loads((tmp_path / cfg.name / f"fold{fold}_seed0" / "summary.json").read_text())
    assert summary["best"] is None  # no validation: the last weights are tested
    assert summary["test"]["iteration"] == 2
    assert summary["test"]["num_images"] == _listed(f"fold{3 - fold}_val")
    assert len(summary["test"]["iou"]) == 11
