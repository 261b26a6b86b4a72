"""Inference on full images: whole-image or sliding-window, at one or several scales, with or without horizontal flip.
One implementation for validation during training, ``dasuite eval`` and ``dasuite pseudo-label``.

Sliding window (mmseg's ``slide_inference``): windows of ``crop`` = (cw, ch) pixels every ``stride`` = (sw, sh) cover
the image; along an axis of length L there are ``max(L - c + s - 1, 0) // s + 1`` windows starting at ``i s``, the
last shifted back to end at L (a window larger than the image is the image). Each window's logits are upsampled to
the window's size and summed into an image-size map; dividing by the per-pixel window count averages the overlaps.
``window_batch`` windows (of every image in the batch) go through the network per call. A single window covering the
image is exactly whole-image inference.

Several passes (``scales`` other than ``[1.0]`` or ``flip``): the image is resized by each scale (bilinear), run
whole or sliding, flipped back when flipped, and its class probabilities ``softmax(upsample(logits, out_size))`` are
summed at the output (label) resolution; the result is ``log(mean probability)``, so argmax, softmax and cross-entropy
apply to it as to logits. Logits are upsampled per window and per pass and accumulated in place: the peak memory does
not grow with the number of scales or windows.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Optional, Sequence

import torch
import torch.nn.functional as F

from dasuite.losses.segmentation import upsample_to

Autocast = Callable[[], ContextManager[Any]]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis (module docstring); ``window`` is clipped to ``length``."""
    window = min(window, length)
    count = max(length - window + stride - 1, 0) // stride + 1
    return [max(min(i * stride + window, length) - window, 0) for i in range(count)]


def slide_logits(model: torch.nn.Module, images: torch.Tensor, crop: Sequence[int], stride: Sequence[int],
                 window_batch: int = 1, autocast: Autocast = contextlib.nullcontext) -> torch.Tensor:
    """Sliding-window logits B x K x H x W at the images' resolution, or, when one window covers the image, the
    network's own output (at its output stride) so that it equals whole-image inference exactly."""
    b, _, h, w = images.shape
    (cw, ch), (sw, sh) = crop, stride
    ch, cw = min(ch, h), min(cw, w)
    windows = [(y, x) for y in window_starts(h, ch, sh) for x in window_starts(w, cw, sw)]
    if len(windows) == 1:
        with autocast():
            return model(images)
    total: Optional[torch.Tensor] = None
    count = torch.zeros(1, 1, h, w, device=images.device)
    for y, x in windows:
        count[..., y:y + ch, x:x + cw] += 1
    for first in range(0, len(windows), window_batch):
        chunk = windows[first:first + window_batch]
        crops = torch.cat([images[:, :, y:y + ch, x:x + cw] for y, x in chunk])
        with autocast():
            out = model(crops)
        out = upsample_to(out.float(), (ch, cw))
        if total is None:
            total = torch.zeros(b, out.shape[1], h, w, device=images.device)
        for i, (y, x) in enumerate(chunk):
            total[:, :, y:y + ch, x:x + cw] += out[i * b:(i + 1) * b]
    return total / count


def predict(model: torch.nn.Module, images: torch.Tensor, out_size: Sequence[int], settings: Any = None,
            autocast: Autocast = contextlib.nullcontext) -> torch.Tensor:
    """Scores B x K x out_size of normalised images B x 3 x H x W under ``settings`` (an ``eval`` config section:
    ``mode``, ``crop``, ``stride``, ``window_batch``, ``scales``, ``flip``; None = whole, one scale, no flip): the
    upsampled float32 logits of a single pass, or ``log(mean probability)`` over several (module docstring)."""
    mode = getattr(settings, "mode", "whole")
    scales = list(getattr(settings, "scales", None) or [1.0])
    flips = [False, True] if getattr(settings, "flip", False) else [False]
    out_size = tuple(out_size)

    def run(x: torch.Tensor) -> torch.Tensor:
        if mode == "slide":
            crop = settings.crop
            return slide_logits(model, x, crop, settings.stride or default_stride(crop), settings.window_batch,
                                autocast)
        with autocast():
            return model(x)

    if len(scales) == 1 and scales[0] == 1.0 and flips == [False]:
        return upsample_to(run(images).float(), out_size)
    h, w = images.shape[-2:]
    probs: Optional[torch.Tensor] = None
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flip in flips:
            logits = run(scaled.flip(-1) if flip else scaled)
            logits = upsample_to(logits.float(), out_size)
            p = (logits.flip(-1) if flip else logits).softmax(1)
            probs = p if probs is None else probs.add_(p)
    passes = len(scales) * len(flips)
    return probs.div_(passes).clamp_min_(torch.finfo(torch.float32).tiny).log_()


def default_stride(crop: Sequence[int]) -> tuple[int, int]:
    """Three quarters of the window along each axis (SegFormer's Cityscapes setting: 1024 windows, stride 768)."""
    return max(1, crop[0] * 3 // 4), max(1, crop[1] * 3 // 4)
