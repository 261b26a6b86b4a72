"""``dasuite pseudo-label``: label a data role with a trained network (thresholds, CBST, quality report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from dasuite.cli.common import (CONTEXT, echo, friendly_errors, inference_options, inference_overrides,
                                network_options, resolve_network)


@click.command("pseudo-label", context_settings=CONTEXT, epilog="""\b
Examples:
  dasuite pseudo-label --run-dir runs/toy_classmix_pseudo/seed0 --dataset-role target --out pl/toy --save-images
  dasuite pseudo-label --run-dir RUN --checkpoint last --teacher --out pl/cs --class-thresholds percentile:0.5""")
@network_options
@inference_options
@click.option("--teacher", is_flag=True, help="Use the EMA teacher stored in a mean_teacher .pt checkpoint (--checkpoint last).")
@click.option("--dataset-role", "role", default="target", help="Which data entry to label: target | source | val | test.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder (resumable).")
@click.option("--threshold", type=float, help="Pixels with confidence below it become 255 (default 0: keep all).")
@click.option("--class-thresholds", help="Per-class thresholds, percentile:P (CBST): class k keeps its top (1-P) pixels.")
@click.option("--save-confidence", is_flag=True, help="Also write confidence/<name>.png (255 x max softmax).")
@click.option("--save-images", is_flag=True, help="Also write images/<name>.png, making the folder a dataset on its own.")
@click.argument("overrides", nargs=-1)
@friendly_errors
def command(run_dir: Optional[Path], config_path: Optional[Path], checkpoint: str, teacher: bool, role: str,
            out: Path, threshold: Optional[float], class_thresholds: Optional[str], save_confidence: bool,
            save_images: bool, overrides: tuple[str, ...], **inference: Any) -> None:
    """Label a data role with a trained model: PNGs of train ids (255 = low confidence), a manifest, and the
    pseudo-labels' quality when ground truth exists (docs/self_training.md)."""
    from dasuite.pseudo_label import format_quality, parse_class_thresholds, pseudo_label

    overrides = (*overrides, *inference_overrides(**inference))
    cfg, ckpt = resolve_network(run_dir, config_path, checkpoint, overrides)
    percentile = parse_class_thresholds(class_thresholds) if class_thresholds else None
    manifest = pseudo_label(cfg, ckpt, role, out, threshold=threshold, class_percentile=percentile,
                            save_confidence=save_confidence, save_images=save_images, teacher=teacher)
    echo(format_quality(manifest))
