"""Experiments run in turn: every combination of seeds, folds and sweep values of one experiment file, each in its
own run directory, optionally next to a baseline experiment (reused when it already finished)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from dasuite.config import load_config
from dasuite.config.schema import ExperimentConfig
from dasuite.config.sweep import expand_sweeps, with_fold
from dasuite.errors import DasuiteError
from dasuite.fileio import read_json
from dasuite.rundir import RunDir

Announce = Callable[[str], None]


@dataclass(frozen=True)
class PlannedRun:
    """One run of the experiment and, with ``--baseline``, the baseline run it is compared with."""

    cfg: ExperimentConfig
    baseline: Optional[ExperimentConfig] = None


def plan_runs(experiment: Path, overrides: Sequence[str] = (), *, seeds: Sequence[Optional[int]] = (None,),
              folds: Sequence[Optional[int]] = (None,), sweeps: Sequence[str] = (), baseline: Optional[Path] = None,
              work_dir: Optional[str] = None, init_from: Optional[str] = None) -> list[PlannedRun]:
    """Every (sweep values, seed, fold) combination, validated before anything trains. A sweep's run tag starts
    with ``<key leaf>=<value>_``; the baseline shares the seed, fold and work dir but not the sweep or overrides."""
    extra = {k: v for k, v in (("work_dir", work_dir), ("train.init_from", init_from)) if v is not None}
    plans = []
    for sweep_overrides, sweep_tag in expand_sweeps(sweeps):
        for seed in seeds:
            for fold in folds:
                seed_extra = {"seed": seed} if seed is not None else {}
                cfg = load_config(experiment, (*overrides, *sweep_overrides), {**extra, **seed_extra})
                cfg = with_fold(cfg, fold) if fold is not None else cfg
                if sweep_tag:
                    cfg = cfg.model_copy(update={"tag": f"{sweep_tag}_{cfg.run_tag()}"})
                base = None
                if baseline is not None:
                    base_extra = {"work_dir": work_dir} if work_dir is not None else {}
                    base = load_config(baseline, (), {**base_extra, **seed_extra})
                    base = with_fold(base, fold) if fold is not None else base
                plans.append(PlannedRun(cfg, base))
    return plans


def dataset_names(node: object) -> set[str]:
    """The ``name`` of every dataset entry under ``node`` (a config's ``data`` dump): mix members and translated
    parents included."""
    names: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("name"), str):
            names.add(node["name"])
        for value in node.values():
            names |= dataset_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= dataset_names(value)
    return names


def missing_weights(cfg: ExperimentConfig) -> Optional[str]:
    """The line a run stops with when it would train a full-size segmenter on real data from random weights without
    saying so (None when it is fine): no ``model.pretrained``, no ``train.init_from``, no ``model.from_scratch``;
    tiny models, the toy data and methods that train no segmenter (CycleGAN) never need weights. A ``pretrained``
    keyword (``imagenet``, ``coco``) whose file is not in the hub cache is also reported here, before any data is
    read (the model's loader would report it later)."""
    from dasuite.methods import METHODS
    from dasuite.models.weight_files import missing_keyword_file, missing_weights_message

    model = cfg.model
    if model.tiny or not METHODS.get(cfg.method.name).evaluates:
        return None
    if model.pretrained is not None:  # a keyword whose file is not in the hub cache: say so before reading data
        return missing_keyword_file(cfg.name, model.arch, model.options, model.pretrained)
    if model.from_scratch or cfg.train.init_from or dataset_names(cfg.data.model_dump()) <= {"toy"}:
        return None
    return missing_weights_message(cfg.name, model.arch, model.options)


def check_initial_weights(plans: Sequence[PlannedRun], resume: bool = False) -> None:
    """Before anything trains: every run that starts fresh (not ``--resume``; a baseline that already has a
    checkpoint or summary is continued or reused) has initial weights or says ``model.from_scratch``."""
    for plan in plans:
        todo = [] if resume else [plan.cfg]
        if plan.baseline is not None:
            run_dir = RunDir.for_config(plan.baseline)
            if not (run_dir.summary.is_file() or run_dir.last.exists()):
                todo.append(plan.baseline)
        for cfg in todo:
            problem = missing_weights(cfg)
            if problem:
                raise DasuiteError(problem)


def baseline_summary(cfg: ExperimentConfig, announce: Announce) -> dict:
    """The baseline run's summary: read when the run finished, else trained (resumed from its last checkpoint)."""
    from dasuite.engine.loop import train

    run_dir = RunDir.for_config(cfg)
    if run_dir.summary.is_file():
        announce(f"baseline: reusing the finished run {run_dir.root}")
        return read_json(run_dir.summary)
    announce(f"== baseline {cfg.name}/{cfg.run_tag()}")
    return train(cfg, resume=run_dir.last.exists())


def run_planned(plans: Sequence[PlannedRun], resume: bool = False,
                announce: Announce = print) -> Iterator[tuple[PlannedRun, dict, Optional[dict]]]:
    """Train each plan in turn; yields (plan, its summary, the baseline's summary or None)."""
    check_initial_weights(plans, resume)
    from dasuite.engine.loop import train  # here: planning (config checks) stays free of torch

    for plan in plans:
        if len(plans) > 1:
            announce(f"== {plan.cfg.name}/{plan.cfg.run_tag()}")
        summary = train(plan.cfg, resume=resume)
        base = baseline_summary(plan.baseline, announce) if plan.baseline is not None else None
        yield plan, summary, base
