"""Fourier Domain Adaptation (FDA; Yang & Soatto, CVPR 2020) as an option of any method's source pipeline.

Per image and colour channel, with ``A = |FFT(x)|`` and ``P = angle(FFT(x))``::

    x' = iFFT( (M_beta * A_t + (1 - M_beta) * A_s) * exp(i P_s) )

The source keeps its phase (layout, edges) and its high-frequency amplitude; it takes the target's low-frequency
amplitude (global colour, illumination, tone). ``M_beta`` is 1 on the integer frequencies with ``|k_y| <= b`` and
``|k_x| <= b``, ``b = floor(min(H, W) * beta)``: in the fftshifted spectrum a centred ``(2b+1) x (2b+1)`` square
(the paper's window ``[-beta H, beta H] x [-beta W, beta W]`` with the FDA code's single half-size ``b``). The
window is closed and symmetric under ``k -> -k``, so the swapped spectrum stays Hermitian, the result is real and
the source phase is kept exactly. (The official code's slices cover ``[-b, b-1]``: its ``+b`` row and column keep
the source amplitude while their ``-b`` partners are swapped, and ``b = 0`` swaps nothing; here ``b = 0`` swaps the
DC term only, i.e. the per-channel mean colour.)

Pixel scale: the swap runs on 0-255 pixel values, as the FDA code does before subtracting the mean image. The
engine's images are normalised (``augment.normalize``), so ``fda_swap`` denormalises them, swaps, clamps to
[0, 255] and normalises again. On normalised images the DC term of a dark image is negative, and an amplitude swap
that keeps the source's sign (phase pi) would flip the target's mean colour.

beta: ``b`` counts cycles per image. The paper trains on 1024x512 images with beta 0.01 (b = 5) and reports
0.01-0.09; smaller images need a larger beta for the same window (96x96: beta 0.06 -> b = 5).

Engine: with ``data.fda`` set, ``fda_roles`` adds the target role to the roles the engine draws every step, and
``apply_fda`` replaces the source images (after both batches' augmentation) by their FDA translations; labels are
untouched and a method that uses the target itself gets the untouched target batch. FFTs run in float32 with
autocast disabled; random draws (target pairing, per-image ``p``) use torch's generator on the images' device, so
the engine's seeding and RNG checkpoints make them reproducible, and nothing syncs with the host. docs/fda.md.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import Field

from dasuite.data.augment import denormalize_float, normalize
from dasuite.lazy import lazy_import
from dasuite.schema_base import Section

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")


class FDAConfig(Section):
    """``data.fda``: FDA on every source batch: each source image takes a random target image's low-frequency
    amplitude (a centred window of half-size ``b = floor(min(H, W) * beta)`` frequencies) and keeps its own phase."""

    beta: float = Field(0.01, gt=0, le=0.5)
    """Half-size of the swapped low-frequency window as a fraction of the crop's min(H, W) (FDA: 0.01 at 1024x512)."""
    p: float = Field(1.0, ge=0, le=1)
    """Probability per source image of being translated."""
    target_role: Literal["target"] = "target"
    """Data role whose augmented images give the target amplitudes."""


def low_freq_half_size(height: int, width: int, beta: float) -> int:
    """``b = floor(min(height, width) * beta)`` (a 1e-9 tolerance keeps e.g. 100 * 0.29 at 29, not 28)."""
    return math.floor(min(height, width) * beta + 1e-9)


def low_freq_mask(height: int, width: int, beta: float, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool ``height x width`` mask in the unshifted ``fft2`` layout: True where ``|k_y| <= b`` and ``|k_x| <= b``
    (integer frequencies, ``b`` from ``low_freq_half_size``); ``fftshift`` of it is the centred square."""
    b = low_freq_half_size(height, width, beta)
    k_y = torch.fft.fftfreq(height, d=1.0 / height, device=device).abs()
    k_x = torch.fft.fftfreq(width, d=1.0 / width, device=device).abs()
    return (k_y[:, None] <= b) & (k_x[None, :] <= b)


def _low_columns(images: torch.Tensor, columns: int) -> torch.Tensor:
    """The ``rfft2`` spectrum of float ...xHxW images restricted to its first ``columns`` columns (k_x < columns):
    ``rfft`` along W, then ``fft`` along H of those columns only."""
    return torch.fft.fft(torch.fft.rfft(images, dim=-1)[..., :columns], dim=-2)


def fda_amplitude_swap(source: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """The unclamped FDA core on pixel images, pair by pair: ``source``, ``target`` ...xCxHxW of one shape ->
    float32 ...xCxHxW (formula in the module docstring; values may leave the pixel range).

    Only the window's columns of the spectra are computed: ``x' = x_s + irfft2(D)`` with ``D`` the change of the
    source spectrum, ``(A_t - A_s) exp(i P_s)`` inside the window and 0 elsewhere (``irfft2`` = ``ifft`` along H,
    then ``irfft`` along W of the zero-padded columns), which is the formula by linearity of the inverse FFT."""
    if source.shape != target.shape:
        raise ValueError(f"fda_amplitude_swap needs equal shapes, got {tuple(source.shape)} (source) and "
                         f"{tuple(target.shape)} (target)")
    height, width = source.shape[-2:]
    columns = min(low_freq_half_size(height, width, beta), width // 2) + 1
    with torch.autocast(device_type=source.device.type, enabled=False):
        source = source.float()
        low_s, low_t = _low_columns(source, columns), _low_columns(target.float(), columns)
        window = low_freq_mask(height, width, beta, source.device)[:, :columns]
        change = torch.where(window, torch.polar(low_t.abs(), low_s.angle()) - low_s, 0)
        change = F.pad(torch.fft.ifft(change, dim=-2), (0, width // 2 + 1 - columns))
        return source + torch.fft.irfft(change, n=width, dim=-1)


def fda_swap(
    source: torch.Tensor, target: torch.Tensor, beta: float, p: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """FDA-translate normalised source images with normalised target images (both as ``DeviceAugment`` returns
    them): source Bx3xHxW, target B'x3xH'xW' -> normalised float32 Bx3xHxW.

    A target of another size is resized bilinearly to HxW; source image i is paired with target
    ``perm[i % B']`` of a random permutation ``perm`` of the target batch and translated with probability ``p``
    (the others are returned unchanged). The swap runs on 0-255 pixels and is clamped to that range.
    ``generator``: optional, on the images' device (default: torch's global generator there)."""
    batch, _, height, width = source.shape
    device = source.device
    with torch.autocast(device_type=device.type, enabled=False):
        target_px = denormalize_float(target) * 255.0
        if target_px.shape[-2:] != (height, width):
            target_px = F.interpolate(target_px, size=(height, width), mode="bilinear", align_corners=False)
        order = torch.randperm(target_px.shape[0], generator=generator, device=device)
        pairs = order[torch.arange(batch, device=device) % target_px.shape[0]]
        apply = torch.rand(batch, generator=generator, device=device) < p
        swapped = fda_amplitude_swap(denormalize_float(source) * 255.0, target_px[pairs], beta).clamp(0, 255)
        return torch.where(apply.view(batch, 1, 1, 1), normalize(swapped), source.float())


def fda_roles(domains: tuple[str, ...], fda: Optional[FDAConfig]) -> tuple[str, ...]:
    """The data roles the engine draws every step: the method's ``domains`` plus FDA's target role if needed."""
    if fda is None or fda.target_role in domains:
        return domains
    return (*domains, fda.target_role)


def apply_fda(batches: dict[str, dict], fda: Optional[FDAConfig], domains: tuple[str, ...]) -> dict[str, dict]:
    """The batches a method sees: ``source`` images FDA-translated with the target role's images (labels and names
    unchanged), other roles untouched, restricted to the method's ``domains``. Identity when ``fda`` is None."""
    if fda is None:
        return batches
    source = batches["source"]
    translated = {**source, "image": fda_swap(source["image"], batches[fda.target_role]["image"], fda.beta, fda.p)}
    return {role: translated if role == "source" else batches[role] for role in domains}
