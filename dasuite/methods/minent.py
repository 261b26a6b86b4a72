"""``minent``: entropy minimisation on target predictions (ADVENT's MinEnt, Vu et al., CVPR 2019).

Each step, with labelled ``source`` and unlabelled ``target`` batches and output levels ``l`` in ``levels``
(``dasuite.methods.multilevel``):

- source: ``loss_seg + seg_weight_aux * loss_seg_aux`` (cross-entropy per level; plus ``loss_fd`` with the
  experiment's ``feature_distance``);
- target: ``P_l = softmax(upsample(z_l(t), crop size))`` in float32 and ``loss_ent_l = entropy_loss(P_l)``, the
  mean normalised entropy ``-sum_k P_k log2 P_k / log2 K`` (``dasuite.losses.entropy``);
- ``loss = loss_seg + seg_weight_aux * loss_seg_aux + sum_l entropy_weight_l * loss_ent_l``.

Defaults are ADVENT's: levels main and aux (a multi-level DeepLabV2), entropy weights 0.001 / 0.0002, aux
segmentation weight 0.1. With ``levels: [main]`` it runs on any segmenter (SegFormer included). See
docs/adaptation.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from dasuite.lazy import lazy_import
from dasuite.methods.base import FEATURE_DISTANCE_TERM, METHODS, Batch, LossTerm
from dasuite.methods.multilevel import MULTI_LEVEL_TOY, Level, LevelWeights, MultiLevelMethod, check_levels
from dasuite.methods.output_adversarial import output_probabilities
from dasuite.schema_base import Section

if TYPE_CHECKING:
    import torch

entropy = lazy_import("dasuite.losses.entropy")


class MinEntConfig(Section):
    """``method: {name: minent, ...}``; defaults are ADVENT's MinEnt (multi-level DeepLabV2)."""

    name: Literal["minent"] = "minent"
    """Selects this method (``dasuite list methods``)."""
    levels: list[Level] = Field(default_factory=lambda: ["main", "aux"])
    """Output levels trained: ``[main, aux]`` (multi-level DeepLabV2) or ``[main]`` (any segmenter)."""
    entropy_weight: LevelWeights = Field(default_factory=LevelWeights)
    """Weight of the target entropy loss per level (ADVENT's MinEnt: 0.001 / 0.0002)."""
    seg_weight_aux: float = Field(0.1, ge=0)
    """Weight of the ``aux`` level's source cross-entropy (ADVENT: 0.1)."""

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[str]) -> list[str]:
        return check_levels(v)


@METHODS.register("minent", config=MinEntConfig)
class MinEnt(MultiLevelMethod):
    """Segmentation on ``source``, entropy minimisation on ``target`` (module docstring)."""

    domains = ("source", "target")
    find_unused_parameters = True  # a multi-level model trained with levels [main] leaves its aux head unused
    loss_terms = (
        LossTerm("entropy", "entropy_weight.main", on=1.0),
        LossTerm("entropy_aux", "entropy_weight.aux", on=1.0, context=MULTI_LEVEL_TOY),
        LossTerm("seg_aux", "seg_weight_aux", on=1.0, context=MULTI_LEVEL_TOY),
        FEATURE_DISTANCE_TERM,
    )
    toy_overrides = {"method.levels": ["main"]}

    def training_step(self, batches: dict[str, Batch], step: int) -> dict[str, torch.Tensor]:
        source, target = batches["source"], batches["target"]
        _, total, out = self.source_levels(source)
        size = target["image"].shape[-2:]
        for level, logits in self.predict(target["image"]).items():
            loss_ent = entropy.entropy_loss(output_probabilities(logits, size))
            total = total + getattr(self.cfg.method.entropy_weight, level) * loss_ent
            out[f"loss_ent_{level}"] = loss_ent.detach()
        return {"loss": total, **out}
