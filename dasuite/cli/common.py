"""What every ``dasuite`` command shares: click settings, one-line errors, option parsing helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import click

from dasuite.errors import friendly_errors, is_main_process

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}

__all__ = ["CONTEXT", "echo", "friendly_errors", "int_list", "is_main_process", "network_options", "resolve_network"]


def echo(text: str = "", err: bool = False) -> None:
    """Print on the main process only (launched with several processes, the others stay quiet)."""
    if is_main_process():
        click.echo(text, err=err)


def int_list(text: Optional[str], option: str) -> list[Optional[int]]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; None -> ``[None]`` (the config's own value)."""
    if text is None:
        return [None]
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected integers separated by commas, got {text!r}", param_hint=option) from None


def network_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--run-dir`` (alias ``--run``), ``--config`` and ``--checkpoint``: which network a command loads. Under
    ``torchrun`` use ``--run-dir``: torchrun's own ``--run-path`` makes ``--run`` an ambiguous abbreviation."""
    func = click.option("--checkpoint", default="best",
                        help="best | last | a checkpoint path (.safetensors or .pt).")(func)
    func = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                        help="An experiment YAML (with --checkpoint FILE).")(func)
    return click.option("--run-dir", "--run", "run_dir", type=click.Path(file_okay=False, path_type=Path),
                        help="A run directory (--run is an alias).")(func)


def resolve_network(run_dir: Optional[Path], config_path: Optional[Path], checkpoint: str,
                    overrides: tuple[str, ...]) -> tuple[Any, Path]:
    """(config, checkpoint path) from ``--run-dir`` or ``--config`` + ``--checkpoint``."""
    from dasuite.config import load_config
    from dasuite.engine.evaluate_run import resolve_run

    if (run_dir is None) == (config_path is None):
        raise click.UsageError("give exactly one of --run-dir RUN_DIR or --config EXPERIMENT")
    if run_dir is not None:
        cfg, ckpt = resolve_run(run_dir, checkpoint)
        return (load_config(run_dir / "config.yaml", overrides) if overrides else cfg), ckpt
    if checkpoint in ("best", "last"):
        raise click.UsageError("with --config, --checkpoint must be a file path")
    return load_config(config_path, overrides), Path(checkpoint)
