"""``dasuite pseudo-label``: files, thresholds, quality against ground truth, resume, manifest, folder dataset."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dasuite import pseudo_label as pl
from dasuite.cli import main
from dasuite.data import build_dataset
from dasuite.data.folder import FolderConfig
from dasuite.engine.evaluate_run import evaluate_checkpoint
from dasuite.engine.loop import train
from dasuite.errors import DasuiteError
from dasuite.rundir import RunDir
from tests.conftest import tiny_toy_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = tiny_toy_config(tmp_path_factory.mktemp("pl"), "train.eval_interval=6", "data.val.num_images=5")
    train(cfg)
    return cfg, RunDir.for_config(cfg).best


def _png(path):
    return np.array(Image.open(path))


def test_labels_quality_and_sweep_match_evaluation(run, tmp_path):
    cfg, best = run
    manifest = pl.pseudo_label(cfg, best, "val", tmp_path, progress=False)
    assert len(manifest["files"]) == 5 and manifest["kept_fraction"] == 1.0
    evaluated = evaluate_checkpoint(cfg, best, "val", tmp_path / "pred", progress=False)
    # threshold 0 keeps everything: the pseudo-labels' quality is the model's own evaluation
    assert manifest["quality"]["mIoU"] == pytest.approx(evaluated["mIoU"])
    for f in manifest["files"]:
        assert np.array_equal(_png(tmp_path / f["label"]), _png(tmp_path / "pred" / f"{f['name']}.png"))
    sweep = manifest["sweep"]
    assert [r["threshold"] for r in sweep] == pytest.approx([i / 20 for i in range(20)])
    assert sweep[0]["kept"] == 1.0 and sweep[0]["mIoU"] == pytest.approx(evaluated["mIoU"])
    kept = [r["kept"] for r in sweep]
    assert all(a >= b for a, b in zip(kept, kept[1:]))
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["sweep"] == sweep and on_disk["role"] == "val"
    assert not list(tmp_path.rglob("*.tmp"))


def test_threshold_marks_low_confidence_pixels_ignore(run, tmp_path):
    cfg, best = run
    manifest = pl.pseudo_label(cfg, best, "val", tmp_path, threshold=0.6, save_confidence=True, progress=False)
    f = manifest["files"][0]
    label, conf = _png(tmp_path / f["label"]), _png(tmp_path / "confidence" / f"{f['name']}.png")
    assert label.shape == conf.shape == (48, 64)
    low, high = conf < round(0.6 * 255) - 1, conf > round(0.6 * 255) + 1  # away from the 8-bit rounding edge
    assert (label[low] == 255).all() and (label[high] != 255).all()
    assert (label == 255).mean() == pytest.approx(1 - f["kept"])
    row = next(r for r in manifest["sweep"] if r["threshold"] == pytest.approx(0.6))
    assert manifest["kept_fraction"] == pytest.approx(row["kept"])
    assert manifest["quality"]["mIoU"] == pytest.approx(row["mIoU"])


def test_class_percentile_thresholds(run, tmp_path):
    cfg, best = run
    manifest = pl.pseudo_label(cfg, best, "val", tmp_path, class_percentile=0.5, progress=False)
    thresholds = manifest["class_thresholds"]
    assert set(thresholds) == set(manifest["classes"]) and all(0 <= t <= 1 for t in thresholds.values())
    assert 0.45 <= manifest["kept_fraction"] < 0.75  # about half of each class, bin edges kept
    with pytest.raises(DasuiteError, match="percentile"):
        pl.parse_class_thresholds("top:0.5")
    with pytest.raises(DasuiteError, match="not both"):
        pl.pseudo_label(cfg, best, "val", tmp_path / "x", threshold=0.5, class_percentile=0.5)


def test_interrupted_run_resumes_skipping_finished_files(run, tmp_path, monkeypatch):
    cfg, best = run
    reference = pl.pseudo_label(cfg, best, "val", tmp_path / "ref", threshold=0.5, progress=False)
    monkeypatch.setattr(pl, "FLUSH_EVERY", 1)
    original, calls, crash = pl.save_prediction_png, [], True

    def crash_on_third(pred, path):
        calls.append(path.name)
        if len(calls) == 3 and crash:
            raise KeyboardInterrupt("simulated crash")
        original(pred, path)

    monkeypatch.setattr(pl, "save_prediction_png", crash_on_third)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        pl.pseudo_label(cfg, best, "val", out, threshold=0.5, progress=False)
    assert len(list((out / "labels").glob("*.png"))) == 2 and not (out / "manifest.json").exists()
    calls.clear()
    crash = False
    resumed = pl.pseudo_label(cfg, best, "val", out, threshold=0.5, progress=False)
    assert len(calls) == 3  # the two finished images were skipped
    assert resumed["files"] == reference["files"] and resumed["sweep"] == reference["sweep"]
    assert resumed["quality"] == reference["quality"]
    for f in reference["files"]:
        assert np.array_equal(_png(out / f["label"]), _png(tmp_path / "ref" / f["label"]))
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(DasuiteError, match="other settings"):
        pl.pseudo_label(cfg, best, "val", out, threshold=0.7, progress=False)


def test_cli_output_is_a_folder_dataset(run, tmp_path):
    cfg, best = run
    run_dir = best.parent.parent
    out = tmp_path / "pl"
    result = CliRunner().invoke(main, ["pseudo-label", "--run", str(run_dir), "--dataset-role", "val", "--out",
                                       str(out), "--threshold", "0.5", "--save-images"])
    assert result.exit_code == 0, result.output
    assert "threshold  mIoU (%)  kept (%)" in result.output and "road" in result.output
    entry = json.loads((out / "manifest.json").read_text())["folder_dataset"]
    dataset = build_dataset(FolderConfig.model_validate(entry))
    assert len(dataset) == 5 and dataset.classes.names == tuple(entry["classes"])
    item = dataset[0]
    assert torch.equal(item["label"], torch.from_numpy(_png(out / "labels" / item["name"])).long())
    assert (out / "folder_dataset.yaml").is_file()
    bad = CliRunner().invoke(main, ["pseudo-label", "--run", str(run_dir), "--dataset-role", "target", "--out",
                                    str(tmp_path / "b")])
    assert bad.exit_code != 0 and "data.target" in bad.output
