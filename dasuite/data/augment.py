"""Random training augmentation, batched on the batch's device with Kornia: the ``weak`` and ``strong`` pipelines.

``weak`` (default): one affine warp per sample does random rescale (ratio ``s ~ U(scale)``), random crop (with
padding when the rescaled image is smaller than the crop) and horizontal flip in a single resampling: image
bilinear, label nearest. The ignore value survives: labels are warped as ``label + 1`` with zero padding, so every
padded pixel comes back as ``-1`` and is set to 255 (Kornia pads with 0, which is a real class). Optional
photometric jitter follows torchvision's ``ColorJitter`` factors, per sample. The geometry is three functions
(``crop_matrix``, ``warp_images``, ``warp_labels``) that ``data.training`` also uses when a role's crop must be
drawn in the loader (rare-class crop re-draws).

``strong`` = ``weak`` + an image-only photometric part (``StrongConfig``): an AutoAugment (ImageNet policy) or
RandAugment policy restricted to its photometric operations (rotate / shear / translate are dropped, since they
would move the image but not the label), colour jitter, random grayscale and Gaussian blur. The photometric part
never touches labels, so 255 padding and image/label alignment are exactly those of ``weak``; methods can also
call it on its own (``DeviceAugment.photometric``), e.g. after mixing images.

Random numbers come from torch's global generators (on the batch's device; Kornia's policy choices on the CPU),
so the engine's seeding and RNG-state checkpoints make augmentation reproducible.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from dasuite.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from dasuite.lazy import lazy_import
from dasuite.schema_base import Section

if TYPE_CHECKING:
    from torch import nn

torch = lazy_import("torch")
kornia_auto = lazy_import("kornia.augmentation.auto")
kornia_autoaugment = lazy_import("kornia.augmentation.auto.autoaugment.autoaugment")
kornia_randaugment = lazy_import("kornia.augmentation.auto.rand_augment.rand_augment")
kornia_color = lazy_import("kornia.color")
kornia_enhance = lazy_import("kornia.enhance")
kornia_filters = lazy_import("kornia.filters")
kornia_transform = lazy_import("kornia.geometry.transform")

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "AugmentConfig", "ColorJitterConfig", "DeviceAugment", "StrongConfig",
           "crop_matrix", "denormalize", "denormalize_float", "normalize", "photometric_policy", "pseudo_valid",
           "warp_images", "warp_labels"]
#: Operations of Kornia's policies that move pixels; dropped because the policy only sees the image.
GEOMETRIC_POLICY_OPS = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})


class ColorJitterConfig(Section):
    """With probability ``p`` per sample: brightness x U(1-b, 1+b), contrast and saturation blended with the grey
    image by U(1-c, 1+c) / U(1-s, 1+s), hue shifted by U(-h, h) turns (torchvision conventions)."""

    brightness: float = Field(0.3, ge=0)
    """Brightness: multiply by U(1-b, 1+b)."""
    contrast: float = Field(0.3, ge=0)
    """Contrast: blend with the image's mean grey by U(1-c, 1+c)."""
    saturation: float = Field(0.3, ge=0)
    """Saturation: blend with the grey image by U(1-s, 1+s)."""
    hue: float = Field(0.05, ge=0, le=0.5)
    """Hue shift range U(-h, h), in turns."""
    p: float = Field(0.8, ge=0, le=1)
    """Probability per image of applying the jitter."""


def _jitter_flag(v: Any, default: "ColorJitterConfig") -> Any:
    if v is True:
        return default
    return None if v is False else v


def _strong_jitter() -> ColorJitterConfig:
    return ColorJitterConfig(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.25, p=0.8)


class RandAugmentConfig(Section):
    """RandAugment: ``n`` operations per image (distinct, of the 10 photometric ones) at magnitude ``m`` of 30."""

    n: int = Field(2, ge=1, le=10)
    """Distinct operations per image (of the 10 photometric ones)."""
    m: int = Field(10, gt=0, lt=30)
    """Magnitude of the operations on RandAugment's scale of 30."""


class StrongConfig(Section):
    """The image-only photometric part of the ``strong`` pipeline, applied in this order: ``policy``
    (``autoaugment``: Kornia's AutoAugment ImageNet policy; ``randaugment``; ``null``: none), ``color_jitter``
    (default: UniMatch's 0.5/0.5/0.5/0.25 with p 0.8), grayscale with probability ``grayscale``, Gaussian blur
    with probability ``blur`` and sigma ~ U(``blur_sigma``) pixels (kernel ``2 ceil(3 sigma_max) + 1``)."""

    policy: Optional[Literal["autoaugment", "randaugment"]] = "autoaugment"
    """Photometric-only policy: ``autoaugment`` (Kornia's ImageNet policy) or ``randaugment``; null = none."""
    randaugment: RandAugmentConfig = Field(default_factory=RandAugmentConfig)
    """Settings of ``policy: randaugment``."""
    color_jitter: Optional[ColorJitterConfig] = Field(default_factory=lambda: _strong_jitter())
    """Colour jitter after the policy (default: UniMatch's strong jitter); null = off."""
    grayscale: float = Field(0.2, ge=0, le=1)
    """Probability of replacing an image by its grey version."""
    blur: float = Field(0.5, ge=0, le=1)
    """Probability of a Gaussian blur."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Blur sigma range [min, max] in pixels, drawn uniformly (kernel ``2 ceil(3 max) + 1``)."""

    @field_validator("blur_sigma")
    @classmethod
    def _sigma_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"blur_sigma must be [min, max] with 0 < min <= max, got {list(v)}")
        return v

    @field_validator("color_jitter", mode="before")
    @classmethod
    def _jitter_flag(cls, v: Any) -> Any:
        return _jitter_flag(v, _strong_jitter())


class AugmentConfig(Section):
    """Training augmentation of one dataset entry (ignored for evaluation entries).

    ``pipeline``: ``weak`` (geometry + optional ``color_jitter``) or ``strong`` (``weak`` followed by the
    photometric part configured in ``strong``); ``scale``: random rescale ratio range; ``crop``: (width, height)
    of the random crop, None = the input size; ``hflip``: flip probability; ``color_jitter``: None = off, ``{}`` or
    ``true`` = the default jitter.
    """

    enabled: bool = True
    """``false``: no random augmentation at all (images are only normalised)."""
    pipeline: Literal["weak", "strong"] = "weak"
    """``weak`` (rescale, crop, flip, optional jitter) or ``strong`` (``weak``, then the part set in ``strong``)."""
    scale: tuple[float, float] = (0.5, 2.0)
    """Random rescale ratio range [min, max], drawn uniformly per image."""
    crop: Optional[tuple[int, int]] = None
    """Random crop (width, height), padded (labels with 255) where the image is smaller; null = the input size."""
    hflip: float = Field(0.5, ge=0, le=1)
    """Probability of a horizontal flip."""
    color_jitter: Optional[ColorJitterConfig] = None
    """Colour jitter after the geometric part; null = off, ``true`` or ``{}`` = the defaults."""
    strong: StrongConfig = Field(default_factory=StrongConfig)
    """The image-only photometric part that ``pipeline: strong`` adds."""
    pseudo_margins: Optional[tuple[int, int, int, int]] = None
    """(top, bottom, left, right) pixels of the decoded image where pseudo-labels are not trusted (HRDA / MIC:
    ``[30, 240, 30, 30]`` of 2048x1024 Cityscapes); the role's batches then carry the crop's map of them,
    ``pseudo_valid`` (the function of that name), which the mean teacher multiplies into the target weights."""

    @field_validator("pseudo_margins")
    @classmethod
    def _margins(cls, v: Optional[tuple[int, int, int, int]]) -> Optional[tuple[int, int, int, int]]:
        if v is not None and min(v) < 0:
            raise ValueError(f"pseudo_margins must be [top, bottom, left, right] pixels >= 0, got {list(v)}")
        return v

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
        return _jitter_flag(v, ColorJitterConfig())


def photometric_policy(cfg: StrongConfig) -> Optional[nn.Module]:
    """Kornia's AutoAugment (ImageNet sub-policies) or RandAugment with the ``GEOMETRIC_POLICY_OPS`` removed
    (AutoAugment sub-policies keep their photometric operations; emptied ones are dropped), or None."""
    if cfg.policy == "randaugment":
        ops = [sub for sub in kornia_randaugment.default_policy if sub[0][0] not in GEOMETRIC_POLICY_OPS]
        return kornia_auto.RandAugment(n=cfg.randaugment.n, m=cfg.randaugment.m, policy=ops)
    if cfg.policy == "autoaugment":
        subs = [[op for op in sub if op[0] not in GEOMETRIC_POLICY_OPS] for sub in kornia_autoaugment.imagenet_policy]
        return kornia_auto.AutoAugment(policy=[sub for sub in subs if sub])
    return None


_STATS: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std (3x1x1, float32) on ``x``'s device, made once per device: ``torch.tensor(list,
    device=cuda)`` is a blocking host-to-device copy, which every batch would otherwise pay (a host sync)."""
    stats = _STATS.get(x.device)
    if stats is None:
        stats = _STATS[x.device] = (
            torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1).to(x.device),
            torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1).to(x.device))
    return stats


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 valued) ...x3xHxW -> float32 ``(x / 255 - mean) / std`` with ImageNet statistics."""
    mean, std = _stats(images)
    return (images.float() / 255.0 - mean) / std


def denormalize_float(images: torch.Tensor) -> torch.Tensor:
    """Inverse of ``normalize`` without rounding: normalised ...x3xHxW -> float32 in [0, 1]."""
    mean, std = _stats(images)
    return (images.float() * std + mean).clamp(0, 1)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of ``normalize`` for visualisation: float ...x3xHxW -> uint8, rounded and clamped."""
    mean, std = _stats(images)
    return ((images.float() * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)


def _uniform(lo: float, hi: float, n: int, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device)


def _to_normalized(x: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(x)
    return (x - mean) / std


def crop_matrix(s: torch.Tensor, flip: torch.Tensor, u: torch.Tensor, size: tuple[int, int],
                crop: tuple[int, int]) -> torch.Tensor:
    """Bx2x3 affine maps (source pixel -> crop pixel) of the ``weak`` geometry: scale ``s`` (B,), ``flip`` (B,) bool,
    ``u`` (B, 2) uniform draws placing the crop (width, height) in the rescaled image of ``size`` (H, W): offsets
    ``ox = round(u0 max(W s - cw, 0))`` (0 = pad right/bottom when it is smaller than the crop), ``oy`` alike.
    Pixel-centre mapping: ``x' = s (x + 0.5) - 0.5 - ox``, mirrored as ``cw - 1 - x'`` when flipped; y without
    the mirror."""
    (h, w), (cw, ch) = size, crop
    ox = (u[:, 0] * (w * s - cw).clamp(min=0)).round()
    oy = (u[:, 1] * (h * s - ch).clamp(min=0)).round()
    tx = 0.5 * s - 0.5 - ox
    sign = 1.0 - 2.0 * flip.float()
    matrix = torch.zeros(len(s), 2, 3, device=s.device)
    matrix[:, 0, 0] = sign * s
    matrix[:, 0, 2] = torch.where(flip, cw - 1 - tx, tx)
    matrix[:, 1, 1] = s
    matrix[:, 1, 2] = 0.5 * s - 0.5 - oy
    return matrix


def warp_images(x: torch.Tensor, matrix: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """Float Bx3xHxW images -> Bx3xchxcw through ``crop_matrix`` maps: bilinear, zero padding."""
    return kornia_transform.warp_affine(x, matrix, (crop[1], crop[0]), mode="bilinear", padding_mode="zeros",
                                        align_corners=True)


def warp_labels(labels: torch.Tensor, matrix: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """int BxHxW labels -> int64 Bxchxcw: nearest, padding 255 (warped as ``label + 1`` with zero padding)."""
    shifted = (labels.long().unsqueeze(1) + 1).float()  # 0 now means "outside the image"
    warped = kornia_transform.warp_affine(shifted, matrix, (crop[1], crop[0]), mode="nearest", padding_mode="zeros",
                                          align_corners=True)
    warped = warped.squeeze(1).round().long() - 1
    return torch.where(warped < 0, torch.full_like(warped, IGNORE_INDEX), warped)


def pseudo_valid(matrix: torch.Tensor, size: tuple[int, int], crop: tuple[int, int],
                 margins: tuple[int, int, int, int]) -> torch.Tensor:
    """Float Bxchxcw map of the crops given by ``crop_matrix`` maps of images of ``size`` (H, W): 1 where the crop
    pixel comes from inside the image minus ``margins`` (top, bottom, left, right), 0 in the margins and in padding.
    The box is warped like a label (nearest), so it follows the crop, scale and flip exactly as the labels do."""
    (h, w), (top, bottom, left, right) = size, margins
    rows, cols = torch.arange(h, device=matrix.device), torch.arange(w, device=matrix.device)
    box = ((rows >= top) & (rows < h - bottom)).view(-1, 1) & ((cols >= left) & (cols < w - right)).view(1, -1)
    warped = warp_labels(box.long().expand(len(matrix), h, w), matrix, crop)
    return (warped == 1).float()


class DeviceAugment:
    """Batched random augmentation built once from an ``AugmentConfig``; see the module docstring."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self._policy_built = False  # the policy (and Kornia's import) is built when first used
        self._policy: Optional[nn.Module] = None

    def __call__(
        self, images: torch.Tensor, labels: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """images uint8 Bx3xHxW, labels BxHxW (or None) -> (normalised float32 Bx3xh'xw', int64 Bxh'xw' or None),
        where (w', h') is ``crop`` or the input size (no gradient)."""
        out = self.batch(images, labels)
        return out["image"], out["label"]

    def batch(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict[str, Optional[torch.Tensor]]:
        """``{"image", "label"}`` as ``__call__`` returns them, plus the crops' ``pseudo_valid`` map when
        ``pseudo_margins`` is set."""
        with torch.no_grad():
            return self._augment(images, labels)

    def _augment(self, images: torch.Tensor, labels: Optional[torch.Tensor]) -> dict[str, Optional[torch.Tensor]]:
        x = images.float() / 255.0
        labels = None if labels is None else labels.long()
        size = (x.shape[-2], x.shape[-1])
        matrix: Optional[torch.Tensor] = None  # None: the identity geometry
        if self.cfg.enabled:
            if not self._geometric_identity(x):
                matrix = self._matrix(x)
                crop = self.cfg.crop or (size[1], size[0])
                x = warp_images(x, matrix, crop)
                labels = None if labels is None else warp_labels(labels, matrix, crop)
            if self.cfg.color_jitter is not None:
                x = self._jitter(x, self.cfg.color_jitter)
            if self.cfg.pipeline == "strong":
                x = self._photometric(x)
        out = {"image": _to_normalized(x), "label": labels}
        if self.cfg.pseudo_margins is not None:
            if matrix is None:
                matrix = torch.eye(2, 3, device=x.device).expand(len(x), 2, 3)
            out["pseudo_valid"] = pseudo_valid(matrix, size, (x.shape[-1], x.shape[-2]), self.cfg.pseudo_margins)
        return out

    def photometric(self, images: torch.Tensor) -> torch.Tensor:
        """The strong pipeline's image-only photometric part (``cfg.strong``, whatever ``cfg.pipeline`` is) on
        images Bx3xHxW, uint8 or normalised float (as ``__call__`` returns them) -> normalised float32. Labels are
        unaffected by construction; mean-teacher methods call it on mixed images (no gradient)."""
        with torch.no_grad():
            x = images.float() / 255.0 if images.dtype == torch.uint8 else denormalize_float(images)
            return _to_normalized(self._photometric(x))

    def _photometric(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> [0, 1] images: policy, jitter, grayscale, blur (``StrongConfig``), per sample."""
        s, b, dev = self.cfg.strong, x.shape[0], x.device
        if not self._policy_built:
            self._policy, self._policy_built = photometric_policy(s), True
        if self._policy is not None:
            policy = self._policy.to(dev)
            # Kornia draws the policy's operations once per call: call it per image so each draws its own.
            x = torch.cat([policy(x[i : i + 1]) for i in range(b)]).clamp(0, 1)
        if s.color_jitter is not None:
            x = self._jitter(x, s.color_jitter)
        if s.grayscale > 0:
            grey = (torch.rand(b, device=dev) < s.grayscale).view(b, 1, 1, 1)
            x = torch.where(grey, kornia_color.rgb_to_grayscale(x).expand_as(x), x)
        if s.blur > 0:
            blur = (torch.rand(b, device=dev) < s.blur).view(b, 1, 1, 1)
            sigma = _uniform(*s.blur_sigma, b, dev).unsqueeze(1).expand(b, 2)
            k = 2 * math.ceil(3 * s.blur_sigma[1]) + 1
            x = torch.where(blur, kornia_filters.gaussian_blur2d(x, (k, k), sigma, border_type="reflect"), x)
        return x

    def _geometric_identity(self, x: torch.Tensor) -> bool:
        c = self.cfg
        same_size = c.crop is None or tuple(c.crop) == (x.shape[-1], x.shape[-2])
        return c.scale == (1.0, 1.0) and same_size and c.hflip == 0

    def _matrix(self, x: torch.Tensor) -> torch.Tensor:
        """Per sample: scale s, flip, crop offsets -> the Bx2x3 ``crop_matrix`` maps of one warp."""
        b, _, h, w = x.shape
        dev = x.device
        s = _uniform(*self.cfg.scale, b, dev)
        flip = torch.rand(b, device=dev) < self.cfg.hflip
        u = torch.rand(b, 2, device=dev)
        return crop_matrix(s, flip, u, (h, w), self.cfg.crop or (w, h))

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
        grey_mean = kornia_color.rgb_to_grayscale(y).mean(dim=(-2, -1), keepdim=True)
        y = ((y - grey_mean) * contrast + grey_mean).clamp(0, 1)
        grey = kornia_color.rgb_to_grayscale(y)
        y = ((y - grey) * sat + grey).clamp(0, 1)
        if cj.hue > 0:
            y = torch.where(apply, kornia_enhance.adjust_hue(y, hue).clamp(0, 1), y)
        return y
