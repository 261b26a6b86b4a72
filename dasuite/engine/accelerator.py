"""The one place an ``Accelerator`` is created, with a check that it sees the processes the launcher started."""

from __future__ import annotations

import os
from typing import Any

from accelerate import Accelerator

from dasuite.errors import DasuiteError

LAUNCH_HELP = ("on a CPU set ACCELERATE_USE_CPU=1 (`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m dasuite "
               "...`); on GPUs check that each process sees one; docs/cli.md, 'Several processes'")


def make_accelerator(**kwargs: Any) -> Accelerator:
    """``Accelerator(**kwargs)``; a DasuiteError when a launcher started more processes (``WORLD_SIZE``) than
    Accelerate joined into one job: each would otherwise train alone, all of them into the same run directory."""
    accelerator = Accelerator(**kwargs)
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > accelerator.num_processes:
        raise DasuiteError(f"launched as {launched} processes (WORLD_SIZE={launched}) but Accelerate joined "
                           f"{accelerator.num_processes}: {LAUNCH_HELP}")
    return accelerator
