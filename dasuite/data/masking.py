"""Random block masks of images for masked image consistency (MIC, Hoyer et al. CVPR'23), batched on the device.

``block_masks``: per image a coarse grid of ``gh x gw`` cells, ``gh = max(1, round(H / patch))`` (``gw`` alike),
one uniform draw ``u`` per cell, the cell kept where ``u > ratio`` (so a fraction ``ratio`` of the cells is masked
in expectation), upsampled to HxW by nearest-neighbour interpolation. ``mask_images`` multiplies images by it. On
normalised images (as methods hold them) a masked pixel becomes 0, i.e. the dataset's mean colour, as in MIC, whose
images are normalised when masked. Random numbers come from torch's global generator of the images' device (one
``torch.rand`` call, no host synchronisation), so the engine's RNG checkpoints make masks resumable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def block_masks(batch: int, height: int, width: int, patch: int, ratio: float,
                device: torch.device) -> torch.Tensor:
    """float ``batch``x1xHxW masks of 0 (masked) and 1 (kept) blocks of about ``patch`` x ``patch`` pixels."""
    grid = (max(1, round(height / patch)), max(1, round(width / patch)))
    keep = (torch.rand(batch, 1, *grid, device=device) > ratio).float()
    return F.interpolate(keep, size=(height, width), mode="nearest")


def mask_images(images: torch.Tensor, patch: int, ratio: float) -> torch.Tensor:
    """Bx3xHxW ``images`` times a fresh ``block_masks`` draw (no gradient flows into the mask)."""
    b, _, h, w = images.shape
    return images * block_masks(b, h, w, patch, ratio, images.device).to(images.dtype)
