"""User-facing errors and how every entry point turns a failure into one printed line and an exit code."""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: Exit code of an interrupted command (128 + SIGINT, what shells report for Ctrl-C).
EXIT_INTERRUPTED = 130
_WORKER_WRAPPED = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.S)


class DasuiteError(Exception):
    """A problem with the user's input or environment (missing file, bad data). Exit code 1."""

    exit_code = 1


class ConfigError(DasuiteError):
    """An experiment file or override that does not match the schema. Exit code 2."""

    exit_code = 2


class DiskFullError(DasuiteError):
    """The disk (or quota) filled up while writing a file; nothing half-written is left behind."""


def is_disk_full(err: BaseException) -> bool:
    """True for ENOSPC / EDQUOT anywhere in the exception's chain, also when a library re-raised it as text
    (PyTorch's archive writer: a RuntimeError "unexpected pos" with the OSError as its context; safetensors)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "os error 28" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def one_line(err: BaseException) -> str:
    """The message of ``err`` as the user should read it: a DataLoader worker's re-raised error is reduced to the
    original error's own message (PyTorch wraps it in "Caught X in DataLoader worker process N" and a traceback)."""
    text = str(err)
    if _WORKER_WRAPPED.match(text):
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def is_main_process() -> bool:
    """True unless a launcher (torchrun / accelerate) started this process as a non-zero rank."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def debugging() -> bool:
    """``--debug`` (or ``DASUITE_DEBUG=1``): let exceptions show their traceback."""
    return os.environ.get("DASUITE_DEBUG", "") not in ("", "0")


def friendly_errors(func: F) -> F:
    """Run ``func``; a DasuiteError, a full disk or Ctrl-C becomes one line on stderr (main process only) and an exit
    code: the error's own, 1 for a full disk, 130 for an interrupt. With ``DASUITE_DEBUG=1`` errors propagate."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            if debugging():
                raise
            _say("Aborted (interrupted): finished work is kept; run the same command again to continue "
                 "(a training run with --resume)")
            sys.exit(EXIT_INTERRUPTED)
        except DasuiteError as err:
            if debugging():
                raise
            _say(f"Error: {one_line(err)}")
            sys.exit(err.exit_code)
        except (OSError, RuntimeError) as err:
            if debugging() or not is_disk_full(err):
                raise
            where = f" ({err.filename})" if getattr(err, "filename", None) else ""
            _say(f"Error: no space left on device{where}; free some space and rerun")
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _say(text: str) -> None:
    if is_main_process():
        print(text, file=sys.stderr, flush=True)
