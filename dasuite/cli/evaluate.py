"""``dasuite eval``: evaluate a run's (or a config's) checkpoint on one of its data roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from dasuite.cli.common import (CONTEXT, echo, friendly_errors, inference_options, inference_overrides,
                                network_options, resolve_network)


@click.command("eval", context_settings=CONTEXT, epilog="""\b
Examples:
  dasuite eval --run-dir runs/toy_source_only/seed0 --split test --per-class
  dasuite eval --config experiments/camvid/segformer_b0.yaml --checkpoint model.safetensors --format json
  dasuite eval --run-dir runs/toy_source_only/seed0 --mode slide --crop 96,96 --scales 0.75,1.0,1.25 --flip
  torchrun --nproc_per_node 2 -m dasuite eval --run-dir runs/toy_source_only/seed0   (GPUs)
  ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m dasuite eval --run-dir runs/toy_source_only/seed0   (CPU)""")
@network_options
@inference_options
@click.option("--split", default="val", help="Which data entry to evaluate: val | test | source | target.")
@click.option("--per-class", is_flag=True, help="Show per-class IoU and accuracy.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table")
@click.option("--save-predictions", type=click.Path(file_okay=False, path_type=Path), help="Write one PNG of class indices per image here.")
@click.argument("overrides", nargs=-1)
@friendly_errors
def command(run_dir: Optional[Path], config_path: Optional[Path], checkpoint: str, split: str, per_class: bool,
            fmt: str, save_predictions: Optional[Path], overrides: tuple[str, ...], **inference: Any) -> None:
    """Evaluate a run's checkpoint (or a config plus --checkpoint) and print the metrics (whole-image, sliding-window,
    multi-scale or flipped inference: the experiment's eval section, or the options)."""
    from dasuite.engine.evaluate_run import evaluate_checkpoint
    from dasuite.tables import format_result

    overrides = (*overrides, *inference_overrides(**inference))
    cfg, ckpt = resolve_network(run_dir, config_path, checkpoint, overrides)
    result = evaluate_checkpoint(cfg, ckpt, split, save_predictions, progress=fmt == "table")
    echo(format_result(result, fmt, per_class=per_class))
