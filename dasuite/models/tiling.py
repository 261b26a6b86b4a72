"""Fully-convolutional inference on large images: padding to a multiple of the network's stride and overlapping
windows blended linearly (``dasuite translate`` runs CycleGAN generators with it).

Windows of side ``w`` start on a grid of step ``w - overlap`` rounded down to a multiple of 4 (so every window
sees the same stride phase of a network that downsamples 4x), the last one ending at the border. Each window's
output is weighted by ``r(i) r(j)`` with ``r(i) = min(1, (i + 0.5) / overlap, (w - i - 0.5) / overlap)`` (linear
ramps over the ``overlap`` pixels at each edge, positive everywhere) and the sum is divided by the summed weights:
``y = sum_t r_t G(x_t) / sum_t r_t``. A pointwise network gives exactly its whole-image output; a network with a
receptive field gives it up to the border effects the ramps fade out (instance-normalised networks also see
per-window statistics: use windows as large as memory allows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dasuite.errors import DasuiteError

PAD_MULTIPLE = 4  # a ResNet generator's two stride-2 stages
AUTO_TILE = 1024  # window side when tiling starts because an image exceeds max_side


@dataclass(frozen=True)
class Tiling:
    """``tile``: window side (a multiple of 4) or None (whole images up to ``max_side``, ``AUTO_TILE`` beyond);
    ``overlap``: pixels shared by neighbouring windows, blended linearly."""

    tile: Optional[int] = None
    overlap: int = 64
    max_side: int = 2048

    def __post_init__(self) -> None:
        if self.tile is not None and (self.tile < PAD_MULTIPLE or self.tile % PAD_MULTIPLE):
            raise DasuiteError(f"tile must be a positive multiple of {PAD_MULTIPLE}, got {self.tile}")
        window = self.tile if self.tile is not None else AUTO_TILE
        if not 0 <= self.overlap < window:
            raise DasuiteError(f"overlap must be in [0, {window}) for tile {window}, got {self.overlap}")
        if self.max_side < PAD_MULTIPLE:
            raise DasuiteError(f"max_side must be at least {PAD_MULTIPLE}, got {self.max_side}")

    def window(self, height: int, width: int) -> Optional[int]:
        """The window side used for an H x W image, or None for whole-image inference."""
        if self.tile is not None:
            return self.tile
        return AUTO_TILE if max(height, width) > self.max_side else None


def tile_starts(length: int, window: int, overlap: int) -> list[int]:
    """Window starts covering ``[0, length)``: a grid of step ``window - overlap`` (rounded down to a multiple of
    4) plus a last window ending at ``length``; ``[0]`` when one window covers it. ``length``, ``window``: multiples
    of 4."""
    if length <= window:
        return [0]
    step = max(PAD_MULTIPLE, (window - overlap) // PAD_MULTIPLE * PAD_MULTIPLE)
    return [*range(0, length - window, step), length - window]


def _ramp(n: int, overlap: int, device: torch.device) -> torch.Tensor:
    """(n,) weights ``min(1, (i + 0.5) / overlap, (n - i - 0.5) / overlap)``: positive, 1 in the window's middle."""
    i = torch.arange(n, device=device, dtype=torch.float32) + 0.5
    return torch.minimum(i, n - i).div(max(overlap, 1)).clamp(max=1.0)


def run_tiled(generator: nn.Module, x: torch.Tensor, window: int, overlap: int) -> torch.Tensor:
    """``generator`` on overlapping windows of ``x`` (B x C x H x W, H and W multiples of 4), linearly blended."""
    height, width = x.shape[-2:]
    wh, ww = min(window, height), min(window, width)
    weight = (_ramp(wh, overlap, x.device)[:, None] * _ramp(ww, overlap, x.device)[None, :])[None, None]
    out: Optional[torch.Tensor] = None
    total = x.new_zeros((1, 1, height, width), dtype=torch.float32)
    for y0 in tile_starts(height, wh, overlap):
        for x0 in tile_starts(width, ww, overlap):
            y = generator(x[..., y0:y0 + wh, x0:x0 + ww]).float()
            if out is None:
                out = y.new_zeros((x.shape[0], y.shape[1], height, width))
            out[..., y0:y0 + wh, x0:x0 + ww] += y * weight
            total[..., y0:y0 + wh, x0:x0 + ww] += weight
    return out / total


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Pad B x C x H x W at the bottom/right to multiples of ``multiple`` (reflection; replicate when too small)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
