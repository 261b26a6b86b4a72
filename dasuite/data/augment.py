"""Random training augmentation, batched on the batch's device with Kornia.

One affine warp per sample does random rescale (ratio ``s ~ U(scale)``), random crop (with padding when the
rescaled image is smaller than the crop) and horizontal flip in a single resampling: image bilinear, label
nearest. The ignore value survives: labels are warped as ``label + 1`` with zero padding, so every padded pixel
comes back as ``-1`` and is set to 255 (Kornia pads with 0, which is a real class). Photometric jitter follows
torchvision's ``ColorJitter`` factors, per sample. All random numbers come from ``torch.rand`` on the batch's
device, i.e. torch's global generator there, so the engine's seeding and RNG-state checkpoints make it
reproducible.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import adjust_hue
from kornia.geometry.transform import warp_affine
from pydantic import Field, field_validator

from dasuite.data.labels import IGNORE_INDEX
from dasuite.schema_base import Section

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ColorJitterConfig(Section):
    """With probability ``p`` per sample: brightness x U(1-b, 1+b), contrast and saturation blended with the grey
    image by U(1-c, 1+c) / U(1-s, 1+s), hue shifted by U(-h, h) turns (torchvision conventions)."""

    brightness: float = Field(0.3, ge=0)
    contrast: float = Field(0.3, ge=0)
    saturation: float = Field(0.3, ge=0)
    hue: float = Field(0.05, ge=0, le=0.5)
    p: float = Field(0.8, ge=0, le=1)


class AugmentConfig(Section):
    """Training augmentation of one dataset entry (ignored for evaluation entries).

    ``scale``: random rescale ratio range; ``crop``: (width, height) of the random crop, None = the input size;
    ``hflip``: flip probability; ``color_jitter``: None = off, ``{}`` or ``true`` = the default jitter.
    """

    enabled: bool = True
    scale: tuple[float, float] = (0.5, 2.0)
    crop: Optional[tuple[int, int]] = None
    hflip: float = Field(0.5, ge=0, le=1)
    color_jitter: Optional[ColorJitterConfig] = None

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"scale must be [min, max] with 0 < min <= max, got {list(v)}")
        return v

    @field_validator("crop")
    @classmethod
    def _crop_size(cls, v: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
        if v is not None and (v[0] <= 0 or v[1] <= 0):
            raise ValueError(f"crop must be (width, height) with positive values, got {list(v)}")
        return v

    @field_validator("color_jitter", mode="before")
    @classmethod
    def _jitter_flag(cls, v: Any) -> Any:
        if v is True:
            return ColorJitterConfig()
        return None if v is False else v


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=torch.float32).view(3, 1, 1)
    return mean, std


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 valued) ...x3xHxW -> float32 ``(x / 255 - mean) / std`` with ImageNet statistics."""
    mean, std = _stats(images)
    return (images.float() / 255.0 - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of ``normalize`` for visualisation: float ...x3xHxW -> uint8, rounded and clamped."""
    mean, std = _stats(images)
    return ((images.float() * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)


def _uniform(lo: float, hi: float, n: int, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device)


class DeviceAugment:
    """Batched random augmentation built once from an ``AugmentConfig``; see the module docstring."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, labels: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """images uint8 Bx3xHxW, labels BxHxW (or None) -> (normalised float32 Bx3xh'xw', int64 Bxh'xw' or None),
        where (w', h') is ``crop`` or the input size."""
        x = images.float() / 255.0
        labels = None if labels is None else labels.long()
        if self.cfg.enabled:
            if not self._geometric_identity(x):
                x, labels = self._geometric(x, labels)
            if self.cfg.color_jitter is not None:
                x = self._jitter(x, self.cfg.color_jitter)
        mean, std = _stats(x)
        return (x - mean) / std, labels

    def _geometric_identity(self, x: torch.Tensor) -> bool:
        c = self.cfg
        same_size = c.crop is None or tuple(c.crop) == (x.shape[-1], x.shape[-2])
        return c.scale == (1.0, 1.0) and same_size and c.hflip == 0

    def _geometric(
        self, x: torch.Tensor, labels: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per sample: scale s, crop offset (ox, oy) in the rescaled image (0 = pad right/bottom when it is
        smaller than the crop), flip. Pixel-centre mapping src -> dst: ``x' = s (x + 0.5) - 0.5 - ox``,
        mirrored as ``cw - 1 - x'`` when flipped; same for y without the mirror."""
        b, _, h, w = x.shape
        cw, ch = self.cfg.crop or (w, h)
        dev = x.device
        s = _uniform(*self.cfg.scale, b, dev)
        flip = torch.rand(b, device=dev) < self.cfg.hflip
        u = torch.rand(b, 2, device=dev)
        ox = (u[:, 0] * (w * s - cw).clamp(min=0)).round()
        oy = (u[:, 1] * (h * s - ch).clamp(min=0)).round()
        tx = 0.5 * s - 0.5 - ox
        sign = 1.0 - 2.0 * flip.float()
        matrix = torch.zeros(b, 2, 3, device=dev)
        matrix[:, 0, 0] = sign * s
        matrix[:, 0, 2] = torch.where(flip, cw - 1 - tx, tx)
        matrix[:, 1, 1] = s
        matrix[:, 1, 2] = 0.5 * s - 0.5 - oy
        out = warp_affine(x, matrix, (ch, cw), mode="bilinear", padding_mode="zeros", align_corners=True)
        if labels is None:
            return out, None
        shifted = (labels.unsqueeze(1) + 1).float()  # 0 now means "outside the image"
        warped = warp_affine(shifted, matrix, (ch, cw), mode="nearest", padding_mode="zeros", align_corners=True)
        warped = warped.squeeze(1).round().long() - 1
        return out, torch.where(warped < 0, torch.full_like(warped, IGNORE_INDEX), warped)

    @staticmethod
    def _jitter(x: torch.Tensor, cj: ColorJitterConfig) -> torch.Tensor:
        """Brightness, contrast, saturation, hue in this fixed order, on [0, 1] images, clamped after each."""
        b, dev = x.shape[0], x.device
        apply = (torch.rand(b, device=dev) < cj.p).view(b, 1, 1, 1)
        strengths = (cj.brightness, cj.contrast, cj.saturation)
        factors = [_uniform(1 - f, 1 + f, b, dev).clamp(min=0).view(b, 1, 1, 1) for f in strengths]
        hue = _uniform(-cj.hue, cj.hue, b, dev) * (2 * math.pi)
        bright, contrast, sat = (torch.where(apply, f, torch.ones_like(f)) for f in factors)
        y = (x * bright).clamp(0, 1)
        grey_mean = rgb_to_grayscale(y).mean(dim=(-2, -1), keepdim=True)
        y = ((y - grey_mean) * contrast + grey_mean).clamp(0, 1)
        grey = rgb_to_grayscale(y)
        y = ((y - grey) * sat + grey).clamp(0, 1)
        if cj.hue > 0:
            y = torch.where(apply, adjust_hue(y, hue).clamp(0, 1), y)
        return y
