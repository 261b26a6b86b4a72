"""``kl``: pixel-wise KL divergence between softened class distributions on the logits (Hinton et al.)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dasuite.constants import IGNORE_INDEX
from dasuite.lazy import lazy_import
from dasuite.methods.kd_terms.base import DISTILL_TERMS, DistillTerm, FeaturePair
from dasuite.schema_base import Section

F = lazy_import("torch.nn.functional")
kd = lazy_import("dasuite.losses.kd")


class KLConfig(Section):
    """Pixel-wise KL on logits at the student's logit resolution; ``ignore_mask`` skips pixels labelled 255."""

    weight: float = Field(1.0, ge=0)
    """Weight of the term."""
    temperature: float = Field(1.0, gt=0)
    """Softmax temperature T (the loss keeps the T^2 factor)."""
    ignore_mask: bool = False
    """Average over labelled pixels only instead of all pixels."""


@DISTILL_TERMS.register("kl")
class KL(DistillTerm):
    """Pixel-wise KL divergence between softened class distributions (Hinton et al.)."""

    config = KLConfig
    order = 10

    def pairs(self) -> list[FeaturePair]:
        return [FeaturePair(student="logits", teacher="logits")]

    def pair_loss(self, s, t, batch: dict[str, Any], log):
        """``dasuite.losses.kd.kl_loss``, over the labelled pixels (labels resampled nearest) with ``ignore_mask``."""
        valid = None
        if self.options.ignore_mask:
            labelled = (batch["label"] != IGNORE_INDEX).float().unsqueeze(1)
            valid = F.interpolate(labelled, size=s.shape[-2:], mode="nearest").squeeze(1)
        return kd.kl_loss(s, t, self.options.temperature, valid)
