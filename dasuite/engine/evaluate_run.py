"""Evaluate a finished run (or a config plus checkpoint) on one of its splits: the body of ``dasuite eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dasuite.config.load import load_config
from dasuite.config.schema import ExperimentConfig
from dasuite.data import build_dataset
from dasuite.data.check import require_labels
from dasuite.engine.accelerator import make_accelerator
from dasuite.engine.evaluate import evaluate
from dasuite.errors import DasuiteError
from dasuite.models import create_model
from dasuite.models.weights import load_model_weights
from dasuite.rundir import RunDir


def resolve_run(run: Path, checkpoint: str) -> tuple[ExperimentConfig, Path]:
    """A run directory's resolved config and the checkpoint named ``best``, ``last`` or given as a path."""
    run_dir = RunDir(Path(run))
    if not run_dir.config.is_file():
        raise DasuiteError(f"{str(run)!r} is not a dasuite run directory (no config.yaml)")
    cfg = load_config(run_dir.config)
    if checkpoint == "best":
        path = run_dir.best
        if not path.exists():
            raise DasuiteError(f"run {str(run)!r} has no best checkpoint yet ({path}); use --checkpoint last")
    elif checkpoint == "last":
        path = run_dir.last
    else:
        path = Path(checkpoint)
    return cfg, path


def evaluate_checkpoint(
    cfg: ExperimentConfig,
    checkpoint: Path,
    split: str,
    save_predictions: Optional[Path] = None,
    progress: bool = True,
) -> dict:
    """Build the config's model, load ``checkpoint`` and evaluate on ``data.<split>``; returns the JSON result."""
    entry = getattr(cfg.data, split, None)
    if entry is None:
        raise DasuiteError(f"the experiment has no data.{split} entry; set it in the YAML or pick another --split")
    accelerator = make_accelerator(mixed_precision=cfg.train.mixed_precision)
    dataset = build_dataset(entry, cfg.data.resize, resize_labels=False)
    require_labels(dataset, f"data.{split}")
    model = create_model(cfg.model.arch, dataset.num_classes, tiny=cfg.model.tiny, **cfg.model.options)
    load_model_weights(model, checkpoint, f"--checkpoint (model {cfg.model.arch})")
    model = model.to(accelerator.device)
    out, _ = evaluate(model, dataset, accelerator, dataset.classes, inference=cfg.eval,
                      batch_size=cfg.eval.batch_size,
                      num_workers=cfg.data.num_workers, save_predictions=save_predictions, progress=progress,
                      desc=f"eval {split}", class_subsets=tuple(cfg.eval.class_subsets))
    return out
