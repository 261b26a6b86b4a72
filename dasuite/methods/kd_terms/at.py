"""``at``: attention transfer on feature pairs (Zagoruyko & Komodakis, ICLR'17)."""

from __future__ import annotations

from pydantic import Field

from dasuite.lazy import lazy_import
from dasuite.methods.kd_terms.base import DISTILL_TERMS, DistillTerm, FeaturePair
from dasuite.schema_base import Section

kd = lazy_import("dasuite.losses.kd")


class ATConfig(Section):
    """Attention transfer, summed over ``pairs``."""

    weight: float = Field(1000.0, ge=0)
    """Weight of the term (the attention-transfer paper's 1000)."""
    p: float = Field(2.0, gt=0)
    """Exponent p of the attention map ``mean_c |F_c|^p``."""
    pairs: list[FeaturePair] = Field(default_factory=lambda: [FeaturePair(student=f"stage{i}", teacher=f"stage{i}")
                                                               for i in range(1, 5)], min_length=1)
    """Feature pairs the term is summed over."""


@DISTILL_TERMS.register("at")
class AT(DistillTerm):
    """Attention transfer (Zagoruyko & Komodakis, ICLR'17)."""

    config = ATConfig
    order = 20
    contract_on = {"weight": 1000.0}
    resize_teacher = False  # at_loss resizes the teacher's attention map itself

    def pair_loss(self, s, t, batch, log):
        return kd.at_loss(s, t, self.options.p)
