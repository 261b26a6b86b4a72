"""``dasuite report``: many run directories -> per-run results and per-group mean, std, CI and comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from dasuite.cli.common import CONTEXT, friendly_errors
from dasuite.errors import DasuiteError
from dasuite.report import CHECKPOINTS, LEGACY_SPLITS, SPLITS
from dasuite.tables import FORMATS


@click.command("report", context_settings=CONTEXT, epilog="""\b
Examples:
  dasuite report runs/
  dasuite report runs/ --checkpoint last --split val     # the end of training, validation split
  dasuite report 'runs/camvid_*' --group-by model.arch --baseline segformer_b0 --format markdown
  dasuite report runs/toy_source_only runs/toy_target_oracle --baseline toy_source_only --per-class
  dasuite report runs/toy_* --plot figures/ --pseudo-labels pseudo/""")
@click.argument("paths", nargs=-1)
@click.option("--checkpoint", type=click.Choice(CHECKPOINTS),
              help="Which checkpoint's result each run contributes: best (highest validation score) or last (end "
                   "of training)  [default: best]")
@click.option("--split", type=click.Choice([*SPLITS, *LEGACY_SPLITS]),
              help="Evaluation split of that result: test or val (best / final: the former names of val with the "
                   "best / last checkpoint)  [default: test when the run has it, else val]")
@click.option("--group-by", default="experiment",
              help="experiment | method | arch | a dotted config key (e.g. optim.lr).")
@click.option("--baseline", help="Compare every other group with this group (difference, Welch CI and p-value).")
@click.option("--per-class", is_flag=True, help="Add per-class IoU columns and statistics.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table")
@click.option("--confidence", type=float, default=0.95, help="Confidence level of the intervals.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the report to this file.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write figures (PNG, each with a JSON of its numbers) to this folder: validation mIoU against "
                   "iteration, per-class IoU with confidence whiskers.")
@click.option("--pseudo-labels", "manifests", multiple=True, metavar="DIR",
              help="With --plot: a `dasuite pseudo-label --out` folder (or its manifest.json) whose threshold sweep "
                   "to plot; repeatable; PATHS may then be empty.")
@friendly_errors
def command(paths: tuple[str, ...], checkpoint: Optional[str], split: Optional[str], group_by: str,
            baseline: Optional[str], per_class: bool, fmt: str, confidence: float, output: Optional[Path],
            plot_dir: Optional[Path], manifests: tuple[str, ...]) -> None:
    """Summarise runs (PATHS: run directories, parent directories or glob patterns): per-run results, per-group
    mean, std and confidence interval, and differences to a baseline group. Every table names the checkpoint (best
    or last) and split (val or test) it uses."""
    from dasuite.fileio import atomic_write_text
    from dasuite.report import build_report, collect_runs, format_report

    if manifests and plot_dir is None:
        raise DasuiteError("--pseudo-labels draws a threshold sweep figure: give --plot DIR too")
    report = None
    if paths or not manifests:
        report = build_report(collect_runs(paths), split=split, group_by=group_by, baseline=baseline,
                              confidence=confidence, checkpoint=checkpoint)
        for warning in report.warnings:
            click.echo(f"Warning: {warning}", err=True)
        text = format_report(report, fmt, per_class)
        if output is None:
            click.echo(text)
        else:
            try:
                atomic_write_text(output, text + "\n")
            except OSError as err:
                raise DasuiteError(f"cannot write the report to {output}: {err}") from err
            click.echo(f"wrote {output}", err=True)
    if plot_dir is not None:
        from dasuite.plots import plot_report  # matplotlib is imported only here

        try:
            written, warnings = plot_report(report, plot_dir, manifests)
        except OSError as err:
            raise DasuiteError(f"cannot write the figures to {plot_dir}: {err}") from err
        for warning in warnings:
            click.echo(f"Warning: {warning}", err=True)
        for path in written:
            click.echo(f"wrote {path} (+ {path.with_suffix('.json').name})", err=True)
