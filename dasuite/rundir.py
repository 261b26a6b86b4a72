"""The run directory: where a run's config, metrics, TensorBoard events, checkpoints and summary live.

``<work_dir>/<experiment>/<tag>/`` holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object
per evaluation), ``tensorboard/`` (events), ``checkpoints/`` (``last.pt`` with the RNG states of every process,
``best.safetensors`` with its iteration and metrics in the file's metadata, ``best.json``: the same for reading),
the data lists used (e.g. folds), and ``summary.json`` with ``final`` and ``best`` (and ``test`` when a test split is
configured), each holding ``iteration`` and the metrics in the ``dasuite eval --format json`` shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dasuite.fileio import atomic_write_text, write_json

if TYPE_CHECKING:
    from dasuite.config.schema import ExperimentConfig


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @classmethod
    def for_config(cls, cfg: "ExperimentConfig") -> "RunDir":
        return cls(Path(cfg.work_dir) / cfg.name / cfg.run_tag())

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    def legacy_rng(self, rank: int) -> Path:
        """Per-process RNG file of runs written before the RNG states moved into ``last.pt``."""
        return self.checkpoints / f"last.rng{rank}.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.safetensors"

    @property
    def best_info(self) -> Path:
        return self.checkpoints / "best.json"

    def write_config(self, cfg: "ExperimentConfig") -> None:
        """The resolved config (every key, defaults included) as ``config.yaml``."""
        atomic_write_text(self.config, dump_config(cfg))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, iteration: int) -> None:
        """Drop evaluations after ``iteration`` (a resumed run repeats them)."""
        if not self.metrics.is_file():
            return
        keep = [l for l in self.metrics.read_text().splitlines() if l.strip() and json.loads(l)["iteration"] <= iteration]
        atomic_write_text(self.metrics, "".join(l + "\n" for l in keep))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(summary, self.summary)


def dump_config(cfg: "ExperimentConfig") -> str:
    """The resolved config as YAML (every key, defaults included)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
