"""Losses on the output of a multi-resolution (HRDA) training forward, and on plain logits alike.

``multires_loss(loss_fn, output, labels, *pixel_maps)`` with ``output`` an HRDA ``MultiResOutput`` (fields
``fused``, ``detail``, ``box`` = (top, left, height, width) in input pixels, ``detail_weight`` w, ``image_size``) is

    (1 - w) * loss_fn(fused, labels, *maps) + w * loss_fn(detail, labels[box], *(m[box] for m in maps))

(HRDA's ``HRDAHead.losses`` with ``hr_loss_weight`` w and no context loss), where ``[box]`` crops the last two
dimensions; with plain logits it is ``loss_fn(output, labels, *maps)``. ``multires_seg_loss`` is it with
``seg_loss``. The output is read by its fields (losses do not import models).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from dasuite.constants import IGNORE_INDEX
from dasuite.losses.segmentation import seg_loss

__all__ = ["fused_logits", "multires_loss", "multires_seg_loss"]


def fused_logits(output: Any) -> torch.Tensor:
    """The logits a loss on whole predictions reads (e.g. a discriminator): an HRDA output's fused logits, else
    the logits themselves."""
    return output if isinstance(output, torch.Tensor) else output.fused


def multires_loss(loss_fn: Callable[..., torch.Tensor], output: Any, labels: torch.Tensor, *pixel_maps: torch.Tensor,
                  **kwargs: Any) -> torch.Tensor:
    """``loss_fn`` on the fused logits and on the detail logits with ``labels`` and every per-pixel map (e.g. the
    mean teacher's pixel weights) cropped to the detail box; module docstring. Plain logits: ``loss_fn`` itself."""
    if isinstance(output, torch.Tensor):
        return loss_fn(output, labels, *pixel_maps, **kwargs)
    if tuple(labels.shape[-2:]) != tuple(output.image_size):
        raise ValueError(f"labels of size {tuple(labels.shape[-2:])} for an HRDA output of images "
                         f"{tuple(output.image_size)}: the detail box is in image pixels, so they must match")
    top, left, height, width = output.box

    def crop(t: torch.Tensor) -> torch.Tensor:
        return t[..., top:top + height, left:left + width]

    w = output.detail_weight
    fused = loss_fn(output.fused, labels, *pixel_maps, **kwargs)
    if w == 0:
        return fused
    detail = loss_fn(output.detail, crop(labels), *(crop(m) for m in pixel_maps), **kwargs)
    return (1 - w) * fused + w * detail


def multires_seg_loss(output: Any, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                      class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``seg_loss`` (cross-entropy, labels 255 ignored) through ``multires_loss``: the drop-in for
    ``seg_loss(model(images), labels)`` that also scores HRDA training outputs."""
    return multires_loss(seg_loss, output, labels, ignore_index=ignore_index, class_weights=class_weights)
