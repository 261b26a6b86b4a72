"""``ModuleBank``: the trained layers of ``distill``'s terms (projectors, embedding heads)."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn


class ModuleBank(nn.ModuleDict):
    """A ``ModuleDict`` whose forward runs ``compute(self)``: the terms' losses are computed inside one call of the
    bank, so the engine can prepare it like any module (under several processes DistributedDataParallel then
    averages the layers' gradients; indexing a DDP-wrapped dict would fail) while every layer is used where the
    term needs it."""

    def forward(self, compute: Callable[[nn.ModuleDict], Any]) -> Any:
        return compute(self)
