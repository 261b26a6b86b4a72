"""The one place an ``Accelerator`` is created, with a check that it sees the processes the launcher started.

``unwrap_model`` of dasuite's Accelerator also removes a ``torch.compile`` wrapper by default (Accelerate keeps
it), so everything the engine and the methods save, copy (the EMA teacher) or evaluate is the plain network: state
dicts without ``_orig_mod.`` prefixes, loadable into an eager model and back (``train.compile``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import TorchDynamoPlugin

from dasuite.errors import DasuiteError

LAUNCH_HELP = ("on a CPU set ACCELERATE_USE_CPU=1 (`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m dasuite "
               "...`); on GPUs check that each process sees one; docs/cli.md, 'Several processes'")


class DasuiteAccelerator(Accelerator):
    """Accelerate's Accelerator whose ``unwrap_model`` drops the compile wrapper unless asked to keep it."""

    def unwrap_model(self, model: Any, keep_fp32_wrapper: bool = True, keep_torch_compile: bool = False) -> Any:
        return super().unwrap_model(model, keep_fp32_wrapper=keep_fp32_wrapper, keep_torch_compile=keep_torch_compile)


def make_accelerator(**kwargs: Any) -> Accelerator:
    """``DasuiteAccelerator(**kwargs)``; a DasuiteError when a launcher started more processes (``WORLD_SIZE``) than
    Accelerate joined into one job: each would otherwise train alone, all of them into the same run directory."""
    plugin = kwargs.get("dynamo_plugin")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    accelerator = DasuiteAccelerator(**kwargs)
    # Accelerate's state is one per process and keeps the first Accelerator's dynamo plugin: set this one's (or
    # the launcher's default) so each run in a process (--seeds, --baseline, tests) compiles as its config says.
    accelerator.state.dynamo_plugin = plugin if plugin is not None else TorchDynamoPlugin()
    # ... and Accelerate turns TF32 matmuls on when it compiles without mixed precision: keep the user's setting.
    torch.backends.cuda.matmul.allow_tf32 = tf32
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > accelerator.num_processes:
        raise DasuiteError(f"launched as {launched} processes (WORLD_SIZE={launched}) but Accelerate joined "
                           f"{accelerator.num_processes}: {LAUNCH_HELP}")
    return accelerator
