"""Cross-image mixing masks for mean-teacher self-training, batched on the device.

A mask is a bool BxHxW tensor, ``True`` where the mixed pixel comes from the *pasted* image (DACS: the source
image) and ``False`` where it comes from the *base* image (the target image); ``mix`` applies one mask to images
(Bx3xHxW) and labels/weights (BxHxW) alike, so every pixel of the result comes from exactly one image and its
label follows it.

- ``cutmix_masks``: one box per image (Yun et al. 2019, UniMatch's settings): with probability ``p`` a box of area
  ``a * H * W`` with ``a ~ U(area)`` and aspect ``r = w/h`` with ``log r ~ U(log aspect)`` (so 0.3 and 3.3 are
  equally likely), clipped to the image, at a uniformly random position; otherwise an empty mask.
- ``classmix_masks``: ClassMix (Olsson et al. 2021) as DACS does it, per image: of the classes present in the
  pasted image's label (255 is never a class), ``ceil(n / 2)`` are drawn without replacement and their pixels form
  the mask (DAFormer's variant draws from the whole batch's classes; this one is per image, as the paper says).

Random numbers come from torch's global generator of the tensors' device, so the engine's seeding and RNG
checkpoints make masks reproducible and resumable.
"""

from __future__ import annotations

import math

import torch

from dasuite.data.labels import IGNORE_INDEX


def cutmix_masks(batch: int, height: int, width: int, device: torch.device, area: tuple[float, float] = (0.02, 0.4),
                 aspect: tuple[float, float] = (0.3, 1 / 0.3), p: float = 1.0) -> torch.Tensor:
    """bool ``batch``xHxW box masks (module docstring); box sides ``w = sqrt(a H W r)``, ``h = sqrt(a H W / r)``."""
    u = torch.rand(batch, 5, device=device)
    a = area[0] + (area[1] - area[0]) * u[:, 0]
    log_r = math.log(aspect[0]) + (math.log(aspect[1]) - math.log(aspect[0])) * u[:, 1]
    r = log_r.exp()
    box_w = (a * height * width * r).sqrt().round().clamp(1, width)
    box_h = (a * height * width / r).sqrt().round().clamp(1, height)
    x0 = ((width - box_w) * u[:, 2]).floor()
    y0 = ((height - box_h) * u[:, 3]).floor()
    xs = torch.arange(width, device=device).view(1, 1, width)
    ys = torch.arange(height, device=device).view(1, height, 1)
    inside_x = (xs >= x0.view(-1, 1, 1)) & (xs < (x0 + box_w).view(-1, 1, 1))
    inside_y = (ys >= y0.view(-1, 1, 1)) & (ys < (y0 + box_h).view(-1, 1, 1))
    apply = (u[:, 4] < p).view(-1, 1, 1)
    return inside_x & inside_y & apply


def classmix_masks(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """bool BxHxW masks from int labels BxHxW (255 = ignore): per image, the pixels of ``ceil(n/2)`` of its ``n``
    present classes, chosen uniformly without replacement (random scores, the top ``ceil(n/2)`` present ones)."""
    b = labels.shape[0]
    valid = labels != IGNORE_INDEX
    flat = labels.clamp(0, num_classes - 1).reshape(b, -1)
    present = torch.zeros(b, num_classes, dtype=torch.long, device=labels.device).scatter_add_(
        1, flat, valid.reshape(b, -1).long()) > 0
    scores = torch.rand(b, num_classes, device=labels.device).masked_fill(~present, -1.0)
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = highest score
    chosen = present & (rank < (present.sum(1, keepdim=True) + 1) // 2)
    return chosen.gather(1, flat).reshape(labels.shape) & valid


def mix(mask: torch.Tensor, pasted: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``pasted`` where ``mask`` else ``base``; mask BxHxW broadcasts over the channels of Bx3xHxW images."""
    m = mask.unsqueeze(1) if pasted.dim() == mask.dim() + 1 else mask
    return torch.where(m, pasted, base)
