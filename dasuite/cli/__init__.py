"""The ``dasuite`` command line: a thin layer that parses arguments and delegates to the engine.

Each command lives in its own module and imports what it runs inside its function body, so ``dasuite --help``,
``dasuite list`` and config errors never load torch. Errors print one line and exit non-zero (``--debug``: the
traceback).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any, NoReturn, Optional

import click

from dasuite.cli import data, evaluate, listing, pseudo_label, report, run, translate
from dasuite.cli.common import CONTEXT

__all__ = ["main"]


def fast_exit(code: Any) -> NoReturn:
    """End the process as ``sys.exit(code)`` would, without the interpreter's teardown of every loaded module.

    With torch and transformers loaded that teardown takes 1-3 s of a user's wait after the work is done (measured
    in docs/benchmarks.md, "Engine overhead (user's view)"). Everything a normal exit does for the program still
    happens first: standard streams are flushed, non-daemon threads joined and the ``atexit`` handlers run (logging,
    multiprocessing's shutdown of DataLoader workers, TensorBoard). Only objects' finalizers at teardown are skipped;
    dasuite closes its files and trackers itself before returning.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    shutdown = getattr(threading, "_shutdown", None)  # what Py_FinalizeEx calls first: join non-daemon threads
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


class _Main(click.Group):
    """The ``dasuite`` group; run as the program (no ``args``: the console script, ``python -m dasuite``,
    ``accelerate launch``), it leaves through ``fast_exit``. Called with arguments (tests, click's CliRunner) it
    behaves as any click group."""

    def main(self, args: Optional[Any] = None, *rest: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if args is not None or kwargs.get("standalone_mode") is False:
            return super().main(args, *rest, **kwargs)
        try:
            super().main(args, *rest, **kwargs)
        except SystemExit as done:
            fast_exit(done.code)
        fast_exit(0)


@click.group(cls=_Main, context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="dasuite")
def main(debug: bool) -> None:
    """dasuite: semantic segmentation with scarce target labels (domain adaptation, semi-supervised, KD)."""
    if debug:
        os.environ["DASUITE_DEBUG"] = "1"  # read by friendly_errors, inherited by worker processes


for _module in (run, evaluate, pseudo_label, data, listing, report, translate):
    main.add_command(_module.command)
