"""``ScheduleConfig``: the iteration-based LR schedule section.

It lives here, apart from ``dasuite.config.schema`` (which re-exports it), because method configs need it too (the
adversarial discriminators' own schedule, ``dasuite.methods.adversary``) and the schema imports the method configs.
``dasuite.engine.optim.lr_factor`` turns it into per-iteration factors.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dasuite.schema_base import Section


class ScheduleConfig(Section):
    """Iteration-based LR schedule (stepped once per optimizer step). ``poly``: lr = (base - min_lr) *
    (1 - t/T)^power + min_lr; ``step``: lr *= gamma at each milestone; ``constant``; ``linear``: constant for the
    first ``decay_start`` fraction of the iterations, then linearly to 0 at T (CycleGAN's "100 epochs constant +
    100 decay" is ``decay_start: 0.5``). An optional linear warm-up from ``warmup_ratio * lr`` over
    ``warmup_iters`` applies to all four."""

    name: Literal["poly", "step", "constant", "linear"] = "poly"
    power: float = Field(1.0, gt=0)
    min_lr: float = Field(0.0, ge=0)
    warmup_iters: int = Field(0, ge=0)
    warmup_ratio: float = Field(1e-6, ge=0, le=1)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    decay_start: float = Field(0.5, ge=0, lt=1)
