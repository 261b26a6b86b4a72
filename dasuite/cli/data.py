"""``dasuite data check``: read every dataset of an experiment once and report what would break training."""

from __future__ import annotations

from pathlib import Path

import click

from dasuite.cli.common import CONTEXT, echo, friendly_errors
from dasuite.errors import DasuiteError


@click.group("data", context_settings=CONTEXT)
def command() -> None:
    """Dataset utilities."""


@command.command("check")
@click.argument("experiment", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@friendly_errors
def check(experiment: Path, overrides: tuple[str, ...]) -> None:
    """Check every dataset of EXPERIMENT: roots, counts, unreadable files, label values, image/label sizes."""
    from dasuite.config import load_config
    from dasuite.data import build_dataset
    from dasuite.data.check import check_dataset

    cfg = load_config(experiment, overrides)
    failed = False
    for role, entry in cfg.data.entries().items():
        report = check_dataset(build_dataset(entry, cfg.data.resize))
        echo(f"== data.{role} ({entry.name}, split {entry.split})")
        echo(report.format())
        failed |= not report.ok
    if failed:
        raise DasuiteError("data check found problems (see above)")
