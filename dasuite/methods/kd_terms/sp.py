"""``sp``: similarity-preserving KD on feature pairs (Tung & Mori, ICCV'19)."""

from __future__ import annotations

from pydantic import Field

from dasuite.lazy import lazy_import
from dasuite.methods.kd_terms.base import DISTILL_TERMS, DistillTerm, FeaturePair
from dasuite.schema_base import Section

kd = lazy_import("dasuite.losses.kd")


class SPConfig(Section):
    """Similarity-preserving KD, summed over ``pairs``."""

    weight: float = Field(1.0, ge=0)
    """Weight of the term."""
    pairs: list[FeaturePair] = Field(default_factory=lambda: [FeaturePair(student="stage4", teacher="stage4")],
                                     min_length=1)
    """Feature pairs the term is summed over."""


@DISTILL_TERMS.register("sp")
class SP(DistillTerm):
    """Similarity-preserving KD (Tung & Mori, ICCV'19)."""

    config = SPConfig
    order = 30
    resize_teacher = False  # batch Gram matrices: sizes may differ

    def pair_loss(self, s, t, batch, log):
        return kd.sp_loss(s, t)
