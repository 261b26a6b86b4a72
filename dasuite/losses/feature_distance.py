"""DAFormer's ImageNet feature distance (Hoyer et al., CVPR'22, Sec. 3.3), as plain tensor functions.

With student features ``F`` and frozen ImageNet-encoder features ``G`` (both BxCxhxw, one encoder stage) and a
boolean mask ``M`` (Bxhxw) of the feature pixels that count:

    FD = sum_{b,i,j} M_bij ||F_bij - G_bij||_2 / sum M      (L2 over channels, in float32; 0 when M is empty)

``M`` comes from the labels (BxHxW, 255 = ignore) by ``block_labels``: the label map is cut into a h x w grid of
blocks of ``ceil(H/h) x ceil(W/w)`` pixels (padded with 255 at the bottom/right when H or W is not a multiple);
each block gets its majority class when that class covers at least ``min_ratio`` of the block's pixels and is not
255 (ignored pixels are counted as a class of their own), else 255; ``M`` = the block's class is in ``classes``
(DAFormer: the Cityscapes thing classes, ratio 0.75).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from dasuite.constants import IGNORE_INDEX

__all__ = ["block_labels", "class_mask", "masked_feature_distance"]


def block_labels(labels: torch.Tensor, size: tuple[int, int], min_ratio: float, num_classes: int) -> torch.Tensor:
    """BxHxW labels -> Bxhxw block labels, ``size`` = (h, w): majority class of each block if its share is at least
    ``min_ratio`` (and it is not 255), else 255 (module docstring)."""
    b, height, width = labels.shape
    h, w = size
    fh, fw = math.ceil(height / h), math.ceil(width / w)
    labels = labels.long()
    labels = torch.where((labels >= 0) & (labels < num_classes), labels, torch.full_like(labels, num_classes))
    if (fh * h, fw * w) != (height, width):
        labels = F.pad(labels, (0, fw * w - width, 0, fh * h - height), value=num_classes)
    blocks = labels.reshape(b, h, fh, w, fw).permute(0, 1, 3, 2, 4).reshape(b, h, w, fh * fw)
    counts = torch.zeros(b, h, w, num_classes + 1, device=labels.device)
    counts.scatter_add_(-1, blocks, torch.ones_like(blocks, dtype=counts.dtype))
    share, majority = (counts / (fh * fw)).max(-1)
    keep = (share >= min_ratio) & (majority < num_classes)
    return torch.where(keep, majority, torch.full_like(majority, IGNORE_INDEX))


def class_mask(labels: torch.Tensor, size: tuple[int, int], classes: Optional[Sequence[int]], min_ratio: float,
               num_classes: int) -> torch.Tensor:
    """Bxhxw bool mask of the blocks (``block_labels``) whose class is in ``classes``; all True for None."""
    if classes is None:
        return torch.ones(labels.shape[0], *size, dtype=torch.bool, device=labels.device)
    blocks = block_labels(labels, size, min_ratio, num_classes)
    wanted = torch.zeros(num_classes + 1, dtype=torch.bool, device=labels.device)
    wanted[list(classes)] = True
    return wanted[blocks.clamp(max=num_classes)]


def masked_feature_distance(features: torch.Tensor, frozen: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``FD`` of the module docstring: mean L2 distance over channels at the pixels where ``mask`` (Bxhxw) is True;
    0 (with a zero gradient) when none is; no host synchronisation."""
    distance = (features.float() - frozen.float()).norm(p=2, dim=1)
    weights = mask.to(distance.dtype)
    return (distance * weights).sum() / weights.sum().clamp(min=1.0)
