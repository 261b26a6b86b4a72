"""Frequency KD: split a feature map into an FFT low-pass part and the rest, and distil each part.

``low = irfft2(M * rfft2(x))`` with M an ideal 0/1 box around DC, ``high = x - low``. The box keeps the spatial
frequencies k (integer, k in -n/2..n/2-1 along an axis of n samples) with ``|k| <= floor(ratio * n / 2)`` along
*each* axis: ``ratio`` is the fraction kept **per side** (0.2 keeps about 0.2 x 0.2 = 4% of the spectrum's area;
keeping 20% of the area would be ratio = sqrt(0.2) ~ 0.447). DC is always kept; ratio 1 keeps everything. The box
is symmetric under k -> -k, so ``low`` is exactly real, and with a 0/1 mask the split is orthogonal (Parseval):
``||d||^2 = ||low(d)||^2 + ||high(d)||^2`` for any difference d, hence MSE(low) + MSE(high) = MSE(full).
The FFT always runs in float32 with autocast disabled (cuFFT fp16 only handles power-of-two sizes).
"""

from __future__ import annotations

from typing import Literal

from dasuite.lazy import lazy_import

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")

HighMode = Literal["kd", "l1", "sparsity", "none"]
HIGH_MODES: tuple[str, ...] = ("kd", "l1", "sparsity", "none")


def lowpass_mask(height: int, width: int, ratio: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Float 0/1 mask (height x (width//2 + 1)) on the ``rfft2`` spectrum layout: 1 where |k_y| <= floor(ratio*H/2)
    and |k_x| <= floor(ratio*W/2) (integer frequencies, see the module docstring)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"low-pass ratio must be in (0, 1], got {ratio!r}")
    k_y = torch.fft.fftfreq(height, d=1.0 / height, device=device).abs()
    k_x = torch.fft.rfftfreq(width, d=1.0 / width, device=device)
    keep_y = k_y <= int(ratio * height / 2)
    keep_x = k_x <= int(ratio * width / 2)
    return (keep_y[:, None] & keep_x[None, :]).float()


def frequency_split(x: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """BxCxHxW -> (low, high), both float32, ``low + high == x.float()`` (see the module docstring)."""
    x = x.float()
    height, width = x.shape[-2:]
    with torch.autocast(device_type=x.device.type, enabled=False):
        spectrum = torch.fft.rfft2(x, dim=(-2, -1))
        low = torch.fft.irfft2(spectrum * lowpass_mask(height, width, ratio, x.device), s=(height, width), dim=(-2, -1))
    return low, x - low


def freq_loss(
    student_features: torch.Tensor, teacher_features: torch.Tensor, ratio: float = 0.2, high: HighMode = "l1"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequency KD terms ``(L_low, L_high)`` of same-shape BxCxHxW features (project the student first if needed).

    ``L_low = mean (low_S - low_T)^2``; ``L_high`` by mode: ``kd``: ``mean (high_S - high_T)^2``; ``l1``:
    ``mean |high_S - high_T|``; ``sparsity``: ``mean |high_S|`` (the teacher's high part is unused); ``none``: 0.
    Means run over all B*C*H*W elements. The method combines them as ``weight * (L_low + high_weight * L_high)``.
    """
    if student_features.shape != teacher_features.shape:
        raise ValueError(f"freq_loss needs equal shapes, got {tuple(student_features.shape)} (student) and "
                         f"{tuple(teacher_features.shape)} (teacher)")
    low_s, high_s = frequency_split(student_features, ratio)
    low_t, high_t = frequency_split(teacher_features, ratio)
    low_term = F.mse_loss(low_s, low_t)
    if high == "kd":
        high_term = F.mse_loss(high_s, high_t)
    elif high == "l1":
        high_term = F.l1_loss(high_s, high_t)
    elif high == "sparsity":
        high_term = high_s.abs().mean()
    elif high == "none":
        high_term = low_term.new_zeros(())
    else:
        raise ValueError(f"unknown high-frequency mode {high!r}; expected one of {', '.join(HIGH_MODES)}")
    return low_term, high_term
