"""``advent``: adversarial adaptation on entropy maps (ADVENT's AdvEnt, Vu et al., CVPR 2019).

AdaptSegNet's output-space adversary (``adaptsegnet``: one discriminator per level, the same losses, optimisers and
options) whose discriminators see the weighted self-information maps ``I_k = -P_k log2 P_k / log2 K`` of
``P = softmax(upsample(z, crop size))`` (``dasuite.losses.entropy``) instead of ``P``. Defaults are ADVENT's: levels
main and aux, adversarial weights 0.001 / 0.0002, aux segmentation weight 0.1, vanilla GAN, D Adam 1e-4.
See docs/adaptation.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from dasuite.lazy import lazy_import
from dasuite.methods.adaptsegnet import AdaptSegNet, AdaptSegNetConfig
from dasuite.methods.base import METHODS
from dasuite.methods.output_adversarial import output_probabilities

if TYPE_CHECKING:
    import torch

entropy = lazy_import("dasuite.losses.entropy")


class AdvEntConfig(AdaptSegNetConfig):
    """``method: {name: advent, ...}``: the keys of ``adaptsegnet``; defaults are ADVENT's AdvEnt."""

    name: Literal["advent"] = "advent"  # type: ignore[assignment]
    """Selects this method (``dasuite list methods``)."""


def self_information_maps(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The discriminators' input: weighted self-information of ``softmax(upsample(logits, size))``."""
    return entropy.self_information(output_probabilities(logits, size))


@METHODS.register("advent", config=AdvEntConfig)
class AdvEnt(AdaptSegNet):
    """``adaptsegnet`` with discriminators on self-information maps."""

    maps = staticmethod(self_information_maps)
