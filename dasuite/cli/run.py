"""``dasuite run``: train an experiment (seeds x folds x sweep values, optionally next to a baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from dasuite.cli.common import CONTEXT, echo, friendly_errors, int_list


@click.command("run", context_settings=CONTEXT, epilog="""\b
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
def command(experiment: Path, overrides: tuple[str, ...], seeds: Optional[str], folds: Optional[str],
            sweeps: tuple[str, ...], baseline: Optional[Path], work_dir: Optional[str], init_from: Optional[str],
            resume: bool) -> None:
    """Train EXPERIMENT (a YAML file) with optional KEY=VALUE overrides, e.g. train.max_iters=200.

    With several seeds, folds and/or sweep values every combination runs in turn, each in its own run directory."""
    from dasuite.engine.runs import plan_runs, run_planned
    from dasuite.tables import format_comparison, format_result

    plans = plan_runs(experiment, overrides, seeds=int_list(seeds, "--seed"), folds=int_list(folds, "--fold"),
                      sweeps=sweeps, baseline=baseline, work_dir=work_dir, init_from=init_from)
    for plan, summary, base in run_planned(plans, resume, announce=echo):
        if base is None:
            for key in ("best", "test"):
                if summary.get(key):
                    echo(f"\n{key} ({'val' if key == 'best' else 'test'} split, iteration {summary[key]['iteration']}):")
                    echo(format_result(summary[key], "table", per_class=True))
            continue
        key = "test" if summary.get("test") and base.get("test") else "best"
        if not (summary.get(key) and base.get(key)):
            echo("no evaluation result to compare with the baseline (set data.val or data.test)")
            continue
        split = "test split" if key == "test" else "val split, best iteration"
        echo(f"\n{plan.cfg.name} vs baseline {plan.baseline.name} ({split}, {plan.cfg.run_tag()}):")
        echo(format_comparison({plan.baseline.name: base[key], plan.cfg.name: summary[key]}, "table", per_class=True))
