"""The ``dasuite`` command line: a thin layer that parses arguments and delegates to the engine.

Each command lives in its own module and imports what it runs inside its function body, so ``dasuite --help``,
``dasuite list`` and config errors never load torch. Errors print one line and exit non-zero (``--debug``: the
traceback).
"""

from __future__ import annotations

import os

import click

from dasuite.cli import data, evaluate, listing, pseudo_label, report, run, translate
from dasuite.cli.common import CONTEXT

__all__ = ["main"]


@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="dasuite")
def main(debug: bool) -> None:
    """dasuite: semantic segmentation with scarce target labels (domain adaptation, semi-supervised, KD)."""
    if debug:
        os.environ["DASUITE_DEBUG"] = "1"  # read by friendly_errors, inherited by worker processes


for _module in (run, evaluate, pseudo_label, data, listing, report, translate):
    main.add_command(_module.command)
