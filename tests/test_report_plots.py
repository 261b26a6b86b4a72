"""`dasuite report --plot`: the plotted data equal the report's numbers, metrics.jsonl and the pseudo-label
manifest, read back both from the JSON written next to each PNG and from the matplotlib figure itself."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from dasuite.cli.report import command as report_command
from dasuite.errors import DasuiteError
from dasuite.plots import _curve_figure, _per_class_figure, _sweep_figure, plot_report, read_curve
from dasuite.report import build_report, collect_runs, format_report
from tests.conftest import ROOT
from tests.test_report import make_run

ITERATIONS = [50, 100, 150, 200]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(run: Path, values: list[float], extra: dict | None = None) -> None:
    """A metrics.jsonl with one validation record per iteration (and a test record, which curves ignore)."""
    lines = [{"iteration": it, "split": "val", "mIoU": v, "mAcc": v, "aAcc": v, "iou": {}} for it, v in
             zip(ITERATIONS, values)]
    lines.append({"iteration": ITERATIONS[-1], "split": "test", "mIoU": 0.01, "iou": {}})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line | (extra or {})) + "\n" for line in lines))


CURVES = {("exp_a", 0): [0.30, 0.40, 0.45, 0.44], ("exp_a", 1): [0.32, 0.41, 0.47, 0.46],
          ("exp_a", 2): [0.28, 0.39, 0.46, 0.48], ("exp_b", 0): [0.35, 0.45, 0.50, 0.52],
          ("exp_b", 1): [0.36, 0.44, 0.49, 0.51]}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for (name, seed), curve in CURVES.items():
        run = make_run(root, name, seed, test=curve[-1] - 0.02, best=max(curve),
                       iou={"road": curve[-1] + 0.3, "car": curve[-1] - 0.2, "sky": None if seed == 0 else 0.9})
        write_metrics(run, curve)
    return root


def half_width(x, conf: float = 0.95) -> float:
    return stats.t.ppf(0.5 + conf / 2, len(x) - 1) * np.std(x, ddof=1) / math.sqrt(len(x))


def lines_by_gid(fig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {line.get_gid(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
            for ax in fig.axes for line in ax.get_lines() if line.get_gid()}


def test_validation_curves_equal_metrics_jsonl_and_the_group_statistics(runs: Path) -> None:
    report = build_report(collect_runs([runs]))
    fig, data = _curve_figure(report)
    lines = lines_by_gid(fig)
    for name in ("exp_a", "exp_b"):
        group = data["groups"][name]
        seeds = sorted(s for (n, s) in CURVES if n == name)
        assert group["iteration"] == ITERATIONS
        for i, it in enumerate(ITERATIONS):
            x = [CURVES[name, s][i] for s in seeds]
            assert group["mean"][i] == pytest.approx(np.mean(x))
            assert group["ci"][i] == pytest.approx(half_width(x))
            assert group["n"][i] == len(seeds)
        for s in seeds:
            run = group["runs"][f"seed{s}"]
            assert (run["iteration"], run["mIoU"]) == read_curve(runs / name / f"seed{s}")
            assert run["mIoU"] == CURVES[name, s]  # the test record of metrics.jsonl is not a validation point
            xs, ys = lines[f"run:{name}:seed{s}"]
            assert xs.tolist() == ITERATIONS and ys == pytest.approx(100 * np.array(CURVES[name, s]))
            assert run["reported"] is None  # the report uses the test split: no validation marker
        xs, ys = lines[f"mean:{name}"]
        assert ys == pytest.approx(100 * np.array(group["mean"]))
    # with the validation split the report's own per-run numbers are marked on the curves
    val = build_report(collect_runs([runs]), split="val")
    fig, data = _curve_figure(val)
    lines = lines_by_gid(fig)
    for r in val.runs:
        marker = data["groups"][r.group]["runs"][f"seed{r.run.seed}"]["reported"]
        assert marker == {"iteration": r.iteration, "mIoU": r.values["mIoU"], "checkpoint": "best"}
        assert lines[f"reported:{r.group}:seed{r.run.seed}"][1] == pytest.approx([100 * r.values["mIoU"]])


def test_per_class_bars_equal_the_report(runs: Path) -> None:
    report = build_report(collect_runs([runs]), baseline="exp_a")
    fig, data = _per_class_figure(report)
    out = json.loads(format_report(report, "json", per_class=True))
    assert data["classes"] == ["mIoU", "road", "car", "sky"] and data["used"] == "best checkpoint, test split"
    (ax,) = fig.axes
    heights = {}
    for container in ax.containers:
        if hasattr(container, "patches") and container.patches and container.get_label():
            heights[container.get_label().split(" (")[0]] = [p.get_height() for p in container.patches]
    for name, group in data["groups"].items():
        ref = out["groups"][name]
        assert group["mean"][0] == pytest.approx(ref["mIoU"]["mean"]) and group["ci"][0] == pytest.approx(
            ref["mIoU"]["ci"])
        for i, cls in enumerate(data["classes"][1:], 1):
            assert group["mean"][i] == ref["iou"][cls]["mean"] and group["ci"][i] == ref["iou"][cls]["ci"]
            assert group["n"][i] == ref["iou"][cls]["n"]
        expected = [math.nan if m is None else 100 * m for m in group["mean"]]
        assert np.allclose(heights[name], expected, equal_nan=True)
    # the numbers the report itself computes, recomputed here
    a_road = [CURVES["exp_a", s][-1] + 0.3 for s in range(3)]
    assert data["groups"]["exp_a"]["mean"][1] == pytest.approx(np.mean(a_road))
    assert data["groups"]["exp_a"]["ci"][1] == pytest.approx(half_width(a_road))
    assert data["groups"]["exp_a"]["n"][3] == 2  # sky undefined for seed 0


def test_fold_runs_are_averaged_per_seed_like_the_report(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    values = {(0, 1): [0.5, 0.6], (0, 2): [0.3, 0.4], (1, 1): [0.55, 0.65], (1, 2): [0.35, 0.5], (2, 1): [0.9, 0.9]}
    for (seed, fold), curve in values.items():
        run = make_run(root, "cv", seed, test=curve[-1], best=curve[-1], fold=fold)
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"iteration": it, "split": "val", "mIoU": v}) + "\n" for it, v in zip((10, 20), curve)))
    report = build_report(collect_runs([root]))
    _, data = _curve_figure(report)
    group = data["groups"]["cv"]
    for i in range(2):
        per_seed = [np.mean([values[s, 1][i], values[s, 2][i]]) for s in (0, 1)]  # seed 2 lacks fold 2
        assert group["mean"][i] == pytest.approx(np.mean(per_seed)) and group["n"][i] == 2
    assert group["mean"][-1] == pytest.approx(report.groups["cv"].rep.stats["mIoU"].mean)


def manifest(folder: Path, threshold: float = 0.5) -> Path:
    sweep = [{"threshold": t / 20, "mIoU": 0.4 + 0.02 * t if t < 19 else None, "kept": 1 - t / 25} for t in range(20)]
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"experiment": "exp", "role": "target", "threshold": threshold,
                                                      "class_thresholds": None, "sweep": sweep}))
    return folder


def test_pseudo_label_sweep_equals_the_manifest(tmp_path: Path) -> None:
    folder = manifest(tmp_path / "pseudo")
    fig, data = _sweep_figure(folder / "manifest.json")
    sweep = json.loads((folder / "manifest.json").read_text())["sweep"]
    assert data["threshold"] == [r["threshold"] for r in sweep]
    assert data["mIoU"] == [r["mIoU"] for r in sweep] and data["kept"] == [r["kept"] for r in sweep]
    assert data["threshold_used"] == 0.5
    lines = lines_by_gid(fig)
    xs, ys = lines["mIoU"]
    assert xs == pytest.approx(data["threshold"])
    assert np.allclose(ys, [math.nan if v is None else 100 * v for v in data["mIoU"]], equal_nan=True)
    assert lines["kept"][1] == pytest.approx(100 * np.array(data["kept"]))
    assert lines["threshold_used"][0].tolist() == [0.5, 0.5]
    (tmp_path / "nogt").mkdir()
    (tmp_path / "nogt" / "manifest.json").write_text(json.dumps({"sweep": None}))
    assert "no threshold sweep" in _sweep_figure(tmp_path / "nogt" / "manifest.json")


def test_cli_writes_pngs_with_their_data(runs: Path, tmp_path: Path) -> None:
    figures = tmp_path / "figs"
    pseudo = manifest(tmp_path / "cityscapes_train")
    res = CliRunner().invoke(report_command, [str(runs), "--plot", str(figures), "--pseudo-labels", str(pseudo),
                                              "--format", "json"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in figures.iterdir())
    assert names == ["per_class_iou.json", "per_class_iou.png", "pseudo_label_sweep_cityscapes_train.json",
                     "pseudo_label_sweep_cityscapes_train.png", "val_miou.json", "val_miou.png"]
    assert all((figures / n).read_bytes()[:8] == PNG_MAGIC for n in names if n.endswith(".png"))
    assert not any(p.name.startswith(".") for p in figures.iterdir())  # no temp files left
    per_class = json.loads((figures / "per_class_iou.json").read_text())
    report = json.loads(res.stdout)
    for name, group in per_class["groups"].items():
        assert group["mean"][0] == pytest.approx(report["groups"][name]["mIoU"]["mean"])
    curves = json.loads((figures / "val_miou.json").read_text())
    assert curves["groups"]["exp_b"]["runs"]["seed1"]["mIoU"] == CURVES["exp_b", 1]
    assert "wrote" in res.stderr and "val_miou.png" in res.stderr
    # the sweep alone (no runs), and the option without --plot
    alone = tmp_path / "alone"
    res = CliRunner().invoke(report_command, ["--plot", str(alone), "--pseudo-labels", str(pseudo / "manifest.json")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in alone.iterdir()) == ["pseudo_label_sweep_cityscapes_train.json",
                                                       "pseudo_label_sweep_cityscapes_train.png"]
    res = CliRunner().invoke(report_command, [str(runs), "--pseudo-labels", str(pseudo)])
    assert res.exit_code == 1 and "give --plot DIR too" in res.stderr
    res = CliRunner().invoke(report_command, ["--plot", str(alone), "--pseudo-labels", str(tmp_path / "none")])
    assert res.exit_code == 1 and "no pseudo-label manifest" in res.stderr


def test_runs_without_metrics_get_no_curve_figure(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs", "e", 0, test=0.5, best=0.5)
    written, warnings = plot_report(build_report(collect_runs([run])), tmp_path / "figs")
    assert [p.name for p in written] == ["per_class_iou.png"]
    assert any("no validation curve" in w for w in warnings)


def test_plots_of_a_real_toy_run(tmp_path: Path) -> None:
    """A run the engine wrote: the curve is its metrics.jsonl, the last point its summary's final result."""
    from dasuite.engine.loop import train
    from tests.conftest import tiny_toy_config

    train(tiny_toy_config(tmp_path, "train.eval_interval=2", max_iters=4))
    run = tmp_path / "runs" / "toy_source_only" / "seed0"
    report = build_report(collect_runs([run]), split="val", checkpoint="last")
    written, _ = plot_report(report, tmp_path / "figs")
    assert {p.name for p in written} == {"val_miou.png", "per_class_iou.png"}
    curve = json.loads((tmp_path / "figs" / "val_miou.json").read_text())["groups"]["toy_source_only"]
    final = json.loads((run / "summary.json").read_text())["final"]
    assert curve["iteration"] == [2, 4] and curve["mean"][-1] == pytest.approx(final["mIoU"])
    assert curve["runs"]["seed0"]["reported"] == {"iteration": 4, "mIoU": final["mIoU"], "checkpoint": "last"}
    bars = json.loads((tmp_path / "figs" / "per_class_iou.json").read_text())["groups"]["toy_source_only"]
    assert bars["mean"][0] == pytest.approx(final["mIoU"])


def test_help_and_report_without_plot_do_not_import_matplotlib(runs: Path) -> None:
    probe = ("import sys\nfrom dasuite.cli import main\n"
             "for args in (['--help'], ['report', '--help'], ['report', sys.argv[1]]):\n"
             "    try:\n        main(args, prog_name='dasuite')\n    except SystemExit:\n        pass\n"
             "print('MPL', any(m.startswith('matplotlib') for m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe, str(runs)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "MPL False", proc.stdout + proc.stderr


def test_unknown_checkpoint_is_an_error(runs: Path) -> None:
    with pytest.raises(DasuiteError, match="unknown checkpoint"):
        build_report(collect_runs([runs]), checkpoint="middle")
