"""Iteration-based learning-rate schedules: the ``schedule`` config section, its per-iteration factor and the
``LambdaLR`` that applies it (used by the engine's optimizer and by the adversarial methods' discriminators)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Literal, Optional

from pydantic import Field

from dasuite.schema_base import Section

if TYPE_CHECKING:
    import torch


class ScheduleConfig(Section):
    """Iteration-based LR schedule (stepped once per optimizer step). ``poly``: lr = (base - min_lr) *
    (1 - t/T)^power + min_lr; ``step``: lr *= gamma at each milestone; ``constant``; ``linear``: constant for the
    first ``decay_start`` fraction of the iterations, then linearly to 0 at T (CycleGAN's "100 epochs constant +
    100 decay" is ``decay_start: 0.5``). An optional linear warm-up from ``warmup_ratio * lr`` over
    ``warmup_iters`` applies to all four."""

    name: Literal["poly", "step", "constant", "linear"] = "poly"
    """Shape of the schedule (formulas above)."""
    power: float = Field(1.0, gt=0)
    """Exponent of ``poly`` (1 = linear decay; DeepLab and AdaptSegNet use 0.9)."""
    min_lr: float = Field(0.0, ge=0)
    """Learning rate ``poly`` ends at, in every parameter group."""
    warmup_iters: int = Field(0, ge=0)
    """Iterations of linear warm-up from ``warmup_ratio * lr`` (mmcv convention); 0 = none."""
    warmup_ratio: float = Field(1e-6, ge=0, le=1)
    """Fraction of the learning rate the warm-up starts from."""
    milestones: list[int] = Field(default_factory=list)
    """Iterations at which ``step`` multiplies the learning rate by ``gamma``."""
    gamma: float = Field(0.1, gt=0)
    """Factor ``step`` applies at each milestone."""
    decay_start: float = Field(0.5, ge=0, lt=1)
    """``linear``: fraction of the iterations after which the decay to 0 starts (CycleGAN: 0.5)."""
    horizon: Optional[int] = Field(None, gt=0)
    """Iterations the decay runs over; null = ``train.max_iters``. AdaptSegNet and ADVENT decay over 250k and stop at
    150k / 120k (``horizon: 250000``)."""


def lr_factor(cfg: ScheduleConfig, max_iters: int, base_lr: float) -> Callable[[int], float]:
    """Multiplier of ``base_lr`` at iteration ``it`` (0-based count of optimizer steps taken); ``max_iters`` is
    replaced by ``cfg.horizon`` when set.

    poly: ``(1 - it/max_iters)^power`` mapped onto [min_lr, base_lr]; step: ``gamma^(milestones passed)``;
    constant: 1; linear: 1 until ``decay_start * max_iters``, then linearly to 0 at ``max_iters``
    (``(max_iters - it) / (max_iters - start)``). Warm-up (mmcv-style, linear): during the first ``warmup_iters``
    the factor is multiplied by ``1 - (1 - it/warmup_iters) * (1 - warmup_ratio)``, starting at ``warmup_ratio``.
    """
    min_ratio = cfg.min_lr / base_lr if base_lr > 0 else 0.0
    max_iters = cfg.horizon or max_iters

    def factor(it: int) -> float:
        if cfg.name == "poly":
            progress = min(it, max_iters) / max_iters
            f = (1 - min_ratio) * math.pow(1 - progress, cfg.power) + min_ratio
        elif cfg.name == "linear":
            start = cfg.decay_start * max_iters
            f = 1.0 if it <= start else max(0.0, (max_iters - it) / (max_iters - start))
        elif cfg.name == "step":
            f = cfg.gamma ** sum(it >= m for m in cfg.milestones)
        else:
            f = 1.0
        if it < cfg.warmup_iters:
            f *= 1 - (1 - it / cfg.warmup_iters) * (1 - cfg.warmup_ratio)
        return f

    return factor


def build_scheduler(optimizer: "torch.optim.Optimizer", cfg: ScheduleConfig, max_iters: int) -> "torch.optim.lr_scheduler.LambdaLR":
    """A LambdaLR with one factor per parameter group (the min_lr floor is relative to each group's lr).

    Not passed to ``accelerator.prepare``: the loop steps it exactly once per optimizer step (Accelerate would step
    it once per process) and checkpoints it.
    """
    from torch.optim.lr_scheduler import LambdaLR

    factors = [lr_factor(cfg, max_iters, g["initial_lr"]) for g in optimizer.param_groups]
    return LambdaLR(optimizer, factors)
