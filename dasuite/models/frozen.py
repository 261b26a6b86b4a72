"""A frozen network loaded from another run or a weights file: the KD teacher (``method.teacher``) and CyCADA's
semantic-consistency segmenter (``method.semantic.segmenter``).

Weights come from exactly one of ``run`` (a dasuite run directory: its best checkpoint, else ``last.pt``;
arch/tiny/options from its ``config.yaml`` unless given here), ``checkpoint`` or ``pretrained`` (both with
``arch``); ``{work_dir}``, ``{seed}`` and ``{fold}`` in a path become the current run's. The network is frozen
(``requires_grad_(False)``, ``eval()``); callers move it to the device and never prepare it or give it to an optimizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pydantic import model_validator

from dasuite.errors import ConfigError, DasuiteError
from dasuite.fileio import read_yaml
from dasuite.models.config import ModelConfig
from dasuite.rundir import RunDir
from dasuite.schema_base import Section

if TYPE_CHECKING:
    from torch import nn

    from dasuite.config.schema import ExperimentConfig


class FrozenModelConfig(Section):
    """Exactly one of ``run`` / ``checkpoint`` / ``pretrained``; ``arch``/``tiny``/``options`` override the run's
    config and are required (``arch``) with a checkpoint or pretrained weights."""

    run: Optional[str] = None
    """A dasuite run directory: its best checkpoint (else ``last.pt``) and the model of its ``config.yaml``;
    ``{work_dir}``, ``{seed}``, ``{fold}`` are filled in."""
    checkpoint: Optional[str] = None
    """A weights file (``.safetensors`` or a dasuite ``.pt`` checkpoint) with ``arch``; placeholders as in ``run``."""
    pretrained: Optional[str] = None
    """Weights as ``model.pretrained`` takes them (file, Hugging Face or run directory, keyword), with ``arch``."""
    arch: Optional[str] = None
    """The network's registered model name; required with ``checkpoint`` / ``pretrained``, overrides the run's."""
    tiny: Optional[bool] = None
    """Whether the network is the tiny variant; null = the run's (false without a run)."""
    options: Optional[dict[str, Any]] = None
    """The network's architecture options; null = the run's (none without a run)."""

    @model_validator(mode="after")
    def _one_source(self) -> "FrozenModelConfig":
        given = [k for k in ("run", "checkpoint", "pretrained") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of run, checkpoint, pretrained (got {given or 'none'})")
        if given[0] != "run" and not self.arch:
            raise ValueError(f"{given[0]} needs arch (the network's model name)")
        return self


def fill_run_placeholders(path: str, cfg: "ExperimentConfig", key: str) -> str:
    """Replace ``{work_dir}``, ``{seed}`` and ``{fold}`` in ``path`` (config key ``key``) with the run's values."""
    folds = {getattr(e, "fold", None) for e in cfg.data.entries().values()} - {None}
    if "{fold}" in path and len(folds) != 1:
        raise ConfigError(f"{key} path {path!r} uses {{fold}} but the experiment has no (single) fold")
    path = path.replace("{work_dir}", cfg.work_dir).replace("{seed}", str(cfg.seed))
    return path.replace("{fold}", str(folds.pop() if folds else ""))


def frozen_weights_path(spec: FrozenModelConfig, cfg: "ExperimentConfig", key: str) -> Optional[Path]:
    """The weights file ``spec`` names (a run's best, else last checkpoint), placeholders filled; None for
    ``pretrained``."""
    if spec.run:
        run = RunDir(Path(fill_run_placeholders(spec.run, cfg, f"{key}.run")).expanduser())
        return run.best if run.best.is_file() else run.last
    if spec.checkpoint:
        return Path(fill_run_placeholders(spec.checkpoint, cfg, f"{key}.checkpoint")).expanduser()
    return None


def build_frozen_model(spec: FrozenModelConfig, cfg: "ExperimentConfig", num_classes: int,
                       key: str) -> tuple["nn.Module", str]:
    """The frozen network described by ``spec`` (found at config key ``key``, used in error messages) and a
    description of where its weights came from."""
    from dasuite.fileio import load_weights
    from dasuite.models.factory import create_model
    from dasuite.models.weights import load_state

    arch, tiny, options = spec.arch, spec.tiny, spec.options
    weights = frozen_weights_path(spec, cfg, key)
    if spec.run:
        run = RunDir(weights.parent.parent)
        if not run.config.is_file():
            raise DasuiteError(f"{key}.run: {str(run.root)!r} is not a dasuite run directory (no config.yaml)")
        model = ModelConfig.model_validate(read_yaml(run.config).get("model", {}))
        arch, tiny = arch or model.arch, model.tiny if tiny is None else tiny
        options = model.options if options is None else options
        if not weights.is_file():
            raise DasuiteError(f"{key}.run: {str(run.root)!r} has no checkpoint ({run.best} or {run.last})")
    net = create_model(arch, num_classes, tiny=bool(tiny), pretrained=spec.pretrained, **(options or {}))
    if weights is not None:
        try:
            state = load_weights(weights)
        except DasuiteError as err:
            raise DasuiteError(f"{key}: {err}") from None
        load_state(net, state, f"{key}: weights {weights} do not fit {arch} (tiny={bool(tiny)})")
    net.requires_grad_(False).eval()
    return net, str(weights or spec.pretrained)
