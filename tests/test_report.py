"""`dasuite report`: statistics checked against numbers recomputed here with numpy/scipy, on fake run directories."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from scipy import stats

from dasuite.cli.report import command as report_command
from dasuite.errors import DasuiteError
from dasuite.report import build_report, collect_runs, format_report

CLASSES = ("road", "car", "sky")


def result(miou: float, iteration: int = 100, iou: dict | None = None) -> dict:
    """A summary result; mAcc and aAcc are derived from mIoU so each metric has its own numbers."""
    iou = iou if iou is not None else {"road": miou + 0.2, "car": miou - 0.1, "sky": None}
    return {"iteration": iteration, "mIoU": miou, "mAcc": miou + 0.05, "aAcc": 0.5 + miou / 2, "fwIoU": miou,
            "iou": iou, "acc": {c: None for c in iou}, "mean_loss": 0.3, "sec_per_image": 0.01, "num_images": 4}


def make_run(root: Path, name: str, seed: int, test: float | None = None, best: float | None = None,
             fold: int | None = None, finished: bool = True, lr: float = 6e-5, method: str = "source_only",
             arch: str = "segformer_b0", iou: dict | None = None) -> Path:
    tag = f"fold{fold}_seed{seed}" if fold is not None else f"seed{seed}"
    run = root / name / tag
    run.mkdir(parents=True)
    entry = {"name": "camvid", "split": "train"} | ({"fold": fold} if fold is not None else {})
    config = {"name": name, "seed": seed, "tag": None, "data": {"resize": None, "source": entry},
              "model": {"arch": arch}, "method": {"name": method}, "optim": {"name": "adamw", "lr": lr}}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if finished:
        summary = {"experiment": name, "tag": tag, "eval_model": "student",
                   "final": None if best is None else result(best, 200, iou),
                   "best": None if best is None else result(best, 150, iou)}
        if test is not None:
            summary["test"] = result(test, 150, iou)
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def ci(x: list[float], conf: float = 0.95) -> float:
    return stats.t.ppf(0.5 + conf / 2, len(x) - 1) * np.std(x, ddof=1) / math.sqrt(len(x))


def report_json(*args: str | Path, per_class: bool = True, **kwargs) -> dict:
    report = build_report(collect_runs(list(args)), **kwargs)
    return json.loads(format_report(report, "json", per_class=per_class))


A = [0.50, 0.52, 0.57]
B = [0.55, 0.61, 0.58, 0.64]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, v in enumerate(A):
        make_run(root, "exp_a", seed, test=v, best=v + 0.01, lr=6e-5, method="source_only")
    for seed, v in enumerate(B):
        make_run(root, "exp_b", seed, test=v, best=v + 0.01, lr=1e-4, method="mean_teacher")
    return root


def test_group_mean_std_ci_match_numpy(runs: Path) -> None:
    out = report_json(runs)
    g = out["groups"]["exp_a"]
    assert g["n"] == 3 and g["units"] == ["seed0", "seed1", "seed2"] and g["folds"] == []
    x = np.array(A)
    assert g["mIoU"]["mean"] == pytest.approx(x.mean())
    assert g["mIoU"]["std"] == pytest.approx(np.std(x, ddof=1))
    assert g["mIoU"]["ci"] == pytest.approx(ci(A))
    assert g["mAcc"]["mean"] == pytest.approx((x + 0.05).mean())
    assert g["aAcc"]["ci"] == pytest.approx(ci(list(0.5 + x / 2)))
    assert g["iou"]["road"]["mean"] == pytest.approx((x + 0.2).mean())
    assert g["iou"]["sky"] == {"n": 0, "mean": None, "std": None, "ci": None}
    assert out["groups"]["exp_b"]["mIoU"]["ci"] == pytest.approx(ci(B))
    assert [r["split"] for r in out["runs"]] == ["test"] * 7
    # another confidence level uses its own t quantile
    g99 = report_json(runs, confidence=0.99)["groups"]["exp_b"]["mIoU"]
    assert g99["ci"] == pytest.approx(ci(B, 0.99))


def test_welch_comparison_matches_scipy(runs: Path) -> None:
    out = report_json(runs, baseline="exp_a")
    (cmp,) = [c for c in out["comparisons"] if c["metric"] == "mIoU"]
    assert (cmp["group"], cmp["baseline"], cmp["n"], cmp["n_baseline"]) == ("exp_b", "exp_a", 4, 3)
    assert cmp["diff"] == pytest.approx(np.mean(B) - np.mean(A))
    ref = stats.ttest_ind(B, A, equal_var=False)
    assert cmp["p_value"] == pytest.approx(ref.pvalue)
    va, vb = np.var(B, ddof=1) / 4, np.var(A, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    assert cmp["df"] == pytest.approx(df)
    assert cmp["ci"] == pytest.approx(stats.t.ppf(0.975, df) * math.sqrt(va + vb))
    assert {c["metric"] for c in out["comparisons"]} == {"mIoU", "mAcc", "aAcc", "IoU"}
    assert {c["class"] for c in out["comparisons"] if c["metric"] == "IoU"} == set(CLASSES)
    # undefined for one replicate on one side: difference only
    one = make_run(runs.parent / "other", "exp_c", 0, test=0.6)
    out = report_json(runs, one, baseline="exp_a", per_class=False)
    (c,) = [c for c in out["comparisons"] if c["group"] == "exp_c" and c["metric"] == "mIoU"]
    assert c["diff"] == pytest.approx(0.6 - np.mean(A)) and c["ci"] is None and c["p_value"] is None
    text = format_report(build_report(collect_runs([runs, one]), baseline="exp_a"), "table")
    row = [line for line in text.splitlines() if line.startswith("exp_c") and " mIoU " in line][-1]  # comparison
    assert row.split()[-4:] == [f"{100 * (0.6 - np.mean(A)):+.2f}", "-", "-", "-"]


def test_single_run_std_shown_as_dash(tmp_path: Path) -> None:
    run = make_run(tmp_path, "solo", 0, test=0.4)
    report = build_report(collect_runs([run]))
    assert report.groups["solo"].rep.stats["mIoU"].std is None
    header, rows = csv_blocks(format_report(report, "csv"))[1][0], csv_blocks(format_report(report, "csv"))[1][1:]
    assert header == ["group", "metric", "n", "mean", "std", "± 95% CI"]
    assert rows[0] == ["solo", "mIoU", "1", "40.00", "", ""]
    table = format_report(report, "table").splitlines()
    assert table[table.index(next(l for l in table if l.startswith("group  metric"))) + 2].split() == \
        ["solo", "mIoU", "1", "40.00", "-", "-"]


def test_fold_average_over_seeds(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    values = {(0, 1): 0.50, (0, 2): 0.60, (1, 1): 0.54, (1, 2): 0.58, (2, 1): 0.70, (3, 1): 0.52, (3, 2): 0.66}
    for (seed, fold), v in values.items():
        make_run(root, "camvid", seed, test=v, fold=fold)
    report = build_report(collect_runs([root]))
    assert any("seed2 lacks fold 2" in w for w in report.warnings)
    out = json.loads(format_report(report, "json"))
    g = out["groups"]["camvid"]
    assert g["folds"] == [1, 2] and g["units"] == ["seed0", "seed1", "seed3"] and g["excluded"] == {"seed2": [2]}
    per_seed = [np.mean([values[s, 1], values[s, 2]]) for s in (0, 1, 3)]
    assert g["mIoU"]["n"] == 3
    assert g["mIoU"]["mean"] == pytest.approx(np.mean(per_seed))
    assert g["mIoU"]["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert g["mIoU"]["ci"] == pytest.approx(ci(per_seed))
    assert g["fold_means"]["1"]["mIoU"] == pytest.approx(np.mean([values[s, 1] for s in (0, 1, 3)]))
    assert g["fold_means"]["2"]["n"] == 3
    assert g["fold_means"]["2"]["mAcc"] == pytest.approx(np.mean([values[s, 2] for s in (0, 1, 3)]) + 0.05)
    assert [(r["seed"], r["fold"]) for r in out["runs"]][:2] == [(0, 1), (0, 2)]
    text = format_report(report, "table")
    assert "Per-fold means" in text and "seeds with their folds averaged" in text


def test_fold_errors(tmp_path: Path) -> None:
    make_run(tmp_path / "a", "cv", 0, test=0.5, fold=1)
    make_run(tmp_path / "a", "cv", 1, test=0.5)
    with pytest.raises(DasuiteError, match="mixes runs with and without a fold"):
        build_report(collect_runs([tmp_path / "a"]))
    make_run(tmp_path / "b", "cv", 0, test=0.5, fold=1)
    make_run(tmp_path / "c", "cv", 0, test=0.6, fold=1)
    with pytest.raises(DasuiteError, match="seed0 fold 1 appears twice"):
        build_report(collect_runs([tmp_path / "b", tmp_path / "c"]))


def test_group_by_config_key_and_baseline_value(runs: Path) -> None:
    out = report_json(runs, group_by="optim.lr", baseline="6.0e-5")
    assert set(out["groups"]) == {"6e-05", "0.0001"}
    assert out["groups"]["6e-05"]["value"] == 6e-5 and out["groups"]["0.0001"]["n"] == 4
    assert {c["baseline"] for c in out["comparisons"]} == {"6e-05"}
    assert set(report_json(runs, group_by="method")["groups"]) == {"source_only", "mean_teacher"}
    (arch,) = report_json(runs, group_by="arch")["groups"].values()
    assert arch["n"] == 7 and arch["units"][0] == "exp_a:seed0"
    header, first = csv_blocks(format_report(build_report(collect_runs([runs]), group_by="arch"), "csv"))[0][:2]
    assert header[:3] == ["group", "experiment", "tag"] and first[:3] == ["segformer_b0", "exp_a", "seed0"]
    with pytest.raises(DasuiteError, match=r"no key 'optim\.lrr'; did you mean 'lr'\?"):
        build_report(collect_runs([runs]), group_by="optim.lrr")
    with pytest.raises(DasuiteError, match="not a group.*exp_a, exp_b"):
        build_report(collect_runs([runs]), baseline="exp_z")


def test_paths_globs_and_parents(runs: Path, tmp_path: Path) -> None:
    paths = [r.path for r in collect_runs([str(runs / "exp_*" / "seed[01]")])]
    assert paths == [runs / e / f"seed{s}" for e in ("exp_a", "exp_b") for s in (0, 1)]
    assert len(collect_runs([str(tmp_path / "**" / "summary.json")])) == 7
    both = collect_runs([runs, runs / "exp_a", runs / "exp_a" / "seed0" / "summary.json"])
    assert len(both) == 7  # duplicates removed
    record = both[0]
    assert (record.experiment, record.tag, record.seed, record.fold) == ("exp_a", "seed0", 0, None)


def test_unfinished_runs_are_skipped(runs: Path) -> None:
    unfinished = make_run(runs, "exp_a", 9, finished=False)
    report = build_report(collect_runs([runs]))
    assert report.skipped == [(str(unfinished), "unfinished (no summary.json)")]
    assert any("skipped" in w and str(unfinished) in w for w in report.warnings)
    assert report.groups["exp_a"].rep.stats["mIoU"].n == 3
    assert json.loads(format_report(report, "json"))["skipped"][0]["path"] == str(unfinished)
    with pytest.raises(DasuiteError, match=f"no finished runs.*{unfinished}"):
        build_report(collect_runs([unfinished]))


def test_split_choice(tmp_path: Path) -> None:
    make_run(tmp_path, "e", 0, test=0.5, best=0.6)
    make_run(tmp_path, "e", 1, best=0.7)  # no test split configured
    report = build_report(collect_runs([tmp_path]))
    assert [(r.checkpoint, r.split) for r in report.runs] == [("best", "test"), ("best", "val")]
    assert any("mixes splits (test, val)" in w for w in report.warnings)
    assert report.groups["e"].rep.stats["mIoU"].mean == pytest.approx(0.6)
    assert report.selection() == "mixed: best checkpoint, test split (1 run); best checkpoint, val split (1 run)"
    val = build_report(collect_runs([tmp_path]), split="val")
    assert val.groups["e"].rep.stats["mIoU"].mean == pytest.approx(0.65)
    assert val.selection() == "best checkpoint, val split"
    only_test = build_report(collect_runs([tmp_path]), split="test")
    assert only_test.groups["e"].rep.stats["mIoU"].n == 1
    assert only_test.skipped[0][1] == "summary.json has no 'test' result"


def test_checkpoint_choice_best_or_last(tmp_path: Path) -> None:
    """best = the highest validation result (summary.json 'best'), last = the end of training ('final'); the test
    result is of the best weights, so it serves 'last' only when the best evaluation was the last one."""
    run = make_run(tmp_path, "e", 0, test=0.5, best=0.6)
    summary = json.loads((run / "summary.json").read_text())
    summary["final"] = result(0.55, 200)
    (run / "summary.json").write_text(json.dumps(summary))
    last_val = build_report(collect_runs([tmp_path]), split="val", checkpoint="last")
    (row,) = last_val.runs
    assert (row.checkpoint, row.split, row.iteration, row.values["mIoU"]) == ("last", "val", 200, 0.55)
    assert last_val.selection() == "last checkpoint, val split"
    best_val = build_report(collect_runs([tmp_path]), split="val")
    assert (best_val.runs[0].iteration, best_val.runs[0].values["mIoU"]) == (150, 0.6)
    # the former names: --split best / final = val with the best / last checkpoint
    assert build_report(collect_runs([tmp_path]), split="final").runs[0].values["mIoU"] == 0.55
    assert build_report(collect_runs([tmp_path]), split="best").runs[0].values["mIoU"] == 0.6
    with pytest.raises(DasuiteError, match="--split final means the last checkpoint"):
        build_report(collect_runs([tmp_path]), split="final", checkpoint="best")
    with pytest.raises(DasuiteError, match="no finished runs.*not the last"):
        build_report(collect_runs([tmp_path]), split="test", checkpoint="last")
    # best evaluation at the end: the test result is also the last checkpoint's
    summary["final"] = summary["best"]
    (run / "summary.json").write_text(json.dumps(summary))
    (row,) = build_report(collect_runs([tmp_path]), checkpoint="last").runs
    assert (row.checkpoint, row.split, row.values["mIoU"]) == ("last", "test", 0.5)
    # no validation at all: the test result is of the last weights, and says so
    (run / "summary.json").write_text(json.dumps({"final": None, "best": None, "test": result(0.45, 300)}))
    (row,) = build_report(collect_runs([tmp_path])).runs
    assert (row.checkpoint, row.split) == ("last", "test")
    # every table title and the json settings name the result used
    report = build_report(collect_runs([tmp_path]), baseline=None)
    text = format_report(report, "table")
    assert text.startswith("Runs (last checkpoint, test split;") and "Groups by experiment (last checkpoint" in text
    out = json.loads(format_report(report, "json"))
    assert out["settings"]["used"] == "last checkpoint, test split" and out["runs"][0]["checkpoint"] == "last"


def csv_blocks(text: str) -> list[list[list[str]]]:
    blocks: list[list[list[str]]] = [[]]
    for row in csv.reader(io.StringIO(text)):
        if row:
            blocks[-1].append(row)
        else:
            blocks.append([])
    return blocks


def test_formats(runs: Path) -> None:
    report = build_report(collect_runs([runs]), baseline="exp_a")
    runs_csv, groups_csv, cmp_csv = csv_blocks(format_report(report, "csv", per_class=True))
    assert runs_csv[0] == ["group", "tag", "seed", "fold", "ckpt", "split", "iter", "mIoU", "mAcc", "aAcc",
                           "IoU road", "IoU car", "IoU sky"]
    assert runs_csv[1] == ["exp_a", "seed0", "0", "", "best", "test", "150", "50.00", "55.00", "75.00", "70.00",
                           "40.00", ""]
    assert len(runs_csv) == 8 and len(groups_csv) == 1 + 2 * 6 and len(cmp_csv) == 1 + 6
    means = {(r[0], r[1]): float(r[3]) for r in groups_csv[1:] if r[1] != "IoU sky"}
    assert groups_csv[-1] == ["exp_b", "IoU sky", "0", "", "", ""]
    assert means["exp_b", "mIoU"] == pytest.approx(100 * np.mean(B), abs=0.005)
    assert cmp_csv[0] == ["group", "metric", "n", "n base", "diff", "± 95% CI", "df", "p"]
    assert float(cmp_csv[1][7]) == pytest.approx(stats.ttest_ind(B, A, equal_var=False).pvalue, rel=1e-2)
    md = format_report(report, "markdown").splitlines()
    assert md[0].startswith("**Runs (best checkpoint, test split; %")
    assert md[2] == "| group | tag | seed | fold | ckpt | split | iter | mIoU | mAcc | aAcc |"
    assert md[3].startswith("| --- | ---: |")
    assert "| exp_b | mIoU | 4 | 59.50 |" in format_report(report, "markdown")
    out = json.loads(format_report(report, "json", per_class=False))
    assert {"runs", "groups", "comparisons", "settings", "skipped", "warnings"} == set(out)
    assert out["runs"][0]["mIoU"] == 0.5 and "iou" not in out["runs"][0]
    assert out["settings"]["values"] == "fractions 0..1"
    assert len(out["comparisons"]) == 3
    table = format_report(report, "table")
    assert table.startswith("Runs (best checkpoint, test split") and "Difference to baseline 'exp_a' (best" in table
    with pytest.raises(DasuiteError, match="unknown format"):
        format_report(report, "xml")


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DasuiteError, match="no run directories given"):
        collect_runs([])
    with pytest.raises(DasuiteError, match="nope.*no such file"):
        collect_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DasuiteError, match=f"no run directories .* found in: {tmp_path / 'empty'}"):
        collect_runs([tmp_path / "empty"])
    run = make_run(tmp_path, "e", 0, test=0.5)
    with pytest.raises(DasuiteError, match="confidence"):
        build_report(collect_runs([run]), confidence=95)
    (run / "summary.json").write_text("{truncated")
    with pytest.raises(DasuiteError, match="cannot read .*summary.json"):
        collect_runs([run])
    (run / "summary.json").write_text(json.dumps({"test": {"iteration": 1, "mIoU": 0.5}}))
    with pytest.raises(DasuiteError, match="missing key 'mAcc'"):
        build_report(collect_runs([run]))
    (run / "summary.json").write_text(json.dumps({"test": result(0.5) | {"aAcc": "high"}}))
    with pytest.raises(DasuiteError, match="summary.json: test: expected numbers or null, got {'aAcc': 'high'}"):
        build_report(collect_runs([run]))


def test_cli(runs: Path, tmp_path: Path) -> None:
    cli = CliRunner()
    res = cli.invoke(report_command, [str(runs / "exp_*"), "--baseline", "exp_a", "--format", "markdown"])
    assert res.exit_code == 0, res.output
    assert "**Difference to baseline 'exp_a'" in res.stdout
    make_run(runs, "exp_a", 9, finished=False)
    out_file = tmp_path / "report.json"
    res = cli.invoke(report_command, [str(runs), "--format", "json", "--per-class", "--output", str(out_file)])
    assert res.exit_code == 0 and "Warning: skipped" in res.stderr
    assert json.loads(out_file.read_text())["groups"]["exp_a"]["iou"]["road"]["n"] == 3
    res = cli.invoke(report_command, [str(tmp_path / "missing*")])
    assert res.exit_code == 1 and res.stderr.startswith("Error: ") and "missing*" in res.stderr
    res = cli.invoke(report_command, [])
    assert res.exit_code == 1 and "no run directories given" in res.stderr


def test_welch_constant_samples() -> None:
    from dasuite.stats import welch

    differ = welch([0.5, 0.5], [0.25, 0.25, 0.25])  # exactly representable: zero variance
    assert differ.diff == 0.25 and differ.ci == 0.0 and differ.df is None and differ.p_value == 0.0
    same = welch([0.5, 0.5], [0.5, 0.5])
    assert same.diff == 0.0 and same.ci == 0.0 and same.p_value is None


def test_undefined_values_and_repeated_seeds(tmp_path: Path) -> None:
    make_run(tmp_path / "a", "e", 0, test=0.5)
    make_run(tmp_path / "a", "e", 1, test=0.6, iou={"road": None, "car": 0.3, "sky": None})
    make_run(tmp_path / "a", "e", 2, test=0.7)
    make_run(tmp_path / "b", "e", 2, test=0.8)  # the same experiment and seed run again elsewhere
    report = build_report(collect_runs([tmp_path / "a", tmp_path / "b"]))
    rep = report.groups["e"].rep
    assert rep.stats["mIoU"].n == 4 and rep.stats["iou/road"].n == 3
    assert rep.stats["iou/road"].mean == pytest.approx(np.mean([0.7, 0.9, 1.0]))
    assert any("IoU road is undefined in 1 of 4 replicates" in w for w in report.warnings)
    assert any("seed2 appears twice" in w and "each counts as a replicate" in w for w in report.warnings)


def test_class_subset_means_are_reported_like_miou(tmp_path: Path) -> None:
    """Runs evaluated with eval.class_subsets carry mIoU_synthia16 / mIoU_synthia13 in summary.json: the report
    gives their per-run values, group statistics and baseline comparisons next to mIoU; runs without them leave them
    undefined, and reports of runs without any subset keep the three metrics only."""
    syn16, syn13 = [0.60, 0.62, 0.67], [0.66, 0.70, 0.71]
    for seed, (a, b) in enumerate(zip(syn16, syn13)):
        run = make_run(tmp_path / "runs", "syn", seed, best=a - 0.08)
        summary = json.loads((run / "summary.json").read_text())
        summary["final"] |= {"mIoU_synthia16": a, "mIoU_synthia13": b}
        (run / "summary.json").write_text(json.dumps(summary))
    for seed in range(2):
        make_run(tmp_path / "runs", "plain", seed, best=0.5)
    report = build_report(collect_runs([tmp_path / "runs" / "syn"]), split="val", checkpoint="last")
    assert report.metrics == ("mIoU", "mAcc", "aAcc", "mIoU_synthia16", "mIoU_synthia13")
    stats16 = report.groups["syn"].rep.stats["mIoU_synthia16"]
    assert stats16.n == 3 and stats16.mean == pytest.approx(np.mean(syn16))
    assert stats16.ci == pytest.approx(ci(syn16))
    assert report.groups["syn"].rep.stats["mIoU_synthia13"].mean == pytest.approx(np.mean(syn13))
    text = format_report(report, "table")
    assert "mIoU_synthia16" in text and f"{100 * np.mean(syn16):.2f}" in text
    out = json.loads(format_report(report, "json"))
    assert [r["mIoU_synthia13"] for r in out["runs"]] == syn13
    assert out["groups"]["syn"]["mIoU_synthia16"]["mean"] == pytest.approx(np.mean(syn16))
    mixed = build_report(collect_runs([tmp_path / "runs"]), split="val", checkpoint="last", baseline="plain")
    assert "mIoU_synthia16" in mixed.metrics and mixed.groups["plain"].rep.stats["mIoU_synthia16"].n == 0
    assert mixed.groups["syn"].rep.stats["mIoU_synthia16"].n == 3
    plain = build_report(collect_runs([tmp_path / "runs" / "plain"]), split="val", checkpoint="last")
    assert plain.metrics == ("mIoU", "mAcc", "aAcc") and "synthia" not in format_report(plain, "json")
