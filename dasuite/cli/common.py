"""What every ``dasuite`` command shares: click settings, one-line errors, option parsing helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import click

from dasuite.errors import friendly_errors, is_main_process

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}

__all__ = ["CONTEXT", "echo", "friendly_errors", "inference_options", "inference_overrides", "int_list",
           "is_main_process", "network_options", "resolve_network"]


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


def inference_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--mode``, ``--crop``, ``--stride``, ``--window-batch``, ``--scales``, ``--flip``: the ``eval`` section's
    inference keys as options (``docs/config.md``); unset options keep the experiment's values."""
    options = [
        click.option("--flip/--no-flip", default=None, help="Average with the horizontally flipped image."),
        click.option("--scales", metavar="S1,S2,...", help="Multi-scale inference, e.g. 0.5,0.75,1.0,1.25,1.5,1.75."),
        click.option("--window-batch", type=int, help="Sliding windows per network call."),
        click.option("--stride", metavar="W,H", help="Sliding-window step (default: 3/4 of --crop)."),
        click.option("--crop", metavar="W,H", help="Sliding-window size, e.g. 1024,1024."),
        click.option("--mode", type=click.Choice(["whole", "slide"]), help="Whole image or sliding window."),
    ]
    for option in options:
        func = option(func)
    return func


def inference_overrides(mode: Optional[str], crop: Optional[str], stride: Optional[str], window_batch: Optional[int],
                        scales: Optional[str], flip: Optional[bool]) -> list[str]:
    """The ``eval.*`` overrides the inference options stand for."""
    values = {"mode": mode, "crop": f"[{crop}]" if crop else None, "stride": f"[{stride}]" if stride else None,
              "window_batch": window_batch, "scales": f"[{scales}]" if scales else None,
              "flip": None if flip is None else str(flip).lower()}
    return [f"eval.{key}={value}" for key, value in values.items() if value is not None]
