"""``freq``: frequency KD, separate losses on a feature's low- and high-frequency parts (docs/kd.md)."""

from __future__ import annotations

from pydantic import Field

from dasuite.lazy import lazy_import
from dasuite.losses.frequency import HighMode
from dasuite.methods.kd_terms.base import DISTILL_TERMS, DistillTerm, FeaturePair
from dasuite.schema_base import Section

frequency = lazy_import("dasuite.losses.frequency")


class FreqConfig(Section):
    """Frequency KD: ``weight * (L_low + high_weight * L_high)``; ``ratio`` is kept per side (docs/kd.md)."""

    weight: float = Field(0.1, ge=0)
    """Weight of ``L_low + high_weight * L_high``."""
    ratio: float = Field(0.2, gt=0, le=1)
    """Fraction of the frequencies per axis kept in the low band (0.2 keeps about 4% of the area; 1 keeps all)."""
    high: HighMode = "l1"
    """High-band loss: ``kd`` (MSE to the teacher's), ``l1`` (L1 to it), ``sparsity`` (student's L1) or ``none``."""
    high_weight: float = Field(1.0, ge=0)
    """Weight of the high-band loss relative to the low-band one."""
    pair: FeaturePair = Field(default_factory=FeaturePair)
    """The feature pair compared (a 1x1 projector is added when channel counts differ)."""


@DISTILL_TERMS.register("freq")
class Freq(DistillTerm):
    """Frequency KD: separate losses on a feature's low- and high-frequency parts (docs/kd.md)."""

    config = FreqConfig
    order = 50
    reaches = ("model", "projectors")
    projector = True

    def pairs(self) -> list[FeaturePair]:
        return [self.options.pair]

    def pair_loss(self, s, t, batch, log):
        """``L_low + high_weight * L_high``; the raw parts are logged as ``loss_freq_low`` / ``loss_freq_high``."""
        low, high = frequency.freq_loss(s, t, self.options.ratio, self.options.high)
        log["loss_freq_low"], log["loss_freq_high"] = low, high
        return low + self.options.high_weight * high
