"""Child processes that die with their parent and leave Ctrl-C to it.

``worker_init`` is the initializer of every process pool and DataLoader the suite starts: the child asks the kernel
for SIGKILL when its parent dies (Linux ``PR_SET_PDEATHSIG``; elsewhere a watchdog thread polls the parent id), and
ignores SIGINT, which a terminal's Ctrl-C sends to the whole process group: the parent alone handles it, shuts the
pool down and prints one line, instead of one KeyboardInterrupt traceback per idle worker.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any

_PR_SET_PDEATHSIG = 1


def worker_init(*_: Any) -> None:
    """Call first thing in a child process (usable as ``initializer=`` and as a DataLoader ``worker_init_fn``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()


def die_with_parent(poll_seconds: float = 1.0) -> None:
    """End this process when its parent ends, SIGKILL included."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before the request took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="dasuite-parent-watchdog", daemon=True).start()
