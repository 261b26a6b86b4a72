"""The command line: run, eval (all formats, predictions), data check, list, and error handling."""

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dasuite.cli import main
from dasuite.rundir import RunDir
from tests.conftest import ROOT

TOY = str(ROOT / "experiments" / "toy" / "source_only.yaml")


def _tiny_args(tmp_path):
    return [f"work_dir={tmp_path / 'runs'}", "train.max_iters=2", "train.batch_size=2", "train.eval_interval=2",
            "train.checkpoint_interval=2", "data.num_workers=0", "data.source.size=[64,48]",
            "data.source.num_images=8", "data.source.augment.crop=[48,48]", "data.val.size=[64,48]",
            "data.val.num_images=3", "data.test.size=[64,48]", "data.test.num_images=3", "log.progress_bar=false"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    result = CliRunner().invoke(main, ["run", TOY, *_tiny_args(tmp), "--seed", "3"])
    assert result.exit_code == 0, result.output + str(result.exception)
    return tmp, result


def test_run_prints_per_class_tables_and_names_run_by_seed(finished_run):
    tmp, result = finished_run
    assert "mIoU (%)" in result.output and "road" in result.output and "test (test split" in result.output
    assert (tmp / "runs" / "toy_source_only" / "seed3" / "summary.json").is_file()


def test_eval_json_format_matches_summary(finished_run):
    tmp, _ = finished_run
    run_dir = tmp / "runs" / "toy_source_only" / "seed3"
    result = CliRunner().invoke(main, ["eval", "--run", str(run_dir), "--split", "test", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"mIoU", "mAcc", "aAcc", "fwIoU", "iou", "acc", "mean_loss", "sec_per_image", "num_images"}
    assert 0 <= data["mIoU"] <= 1 and data["num_images"] == 3
    assert data["acc"]["wall"] is None  # the toy has no walls: accuracy undefined (absent from the labels)
    summary = json.loads((run_dir / "summary.json").read_text())["test"]
    assert data["mIoU"] == pytest.approx(summary["mIoU"]) and data["iou"] == pytest.approx(summary["iou"])


def test_eval_per_class_table_csv_and_markdown(finished_run):
    tmp, _ = finished_run
    run_dir = str(tmp / "runs" / "toy_source_only" / "seed3")
    table = CliRunner().invoke(main, ["eval", "--run", run_dir, "--per-class"])
    assert table.exit_code == 0 and "sidewalk" in table.output and "mIoU" in table.output
    rows = list(csv.reader(io.StringIO(CliRunner().invoke(main, ["eval", "--run", run_dir, "--format", "csv",
                                                                 "--per-class"]).output)))
    assert rows[0][0] == "class" and any(r and r[0] == "road" for r in rows)
    md = CliRunner().invoke(main, ["eval", "--run", run_dir, "--format", "markdown"]).output
    assert md.lstrip().startswith("|") and "---" in md


def test_eval_config_checkpoint_and_save_predictions(finished_run, tmp_path):
    tmp, _ = finished_run
    run = RunDir(tmp / "runs" / "toy_source_only" / "seed3")
    out = tmp_path / "preds"
    result = CliRunner().invoke(main, ["eval", "--config", str(run.config), "--checkpoint", str(run.last),
                                       "--split", "val", "--save-predictions", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    files = sorted(out.iterdir())
    assert len(files) == 3 and all(f.suffix == ".png" for f in files)
    pred = np.array(Image.open(files[0]))
    assert pred.shape == (48, 64) and pred.dtype == np.uint8 and pred.max() < 19


def test_errors_are_one_line_with_exit_codes(tmp_path):
    runner = CliRunner()
    bad_key = runner.invoke(main, ["run", TOY, "train.max_iter=3"])
    assert bad_key.exit_code == 2 and "did you mean 'train.max_iters'" in bad_key.output
    assert "Traceback" not in bad_key.output
    missing = runner.invoke(main, ["eval", "--run", str(tmp_path)])
    assert missing.exit_code == 1 and "not a dasuite run directory" in missing.output
    both = runner.invoke(main, ["eval"])
    assert both.exit_code == 2
    no_fold = runner.invoke(main, ["run", TOY, "--fold", "1"])
    assert no_fold.exit_code == 2 and "no dataset in the experiment has folds" in no_fold.output


def test_data_check_and_list(tmp_path):
    result = CliRunner().invoke(main, ["data", "check", TOY, "data.source.num_images=4", "data.val.num_images=2",
                                       "data.test.num_images=2", "data.num_workers=0"])
    assert result.exit_code == 0, result.output
    assert "data.source" in result.output and "data.test" in result.output
    listed = CliRunner().invoke(main, ["list", "models"])
    assert "segformer_b0" in listed.output and "deeplabv3plus_r101" in listed.output


def test_data_check_fails_on_missing_root(tmp_path):
    exp = ROOT / "experiments" / "camvid" / "segformer_b0.yaml"
    result = CliRunner().invoke(main, ["data", "check", str(exp), f"data.source.root={tmp_path / 'nowhere'}"])
    assert result.exit_code == 1 and "nowhere" in result.output


def test_fold_option_reaches_mix_members():
    from dasuite.config.sweep import with_fold as _with_fold
    from dasuite.config import load_config

    cfg = load_config(ROOT / "experiments" / "camvid" / "segformer_b0.yaml",
                      ["data.source={mix: [{name: camvid, split: train}, {name: toy}]}"])
    folded = _with_fold(cfg, 2)
    assert folded.data.source.mix[0].fold == 2 and folded.data.val.fold == 2 and folded.data.test.fold == 2
    assert folded.run_tag() == "fold2_seed0"
