"""``cwd``: channel-wise distillation on a pair, by default the logits (Shu et al., ICCV'21)."""

from __future__ import annotations

from pydantic import Field

from dasuite.lazy import lazy_import
from dasuite.methods.kd_terms.base import DISTILL_TERMS, DistillTerm, FeaturePair
from dasuite.schema_base import Section

kd = lazy_import("dasuite.losses.kd")


class CWDConfig(Section):
    """Channel-wise distillation, summed over ``pairs`` (default: the logits)."""

    weight: float = Field(3.0, ge=0)
    """Weight of the term."""
    temperature: float = Field(4.0, gt=0)
    """Temperature of the per-channel softmax over positions (the loss keeps the T^2 factor)."""
    pairs: list[FeaturePair] = Field(default_factory=lambda: [FeaturePair(student="logits", teacher="logits")],
                                     min_length=1)
    """Feature pairs the term is summed over."""


@DISTILL_TERMS.register("cwd")
class CWD(DistillTerm):
    """Channel-wise distillation (Shu et al., ICCV'21)."""

    config = CWDConfig
    order = 40
    contract_on = {"weight": 3.0}
    projector = True

    def pair_loss(self, s, t, batch, log):
        return kd.cwd_loss(s, t, self.options.temperature)
