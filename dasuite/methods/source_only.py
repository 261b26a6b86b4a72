"""``source_only``: supervised training on labelled data (the source-only and the target-oracle baseline).

``loss = loss_seg`` (+ ``loss_fd`` with the experiment's ``feature_distance`` section: ``Method.source_losses``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from dasuite.methods.base import FEATURE_DISTANCE_TERM, METHODS, Batch, Method
from dasuite.schema_base import Section

if TYPE_CHECKING:
    import torch


class SourceOnlyConfig(Section):
    """No options beyond the name: the model is trained with pixel-wise cross-entropy on ``data.source``."""

    name: Literal["source_only"] = "source_only"
    """Selects this method (``dasuite list methods``)."""


@METHODS.register("source_only", config=SourceOnlyConfig)
class SourceOnly(Method):
    """Cross-entropy on labelled ``source`` batches. Pointing ``data.source`` at target labels gives the oracle."""

    domains = ("source",)
    shared_source_losses = True
    loss_terms = (FEATURE_DISTANCE_TERM,)

    def training_step(self, batches: dict[str, Batch], step: int) -> dict[str, torch.Tensor]:
        _, terms = self.source_losses(batches["source"])
        return {"loss": sum(terms.values()), **{k: v.detach() for k, v in terms.items()}}
