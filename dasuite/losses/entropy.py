"""Entropy of softmax predictions (ADVENT, Vu et al. CVPR'19): the weighted self-information maps and the
entropy-minimisation loss.

For class probabilities ``p`` (B x K x H x W) the weighted self-information of class k at a pixel is
``I_k = -p_k log2(p_k + 1e-30) / log2(K)`` (ADVENT's ``prob_2_entropy``; the 1e-30 keeps ``p = 0`` finite), so that
``sum_k I_k`` is the pixel's Shannon entropy normalised to [0, 1]. ``entropy_loss`` is its mean over the B x H x W
pixels (ADVENT's ``entropy_loss``). Both are computed in float32.
"""

from __future__ import annotations

import math

from dasuite.lazy import lazy_import

torch = lazy_import("torch")

EPS = 1e-30


def self_information(probs: "torch.Tensor") -> "torch.Tensor":
    """``I_k = -p_k log2(p_k + 1e-30) / log2(K)`` per class channel of B x K x H x W probabilities."""
    probs = probs.float()
    return -(probs * torch.log2(probs + EPS)) / math.log2(probs.shape[1])


def entropy_loss(probs: "torch.Tensor") -> "torch.Tensor":
    """The normalised entropy ``sum_k I_k`` averaged over every pixel of the batch (a 0-dim tensor)."""
    return self_information(probs).sum(1).mean()
