"""``source_only``: supervised training on labelled data (the source-only and the target-oracle baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from dasuite.lazy import lazy_import
from dasuite.methods.base import METHODS, Batch, Method
from dasuite.schema_base import Section

if TYPE_CHECKING:
    import torch

losses = lazy_import("dasuite.losses")


class SourceOnlyConfig(Section):
    """No options beyond the name: the model is trained with pixel-wise cross-entropy on ``data.source``."""

    name: Literal["source_only"] = "source_only"
    """Selects this method (``dasuite list methods``)."""


@METHODS.register("source_only", config=SourceOnlyConfig)
class SourceOnly(Method):
    """Cross-entropy on labelled ``source`` batches. Pointing ``data.source`` at target labels gives the oracle."""

    domains = ("source",)

    def training_step(self, batches: dict[str, Batch], step: int) -> dict[str, torch.Tensor]:
        batch = batches["source"]
        loss = losses.seg_loss(self.model(batch["image"]), batch["label"])
        return {"loss": loss, "loss_seg": loss.detach()}
