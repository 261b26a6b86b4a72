"""GAN objectives on discriminator outputs (logits of any shape, e.g. B x 1 x h x w patch maps).

``vanilla`` (Goodfellow et al. 2014; AdaptSegNet's default): binary cross-entropy with logits against an all-ones
("real") or all-zeros ("fake") target, ``mean(softplus(-z))`` for real and ``mean(softplus(z))`` for fake.
``lsgan`` (Mao et al. 2017; CycleGAN, AdaptSegNet ``--gan LS``): ``mean((z - 1)^2)`` for real, ``mean(z^2)`` for
fake, on the raw output. Both average over every element and are computed in float32 (safe under fp16/bf16 autocast).
"""

from __future__ import annotations

from typing import Literal

from dasuite.lazy import lazy_import

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")

GANObjective = Literal["vanilla", "lsgan"]
GAN_OBJECTIVES: tuple[str, ...] = ("vanilla", "lsgan")


def gan_loss(logits: torch.Tensor, real: bool, objective: GANObjective) -> torch.Tensor:
    """The loss of discriminator output ``logits`` against the label ``real`` (1) / fake (0); a 0-dim tensor."""
    logits = logits.float()
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if objective == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    if objective == "lsgan":
        return F.mse_loss(logits, target)
    raise ValueError(f"unknown GAN objective {objective!r}; expected one of {', '.join(GAN_OBJECTIVES)}")
