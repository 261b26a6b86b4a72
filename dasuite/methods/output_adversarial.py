"""Output-space adversarial adaptation (AdaptSegNet, Tsai et al. CVPR 2018), the per-level part shared by the
``adaptsegnet`` and ``advent`` methods and ``mean_teacher``'s optional ``adversarial:`` block (one segmenter trained
with self-training and an adversarial loss on its predictions).

For each output level ``l`` (``main``: the segmenter's logits; ``aux``: a multi-level DeepLabV2's layer3 logits),
with source logits ``z_s``, target logits ``z_t`` and the input crop sizes:

- ``P_l = maps(z, crop size)``: by default ``softmax(upsample(z, crop size))`` over classes, bilinear, float32
  (AdaptSegNet's ``interp`` then softmax); ADVENT passes its weighted self-information maps instead;
- generator term ``loss_adv_l = gan(D_l(P_l(t)), real)`` with D's parameters detached (trains the segmenter only);
- discriminator term ``loss_d_l = (gan(D_l(P_l(s).detach()), real) + gan(D_l(P_l(t).detach()), fake)) / 2``
  (trains ``D_l`` only);
- added to the caller's total as ``total + w_l * loss_adv_l + loss_d_l``, level by level.

Source = "real" (1), target = "fake" (0); ``gan`` is ``vanilla`` (BCE with logits) or ``lsgan`` (MSE). One
``OutputSpaceDiscriminator`` per level with its own Adam and poly schedule, stepped after the segmenter's optimizer
(``dasuite.methods.adversary``: one backward, ``step()`` from the method's ``on_step_end``). Logged per level:
``loss_adv_<l>``, ``loss_d_<l>``, ``d_<l>_source`` / ``d_<l>_target`` (D's mean "source" probability; lsgan: mean
output) and ``lr_d_<l>``. See docs/adaptsegnet.md and docs/self_training.md ("Adversarial term").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal, Mapping, Sequence

from pydantic import Field

from dasuite.lazy import lazy_import
from dasuite.methods.adversary import Adversary, AdversaryOptimConfig
from dasuite.schema_base import Section

if TYPE_CHECKING:
    import torch

segmentation = lazy_import("dasuite.losses.segmentation")
discriminator = lazy_import("dasuite.models.discriminator")


class OutputAdversarialConfig(Section):
    """A single-level (``main``) output-space adversarial term, e.g. ``mean_teacher``'s ``adversarial:`` block.
    Defaults are AdaptSegNet's single-level vanilla GAN (weight 0.001; LS-GAN: ``objective: lsgan, weight: 0.01``)."""

    objective: Literal["vanilla", "lsgan"] = "vanilla"
    """GAN loss: ``vanilla`` (BCE with logits) or ``lsgan`` (least squares)."""
    weight: float = Field(0.001, ge=0)
    """Weight of the adversarial loss on the segmenter (AdaptSegNet single-level: 0.001; LS-GAN: 0.01)."""
    ndf: int = Field(64, gt=0)
    """Discriminator width (channels ndf, 2ndf, 4ndf, 8ndf)."""
    discriminator: AdversaryOptimConfig = Field(default_factory=AdversaryOptimConfig)
    """The discriminator's Adam and schedule (AdaptSegNet's: lr 1e-4, poly 0.9)."""


def output_probabilities(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``softmax(upsample(logits, size))`` over classes, float32, B x K x H x W."""
    return segmentation.upsample_to(logits.float(), size).softmax(1)


class OutputAdversary(Adversary):
    """One ``OutputSpaceDiscriminator(num_classes, ndf)`` per level in ``levels``, trained as ``Adversary`` does, on
    ``maps(logits, crop size)``; ``add_losses`` adds the generator and discriminator terms of every level to a
    method's total loss."""

    def __init__(self, num_classes: int, levels: Sequence[str], objective: str, ndf: int,
                 optim: AdversaryOptimConfig, max_iters: int,
                 maps: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] = output_probabilities) -> None:
        self.levels = tuple(levels)
        self.maps = maps
        discriminators = {lvl: discriminator.OutputSpaceDiscriminator(num_classes, ndf) for lvl in self.levels}
        super().__init__(discriminators, objective, optim, max_iters)

    @classmethod
    def from_config(cls, cfg: OutputAdversarialConfig, num_classes: int, max_iters: int) -> "OutputAdversary":
        """The single-level (``main``) adversary of an ``OutputAdversarialConfig``."""
        return cls(num_classes, ("main",), cfg.objective, cfg.ndf, cfg.discriminator, max_iters)

    def add_losses(self, total: torch.Tensor, source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                   source_size: tuple[int, int], target_size: tuple[int, int],
                   weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total + sum_l weights[l] * loss_adv_l + loss_d_l, logged scalars)`` for source / target logits per
        level (any output stride; upsampled to ``source_size`` / ``target_size``, the input crops' H x W)."""
        out: dict[str, torch.Tensor] = {}
        for lvl in self.levels:
            p_src = self.maps(source[lvl], source_size)
            p_tgt = self.maps(target[lvl], target_size)
            loss_adv = self.generator_loss(lvl, p_tgt, real=True)
            loss_d = 0.5 * (self.discriminator_loss(lvl, p_src, real=True)
                            + self.discriminator_loss(lvl, p_tgt, real=False))
            total = total + weights[lvl] * loss_adv + loss_d
            out[f"loss_adv_{lvl}"] = loss_adv.detach()
            out[f"loss_d_{lvl}"] = loss_d.detach()
            out[f"d_{lvl}_source"] = self.verdicts[f"{lvl}_real"]
            out[f"d_{lvl}_target"] = self.verdicts[f"{lvl}_fake"]
        return total, {**out, **self.lrs()}
