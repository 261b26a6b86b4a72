"""``source_only``: supervised training on labelled data (the source-only and the target-oracle baseline).

``loss = loss_seg`` (+ ``loss_fd`` with the experiment's ``feature_distance`` section: ``Method.source_losses``)
(+ ``seg_weight_aux * CE(aux_logits, y)`` with an auxiliary head: DeepLabV3 ``aux: true`` as CIRKD trains its
ResNet models, weight 0.4; logged unweighted as ``loss_seg_aux``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from dasuite.errors import ConfigError
from dasuite.lazy import lazy_import
from dasuite.methods.base import FEATURE_DISTANCE_TERM, METHODS, Batch, LossTerm, Method
from dasuite.schema_base import Section

if TYPE_CHECKING:
    import torch

    from dasuite.config.schema import ExperimentConfig

losses = lazy_import("dasuite.losses")

#: overrides that give the toy experiment a model with an auxiliary head (the ``seg_aux`` term's context)
AUX_HEAD_TOY = {"model.arch": "deeplabv3_r18", "model.options": {"aux": True}}


class SourceOnlyConfig(Section):
    """The model is trained with pixel-wise cross-entropy on ``data.source``, plus optionally its auxiliary head's."""

    name: Literal["source_only"] = "source_only"
    """Selects this method (``dasuite list methods``)."""
    seg_weight_aux: float = Field(0.0, ge=0)
    """Weight of the cross-entropy on the model's ``aux_logits`` (DeepLabV3 with ``aux: true``; CIRKD: 0.4 for its
    ResNet models); 0 = no auxiliary loss."""


@METHODS.register("source_only", config=SourceOnlyConfig)
class SourceOnly(Method):
    """Cross-entropy on labelled ``source`` batches. Pointing ``data.source`` at target labels gives the oracle."""

    domains = ("source",)
    shared_source_losses = True
    loss_terms = (FEATURE_DISTANCE_TERM, LossTerm("seg_aux", "seg_weight_aux", on=0.4, context=AUX_HEAD_TOY))

    def __init__(self, cfg: "ExperimentConfig", num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        if cfg.method.seg_weight_aux > 0 and "aux_logits" not in getattr(self.model, "feature_channels", {}):
            raise ConfigError(f"method.seg_weight_aux={cfg.method.seg_weight_aux} needs auxiliary logits, which model "
                              f"{cfg.model.arch!r} (options {cfg.model.options}) does not produce: use a DeepLabV3 "
                              f"with model.options.aux=true, or set method.seg_weight_aux=0")

    def training_step(self, batches: dict[str, Batch], step: int) -> dict[str, torch.Tensor]:
        batch = batches["source"]
        weight = self.cfg.method.seg_weight_aux
        if weight == 0:
            _, terms = self.source_losses(batch)
            return {"loss": sum(terms.values()), **{k: v.detach() for k, v in terms.items()}}
        logits, features = self.source_forward(batch["image"], features=True)
        terms = self.source_terms(batch, logits, features)
        aux = losses.seg_loss(features["aux_logits"], batch["label"])
        logged = {k: v.detach() for k, v in terms.items()}
        return {"loss": sum(terms.values()) + weight * aux, **logged, "loss_seg_aux": aux.detach()}
