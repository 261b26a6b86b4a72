"""``dasuite list``: the registered models, methods or datasets (read without importing them)."""

from __future__ import annotations

import click

from dasuite.cli.common import CONTEXT, friendly_errors


@click.command("list", context_settings=CONTEXT)
@click.argument("what", type=click.Choice(["models", "methods", "datasets"]))
@friendly_errors
def command(what: str) -> None:
    """List registered models, methods or datasets, with where each comes from and what it is."""
    from dasuite.registry import DATASETS, METHODS, MODELS

    registry = {"models": MODELS, "methods": METHODS, "datasets": DATASETS}[what]
    names = registry.names()
    width = max(map(len, names), default=0)
    for name in names:
        entry = registry.entry(name)
        origin = "" if entry.origin == "built-in" else f"  [{entry.origin}]"
        click.echo(f"{name:<{width}}  {registry.summary(name)}{origin}".rstrip())
