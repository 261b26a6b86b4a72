"""The ``dasuite`` command line: parses arguments and delegates; errors print one message and exit non-zero."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import click

from dasuite.errors import ConfigError, DasuiteError

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def friendly_errors(func: Callable) -> Callable:
    """Turn DasuiteError into one printed line and its exit code (traceback only with --debug)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return func(*args, **kwargs)
        except DasuiteError as err:
            if debug:
                raise
            if _is_main_process():
                click.echo(f"Error: {err}", err=True)
            sys.exit(err.exit_code)

    return wrapper


@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="dasuite")
def main(debug: bool) -> None:
    """dasuite: semantic segmentation with scarce target labels (domain adaptation, semi-supervised, KD)."""


@main.command(epilog="""\b
Examples:
  dasuite run experiments/toy/source_only.yaml
  dasuite run experiments/toy/cutmix_pseudo.yaml --baseline experiments/toy/source_only.yaml
  dasuite run experiments/camvid/segformer_b0.yaml train.max_iters=200 data.resize=[240,180]
  dasuite run experiments/camvid/segformer_b0.yaml --seeds 1,2,3 --folds 1,2
  dasuite run experiments/cityscapes/deeplabv3plus_r101.yaml --sweep data.source.subset.n=100,500,1000
  accelerate launch -m dasuite run experiments/camvid/segformer_b0.yaml --fold 1 --seed 2""")
@click.argument("experiment", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--seed", "--seeds", "seeds", help="Random seed(s), comma-separated (1,2,3 runs each in turn; names the run tag).")
@click.option("--fold", "--folds", "folds", help="Fold(s) for every dataset that has folds, comma-separated (e.g. 1,2).")
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY=V1,V2,...",
              help="One run per value of a config key (repeatable: every combination); the tag gets KEY-leaf=value.")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path),
              help="Also run this experiment (same seeds, folds, work dir; a finished run is reused) and print its "
                   "per-class table next to each result.")
@click.option("--work-dir", type=click.Path(file_okay=False), help="Root of run directories (default: runs).")
@click.option("--init-from", type=click.Path(dir_okay=False), help="Initialise model weights from a checkpoint; fresh optimizer and schedule.")
@click.option("--resume", is_flag=True, help="Continue the run from its last checkpoint.")
@friendly_errors
def run(experiment: Path, overrides: tuple[str, ...], seeds: Optional[str], folds: Optional[str],
        sweeps: tuple[str, ...], baseline: Optional[Path], work_dir: Optional[str], init_from: Optional[str],
        resume: bool) -> None:
    """Train EXPERIMENT (a YAML file) with optional KEY=VALUE overrides, e.g. train.max_iters=200.

    With several seeds, folds and/or sweep values every combination runs in turn, each in its own run directory."""
    from dasuite.config import load_config
    from dasuite.config.sweep import expand_sweeps
    from dasuite.engine.loop import train

    extra: dict = {}
    if work_dir is not None:
        extra["work_dir"] = work_dir
    if init_from is not None:
        extra["train.init_from"] = init_from
    combos = [(s, f, sw) for sw in expand_sweeps(sweeps)
              for s in _int_list(seeds, "--seed") for f in _int_list(folds, "--fold")]
    for seed, fold, (sweep_overrides, sweep_tag) in combos:
        seed_extra = {"seed": seed} if seed is not None else {}
        cfg = load_config(experiment, (*overrides, *sweep_overrides), {**extra, **seed_extra})
        if fold is not None:
            cfg = _with_fold(cfg, fold)
        if sweep_tag:
            cfg = cfg.model_copy(update={"tag": f"{sweep_tag}_{cfg.run_tag()}"})
        if len(combos) > 1 and _is_main_process():
            click.echo(f"== {cfg.name}/{cfg.run_tag()}")
        summary = train(cfg, resume=resume)
        if baseline is None:
            if _is_main_process():
                _print_summary(summary)
            continue
        base_extra = {k: v for k, v in extra.items() if k == "work_dir"}
        base_cfg = load_config(baseline, (), {**base_extra, **seed_extra})
        if fold is not None:
            base_cfg = _with_fold(base_cfg, fold)
        if _is_main_process():
            _print_baseline_comparison(base_cfg, _baseline_summary(base_cfg), cfg, summary)


def _baseline_summary(cfg) -> dict:
    """The baseline run's summary: read when the run finished, else trained (resumed from its last checkpoint)."""
    from dasuite.engine.checkpoint import read_json
    from dasuite.engine.loop import train
    from dasuite.engine.rundir import RunDir

    run_dir = RunDir.for_config(cfg)
    if run_dir.summary.is_file():
        if _is_main_process():
            click.echo(f"baseline: reusing the finished run {run_dir.root}")
        return read_json(run_dir.summary)
    if _is_main_process():
        click.echo(f"== baseline {cfg.name}/{cfg.run_tag()}")
    return train(cfg, resume=run_dir.last.exists())


def _print_baseline_comparison(base_cfg, base: dict, cfg, summary: dict) -> None:
    """The run's and the baseline's per-class tables side by side: test results when both have them, else the best
    validation results."""
    from dasuite.tables import format_comparison

    key = "test" if summary.get("test") and base.get("test") else "best"
    if not (summary.get(key) and base.get(key)):
        click.echo("no evaluation result to compare with the baseline (set data.val or data.test)")
        return
    split = "test split" if key == "test" else "val split, best iteration"
    click.echo(f"\n{cfg.name} vs baseline {base_cfg.name} ({split}, {cfg.run_tag()}):")
    click.echo(format_comparison({base_cfg.name: base[key], cfg.name: summary[key]}, "table", per_class=True))


def _int_list(text: Optional[str], option: str) -> list[Optional[int]]:
    if text is None:
        return [None]
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected integers separated by commas, got {text!r}", param_hint=option) from None


def _with_fold(cfg, fold: int):
    from dasuite.config import validate_config

    raw = cfg.model_dump(mode="json")
    entries = [role for role, entry in cfg.data.entries().items() if "fold" in type(entry).model_fields]
    if not entries:
        raise ConfigError("--fold was given but no dataset in the experiment has folds")
    for role in entries:  # role may be dotted for mix members, e.g. "source.mix.0"
        node = raw["data"]
        for part in role.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        node["fold"] = fold
    return validate_config(raw, source="--fold")


def _print_summary(summary: dict) -> None:
    from dasuite.tables import format_result

    for key in ("best", "test"):
        result = summary.get(key)
        if result:
            click.echo(f"\n{key} ({'val' if key == 'best' else 'test'} split, iteration {result['iteration']}):")
            click.echo(format_result(result, "table", per_class=True))


@main.command("eval", epilog="""\b
Examples:
  dasuite eval --run runs/source_only/seed0 --split test --per-class
  dasuite eval --config experiments/camvid/segformer_b0.yaml --checkpoint model.safetensors --format json""")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), help="A run directory.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="An experiment YAML (with --checkpoint).")
@click.option("--checkpoint", default="best", help="best | last | a checkpoint path (.safetensors or .pt).")
@click.option("--split", default="val", help="Which data entry to evaluate: val | test | source | target.")
@click.option("--per-class", is_flag=True, help="Show per-class IoU and accuracy.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table")
@click.option("--save-predictions", type=click.Path(file_okay=False, path_type=Path), help="Write one PNG of class indices per image here.")
@click.argument("overrides", nargs=-1)
@friendly_errors
def eval_cmd(run_dir: Optional[Path], config_path: Optional[Path], checkpoint: str, split: str, per_class: bool,
             fmt: str, save_predictions: Optional[Path], overrides: tuple[str, ...]) -> None:
    """Evaluate a run's checkpoint (or a config plus --checkpoint) and print the metrics."""
    from dasuite.config import load_config
    from dasuite.engine.evaluate_run import evaluate_checkpoint, resolve_run
    from dasuite.tables import format_result

    if (run_dir is None) == (config_path is None):
        raise click.UsageError("give exactly one of --run RUN_DIR or --config EXPERIMENT")
    if run_dir is not None:
        cfg, ckpt = resolve_run(run_dir, checkpoint)
        if overrides:
            cfg = load_config(run_dir / "config.yaml", overrides)
    else:
        if checkpoint in ("best", "last"):
            raise click.UsageError("with --config, --checkpoint must be a file path")
        cfg, ckpt = load_config(config_path, overrides), Path(checkpoint)
    result = evaluate_checkpoint(cfg, ckpt, split, save_predictions, progress=fmt == "table")
    if _is_main_process():
        click.echo(format_result(result, fmt, per_class=per_class))


@main.group()
def data() -> None:
    """Dataset utilities."""


@data.command("check")
@click.argument("experiment", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@friendly_errors
def data_check(experiment: Path, overrides: tuple[str, ...]) -> None:
    """Check every dataset of EXPERIMENT: roots, counts, label values, image/label sizes."""
    from dasuite.config import load_config
    from dasuite.data import build_dataset
    from dasuite.data.check import check_dataset

    cfg = load_config(experiment, overrides)
    failed = False
    for role, entry in cfg.data.entries().items():
        report = check_dataset(build_dataset(entry, cfg.data.resize))
        click.echo(f"== data.{role} ({entry.name}, split {entry.split})")
        click.echo(report.format())
        failed |= not report.ok
    if failed:
        raise DasuiteError("data check found problems (see above)")


@main.command("list")
@click.argument("what", type=click.Choice(["models", "methods", "datasets"]))
def list_cmd(what: str) -> None:
    """List registered models, methods or datasets."""
    from dasuite.data.base import DATASETS
    from dasuite.methods import METHODS
    from dasuite.models import MODELS

    registry = {"models": MODELS, "methods": METHODS, "datasets": DATASETS}[what]
    click.echo("\n".join(registry.names()))


def _register_report() -> None:
    from dasuite.report import report_command

    main.add_command(report_command)


_register_report()


def _register_translate() -> None:
    from dasuite.translate_cli import translate_command

    main.add_command(translate_command)


_register_translate()


@main.command("pseudo-label", epilog="""\b
Examples:
  dasuite pseudo-label --run runs/toy_classmix_pseudo/seed0 --dataset-role target --out pl/toy --save-images
  dasuite pseudo-label --run RUN --checkpoint last --teacher --out pl/cs --class-thresholds percentile:0.5""")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), help="A run directory.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="An experiment YAML (with --checkpoint).")
@click.option("--checkpoint", default="best", help="best | last | a checkpoint path (.safetensors or .pt).")
@click.option("--teacher", is_flag=True, help="Use the EMA teacher stored in a mean_teacher .pt checkpoint (--checkpoint last).")
@click.option("--dataset-role", "role", default="target", help="Which data entry to label: target | source | val | test.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder (resumable).")
@click.option("--threshold", type=float, help="Pixels with confidence below it become 255 (default 0: keep all).")
@click.option("--class-thresholds", help="Per-class thresholds, percentile:P (CBST): class k keeps its top (1-P) pixels.")
@click.option("--save-confidence", is_flag=True, help="Also write confidence/<name>.png (255 x max softmax).")
@click.option("--save-images", is_flag=True, help="Also write images/<name>.png, making the folder a dataset on its own.")
@click.argument("overrides", nargs=-1)
@friendly_errors
def pseudo_label_cmd(run_dir: Optional[Path], config_path: Optional[Path], checkpoint: str, teacher: bool, role: str,
                     out: Path, threshold: Optional[float], class_thresholds: Optional[str], save_confidence: bool,
                     save_images: bool, overrides: tuple[str, ...]) -> None:
    """Label a data role with a trained model: PNGs of train ids (255 = low confidence), a manifest, and the
    pseudo-labels' quality when ground truth exists (docs/self_training.md)."""
    from dasuite.config import load_config
    from dasuite.engine.evaluate_run import resolve_run
    from dasuite.pseudo_label import format_quality, parse_class_thresholds, pseudo_label

    if (run_dir is None) == (config_path is None):
        raise click.UsageError("give exactly one of --run RUN_DIR or --config EXPERIMENT")
    if run_dir is not None:
        cfg, ckpt = resolve_run(run_dir, checkpoint)
        cfg = load_config(run_dir / "config.yaml", overrides) if overrides else cfg
    else:
        if checkpoint in ("best", "last"):
            raise click.UsageError("with --config, --checkpoint must be a file path")
        cfg, ckpt = load_config(config_path, overrides), Path(checkpoint)
    percentile = parse_class_thresholds(class_thresholds) if class_thresholds else None
    manifest = pseudo_label(cfg, ckpt, role, out, threshold=threshold, class_percentile=percentile,
                            save_confidence=save_confidence, save_images=save_images, teacher=teacher)
    if _is_main_process():
        click.echo(format_quality(manifest))
