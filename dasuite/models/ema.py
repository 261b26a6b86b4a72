"""An exponential-moving-average (EMA) copy of a network: the mean teacher (Tarvainen & Valpola 2017; DACS).

After each optimizer step ``update(student)`` sets, for every parameter and floating-point buffer,
``teacher = m * teacher + (1 - m) * student`` with ``m = min(1 - 1/(t + 1), momentum)`` when ``ramp`` is on (DACS /
DAFormer: the teacher follows the student closely early on; ``t`` = updates done so far) or ``m = momentum``.
Integer buffers (BatchNorm's ``num_batches_tracked``) are copied. ``momentum: 0`` makes the teacher the current
student (FixMatch's own-prediction pseudo-labels). The copy is frozen (``requires_grad_(False)``), always in eval
mode, never prepared by Accelerate: pass the *unwrapped* student so every process averages the same (synchronised)
weights. ``state_dict`` holds the weights and the update count, so a resumed run continues the same average.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMATeacher:
    """The EMA copy ``module`` of a network; see the module docstring."""

    def __init__(self, student: nn.Module, momentum: float = 0.99, ramp: bool = True) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {momentum}")
        self.momentum, self.ramp = momentum, ramp
        self.module = copy.deepcopy(student).requires_grad_(False).eval()
        self.updates = 0

    def current_momentum(self) -> float:
        """The momentum the next ``update`` uses."""
        return min(1.0 - 1.0 / (self.updates + 1), self.momentum) if self.ramp else self.momentum

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """``teacher = m * teacher + (1 - m) * student`` for parameters and float buffers (module docstring)."""
        m = self.current_momentum()
        mine = dict(self.module.named_parameters()) | dict(self.module.named_buffers())
        theirs = dict(student.named_parameters()) | dict(student.named_buffers())
        for name, t in mine.items():
            s = theirs[name].detach()
            if t.is_floating_point():
                t.mul_(m).add_(s.to(t.dtype) * (1.0 - m))
            else:
                t.copy_(s)
        self.module.eval()
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
