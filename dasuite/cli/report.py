"""``dasuite report``: many run directories -> per-run results and per-group mean, std, CI and comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from dasuite.cli.common import CONTEXT, friendly_errors
from dasuite.errors import DasuiteError
from dasuite.report import SPLITS
from dasuite.tables import FORMATS


@click.command("report", context_settings=CONTEXT, epilog="""\b
Examples:
  dasuite report runs/
  dasuite report 'runs/camvid_*' --group-by model.arch --baseline segformer_b0 --format markdown
  dasuite report runs/toy_source_only runs/toy_target_oracle --baseline toy_source_only --per-class""")
@click.argument("paths", nargs=-1)
@click.option("--split", type=click.Choice(SPLITS),
              help="Result of each run to use  [default: test when the run has it, else best]")
@click.option("--group-by", default="experiment",
              help="experiment | method | arch | a dotted config key (e.g. optim.lr).")
@click.option("--baseline", help="Compare every other group with this group (difference, Welch CI and p-value).")
@click.option("--per-class", is_flag=True, help="Add per-class IoU columns and statistics.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table")
@click.option("--confidence", type=float, default=0.95, help="Confidence level of the intervals.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the report to this file.")
@friendly_errors
def command(paths: tuple[str, ...], split: Optional[str], group_by: str, baseline: Optional[str], per_class: bool,
            fmt: str, confidence: float, output: Optional[Path]) -> None:
    """Summarise runs (PATHS: run directories, parent directories or glob patterns): per-run results, per-group
    mean, std and confidence interval, and differences to a baseline group."""
    from dasuite.fileio import atomic_write_text
    from dasuite.report import build_report, collect_runs, format_report

    report = build_report(collect_runs(paths), split=split, group_by=group_by, baseline=baseline,
                          confidence=confidence)
    for warning in report.warnings:
        click.echo(f"Warning: {warning}", err=True)
    text = format_report(report, fmt, per_class)
    if output is None:
        return click.echo(text)
    try:
        atomic_write_text(output, text + "\n")
    except OSError as err:
        raise DasuiteError(f"cannot write the report to {output}: {err}") from err
    click.echo(f"wrote {output}", err=True)
