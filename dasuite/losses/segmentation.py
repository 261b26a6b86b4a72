"""Supervised segmentation loss."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from dasuite.constants import IGNORE_INDEX


def upsample_to(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of BxKxhxw logits to ``size`` = (H, W); no-op when already there.

    Logits in channels-last layout (SegFormer's decoder, ``train.channels_last``) are made contiguous first: the
    copy of the small logits replaces the copies that softmax / cross-entropy over the class dimension would make of
    the upsampled (stride**2 times larger) tensor and its gradient."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits.contiguous(), size=size, mode="bilinear", align_corners=False)


def seg_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    class_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Pixel-wise cross-entropy averaged over labelled pixels.

    ``logits`` BxKxhxw are upsampled to the label size HxW first (as SegFormer/DeepLab recipes do). Unlike
    ``F.cross_entropy(reduction="mean")`` this returns 0 (not NaN) for a batch whose pixels are all ignored, and it
    never syncs with the host. With ``class_weights`` the sum is divided by the summed weights of labelled pixels
    (0 when that sum is 0).

    Without class weights it is ``F.cross_entropy(..., ignore_index=...)`` itself (the mean over labelled pixels),
    made 0 by ``torch.where`` on "any labelled pixel" when there is none; its gradient is then 0 as well.
    """
    logits = upsample_to(logits, labels.shape[-2:]).float()
    labels = labels.long()
    valid = labels != ignore_index
    if class_weights is None:
        loss = F.cross_entropy(logits, labels, ignore_index=ignore_index)
        return torch.where(valid.any(), loss, torch.zeros_like(loss))
    total = F.cross_entropy(logits, labels, weight=class_weights, ignore_index=ignore_index, reduction="sum")
    denom = class_weights[labels.clamp(0, len(class_weights) - 1)].mul(valid).sum()
    return total / torch.where(denom > 0, denom, torch.ones_like(denom))


def ohem_seg_loss(logits: torch.Tensor, labels: torch.Tensor, thresh: float = 0.7, min_kept: int = 100000,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy over the hard labelled pixels (online hard example mining, as UniMatch's
    ``ProbOhemCrossEntropy2d``): with ``p`` the softmax probability of a pixel's label, a pixel is kept when
    ``p <= max(thresh, p_(k))``, ``p_(k)`` the ``k = min_kept``-th smallest ``p`` of the batch's labelled pixels; the
    loss is the mean CE over the kept pixels. Batches with fewer than ``min_kept`` labelled pixels use them all (plain
    CE); 0 when none is labelled. Logits are upsampled to the labels first; no host sync."""
    logits = upsample_to(logits, labels.shape[-2:]).float()
    labels = labels.long()
    valid = labels != ignore_index
    ce = F.cross_entropy(logits, torch.where(valid, labels, torch.zeros_like(labels)), reduction="none")
    prob = torch.where(valid, torch.exp(-ce.detach()), torch.ones_like(ce))  # softmax of the label (1 if ignored)
    kept = valid
    if min_kept > 0:
        k = min(int(min_kept), prob.numel())
        threshold = torch.clamp(prob.flatten().kthvalue(k).values, min=float(thresh))
        kept = torch.where(valid.sum() >= min_kept, valid & (prob <= threshold), valid)
    else:
        kept = valid & (prob <= thresh)
    kept = kept.to(ce.dtype)
    return (ce * kept).sum() / kept.sum().clamp(min=1.0)
