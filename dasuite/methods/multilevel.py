"""Output levels of a segmenter and the source segmentation loss over them, shared by the adaptation methods that
work on several levels (``adaptsegnet``, ``advent``, ``minent``).

``main`` is the model's logits; ``aux`` the auxiliary (layer3) classifier's logits of a multi-level DeepLabV2, read
from ``model(x, return_features=True)[1]["aux_logits"]``. On labelled source batches ``loss_seg = CE(main_s, y_s)``
(plus ``loss_fd`` with the experiment's ``feature_distance``: ``Method.source_terms``) and, with ``aux``,
``loss_seg_aux = CE(aux_s, y_s)``; the total is ``loss_seg [+ loss_fd] + seg_weight_aux * loss_seg_aux``
(AdaptSegNet and ADVENT: 0.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from dasuite.errors import ConfigError
from dasuite.lazy import lazy_import
from dasuite.methods.base import Batch, Method
from dasuite.schema_base import Section

if TYPE_CHECKING:
    import torch

    from dasuite.config.schema import ExperimentConfig

losses = lazy_import("dasuite.losses")

Level = Literal["main", "aux"]
#: overrides that make the toy experiment multi-level (a tiny DeepLabV2 with the aux classifier): the ``aux`` loss
#: terms' context in the method contract test.
MULTI_LEVEL_TOY = {"model.arch": "deeplabv2_r50", "model.options": {"multi_level": True},
                   "method.levels": ["main", "aux"]}


class LevelWeights(Section):
    """A weight per output level (AdaptSegNet's adversarial and ADVENT's entropy and adversarial weights: 0.001 on
    ``main``, 0.0002 on ``aux``)."""

    main: float = Field(0.001, ge=0)
    """Weight of the ``main`` level (the model's logits)."""
    aux: float = Field(0.0002, ge=0)
    """Weight of the ``aux`` level (a multi-level DeepLabV2's layer3 classifier); unused with ``levels: [main]``."""


def check_levels(levels: list[str]) -> list[str]:
    """``[main]`` or ``[main, aux]`` (a pydantic field validator's body)."""
    if "main" not in levels or len(set(levels)) != len(levels):
        raise ValueError(f"expected [main] or [main, aux], got {levels}")
    return levels


class MultiLevelMethod(Method):
    """A method whose config has ``levels`` and ``seg_weight_aux``; ``predict`` returns the logits per level and
    ``source_levels`` those of a labelled batch with its loss."""

    shared_source_losses = True

    def __init__(self, cfg: "ExperimentConfig", num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.levels: tuple[str, ...] = tuple(cfg.method.levels)
        if "aux" in self.levels and "aux_logits" not in getattr(self.model, "feature_channels", {}):
            raise ConfigError(
                f"method.levels={list(self.levels)} needs auxiliary logits, which model {cfg.model.arch!r} (options "
                f"{cfg.model.options}) does not produce: use a multi-level DeepLabV2 (model.arch=deeplabv2_r101, "
                f"model.options.multi_level=true) or set method.levels=[main]"
            )

    def predict(self, images: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        """Logits per level (``main`` always, ``aux`` when in ``levels``) at the model's output stride."""
        if "aux" not in self.levels:
            return {"main": self.model(images)}
        logits, features = self.model(images, return_features=True)
        return {"main": logits, "aux": features["aux_logits"]}

    def source_levels(self, batch: Batch) -> tuple[dict[str, "torch.Tensor"], "torch.Tensor",
                                                   dict[str, "torch.Tensor"]]:
        """``(logits per level, source loss, logged terms)`` of a labelled batch: ``Method.source_terms``
        (``loss_seg``, ``loss_fd``) plus ``seg_weight_aux * loss_seg_aux`` with ``aux`` (logged unweighted)."""
        logits, features = self.source_forward(batch["image"], features="aux" in self.levels)
        terms = self.source_terms(batch, logits, features)
        levels, total = {"main": logits}, sum(terms.values())
        logged = {k: v.detach() for k, v in terms.items()}
        if "aux" in self.levels:
            levels["aux"] = features["aux_logits"]
            aux = losses.seg_loss(levels["aux"], batch["label"])
            total = total + self.cfg.method.seg_weight_aux * aux
            logged["loss_seg_aux"] = aux.detach()
        return levels, total, logged
