"""`dasuite run --sweep KEY=V1,V2` (one run per value, tags named by value) and `--baseline EXP` (side-by-side
per-class table, finished baseline runs reused)."""

import pytest
import yaml
from click.testing import CliRunner

from dasuite.cli import main
from dasuite.config.sweep import expand_sweeps, parse_sweep, split_values
from dasuite.errors import ConfigError
from tests.conftest import tiny_toy_config


def test_split_values_keeps_brackets_braces_and_quotes_whole():
    assert split_values("100,500, 1000") == ["100", "500", "1000"]
    assert split_values("[240,180],[480,360]") == ["[240,180]", "[480,360]"]
    assert split_values("{n: 1, strategy: random},'a,b'") == ["{n: 1, strategy: random}", "'a,b'"]


def test_expand_sweeps_is_the_cartesian_product_with_value_tags():
    combos = expand_sweeps(["data.target.subset.n=100,500", "data.target.subset.strategy=random,class_balanced"])
    assert len(combos) == 4
    assert combos[0] == (["data.target.subset.n=100", "data.target.subset.strategy=random"], "n=100_strategy=random")
    assert combos[3][1] == "n=500_strategy=class_balanced"
    assert expand_sweeps([]) == [([], "")]
    assert expand_sweeps(["data.resize=[240,180]"])[0][1] == "resize=-240-180-"  # path-safe tag


@pytest.mark.parametrize("text, message", [
    ("data.target.subset.n", "expected KEY=V1,V2"),
    ("=1,2", "expected KEY=V1,V2"),
    ("a.b=1,,2", "empty value"),
    ("a.b=1,1", "appears twice"),
])
def test_bad_sweeps_are_clear_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_sweep(text)
    with pytest.raises(ConfigError, match="swept once"):
        expand_sweeps(["a=1,2", "a=3"])


def _write(cfg, path):
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return str(path)


def test_sweep_runs_one_directory_per_value(tmp_path):
    exp = _write(tiny_toy_config(tmp_path, max_iters=2), tmp_path / "exp.yaml")
    result = CliRunner().invoke(main, ["run", exp, "--sweep", "data.source.subset.n=4,8", "--seeds", "1"])
    assert result.exit_code == 0, result.output + str(result.exception)
    root = tmp_path / "runs" / "toy_source_only"
    assert sorted(p.name for p in root.iterdir()) == ["n=4_seed1", "n=8_seed1"]
    for n in (4, 8):
        run = root / f"n={n}_seed1"
        assert yaml.safe_load((run / "config.yaml").read_text())["data"]["source"]["subset"]["n"] == n
        listed = [line for line in (run / "subsets" / "source.txt").read_text().splitlines()
                  if line and not line.startswith("#")]
        assert len(listed) == n
    assert "== toy_source_only/n=4_seed1" in result.output


def test_baseline_is_run_then_reused_and_printed_side_by_side(tmp_path):
    base = _write(tiny_toy_config(tmp_path, max_iters=2), tmp_path / "base.yaml")
    exp = _write(tiny_toy_config(tmp_path, "name=toy_other", "optim.lr=0.01", max_iters=2), tmp_path / "exp.yaml")
    first = CliRunner().invoke(main, ["run", exp, "--baseline", base])
    assert first.exit_code == 0, first.output + str(first.exception)
    assert "== baseline toy_source_only/seed0" in first.output
    header = next(line for line in first.output.splitlines() if line.startswith("class (IoU %)"))
    assert header.split()[-2:] == ["toy_source_only", "toy_other"]
    assert "toy_other vs baseline toy_source_only (test split, seed0)" in first.output
    assert (tmp_path / "runs" / "toy_source_only" / "seed0" / "summary.json").is_file()
    second = CliRunner().invoke(main, ["run", exp, "name=toy_third", "--baseline", base])
    assert second.exit_code == 0, second.output + str(second.exception)
    assert "baseline: reusing the finished run" in second.output and "== baseline" not in second.output


def test_flagship_without_data_names_the_folder_the_docs_and_the_toy(tmp_path, monkeypatch):
    """The user's own main job, `dasuite run experiments/cutmix_pseudo.yaml`, with no datasets installed."""
    from tests.conftest import ROOT

    monkeypatch.setenv("DASUITE_DATA", str(tmp_path / "nodata"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # its ImageNet file is there: the data is what's missing
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "resnet101-63fe2227.pth").write_bytes(b"")
    result = CliRunner().invoke(main, ["run", str(ROOT / "experiments" / "cutmix_pseudo.yaml"),
                                       f"work_dir={tmp_path / 'runs'}"])
    assert result.exit_code == 1
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: dataset 'gta5'") and str(tmp_path / "nodata" / "gta5") in message
    assert "docs/datasets.md" in message and "experiments/toy" in message
