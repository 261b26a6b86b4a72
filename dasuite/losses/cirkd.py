"""CIRKD (Yang et al., CVPR'22, "Cross-Image Relational Knowledge Distillation for Semantic Segmentation").

Notation: student / teacher features S, T (B x C x H x W, the same H x W; channel counts may differ), ``n(.)`` = L2
normalisation over channels, tau = ``temperature``, ``KL(p || q) = sum p (log p - log q)``, ``softmax`` over the
last axis.

- Mini-batch pixel-to-pixel relation (``minibatch_loss``): for every ordered pair of images (i, j) of the batch,
  ``A^S_ij = n(S_i)^T n(S_j)`` (P x P pixel similarities, P = H*W) and ``A^T_ij`` alike;
  ``L_mb = 1/B^2 sum_{i,j} 1/P sum_p KL(softmax(A^T_ij[p] / tau) || softmax(A^S_ij[p] / tau))``.
- Memory-based contrast (``memory_losses``): per class c, queues of teacher pixel keys and region keys (the mean of
  one image's teacher pixels of class c, re-normalised); a step samples the same ``k`` slots of every class queue,
  giving a contrast set Q (K*k x D). For each labelled pixel p, ``z^T_p = n(T_p) Q^T / tau`` and
  ``z^S_p = n(E(S)_p) Q^T / tau`` (E: the trained embedding head, ``embedding_head``), and
  ``L = T_kd^2 / M sum_p KL(softmax(z^T_p / T_kd) || softmax(z^S_p / T_kd))`` over the M labelled pixels, once with
  the pixel queue (``L_pixel``) and once with the region queue (``L_region``).
- Queues (``select_keys`` then ``enqueue``): per image and class present, the region key and up to
  ``pixels_per_image`` random teacher pixels are written at the class's pointer, image by image in batch order
  (after gathering every process's keys); pointer rules as CIRKD's (docs/kd.md).

Every function computes in float32; labels are resized (nearest) to the feature size by the caller, 255 = ignore.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dasuite.constants import IGNORE_INDEX


def embedding_head(in_channels: int, out_channels: int) -> nn.Sequential:
    """CIRKD's projection head on the student feature: 1x1 conv -> BatchNorm -> ReLU -> 1x1 conv (no biases)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True), nn.Conv2d(out_channels, out_channels, 1, bias=False))


def minibatch_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.1,
                   pool: int = 1) -> torch.Tensor:
    """``L_mb`` of the module docstring; ``pool`` > 1 first average-pools both maps (kernel = stride = ``pool``,
    ceil mode; CIRKD's SegFormer script uses 2). One image i at a time against the whole batch (B x P x P)."""
    s, t = student.float(), teacher.float()
    if pool > 1:
        s = F.avg_pool2d(s, pool, pool, ceil_mode=True)
        t = F.avg_pool2d(t, pool, pool, ceil_mode=True)
    s = F.normalize(s, dim=1).flatten(2).transpose(1, 2)  # B x P x C
    t = F.normalize(t, dim=1).flatten(2).transpose(1, 2)
    batch, pixels = s.shape[:2]
    total = s.new_zeros(())
    for i in range(batch):  # image i against every image j: B x P x P relations
        total = total + _row_kl(s[i], s, t[i], t, 1.0 / temperature).sum() / pixels
    return total / batch**2


def _row_kl(s_query: torch.Tensor, s_keys: torch.Tensor, t_query: torch.Tensor, t_keys: torch.Tensor,
            scale: float) -> torch.Tensor:
    """``KL(softmax(scale * t_q t_k^T) || softmax(scale * s_q s_k^T))`` per row (query x keys^T over the last axis,
    keys broadcast over leading dims), written ``sum p_T log p_T - scale * (p_T s_k) . s_q + logsumexp(z_S)`` so
    that the student side costs one logsumexp over the big matrix (the teacher's side is detached)."""
    with torch.autocast(s_query.device.type, enabled=False):  # float32 products also under mixed precision
        with torch.no_grad():
            log_t = F.log_softmax(torch.matmul(t_query * scale, t_keys.transpose(-1, -2)), dim=-1)
            p_t = log_t.exp()
            entropy_term = torch.einsum("...k,...k->...", p_t, log_t)
        pulled = torch.matmul(p_t, s_keys)  # sum_k p_T[k] s_k (a student tensor in the mini-batch term)
        z_s = torch.matmul(s_query * scale, s_keys.transpose(-1, -2))  # the scale on the small factor
        return entropy_term - scale * (pulled * s_query).sum(-1) + torch.logsumexp(z_s, dim=-1)


def memory_losses(student_embed: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, pixel_keys: torch.Tensor,
                  region_keys: torch.Tensor, temperature: float = 0.1,
                  kd_temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_pixel, L_region)`` of the module docstring. ``student_embed``: E(S), B x D x H x W (normalised here);
    ``teacher``: B x D x H x W (normalised here); ``labels``: B x H x W; ``pixel_keys`` / ``region_keys``: the
    contrast sets (N x D, unit rows). Unlabelled pixels are masked out (no host sync); 0 when none is labelled."""
    s = F.normalize(student_embed.float(), dim=1).permute(0, 2, 3, 1).flatten(0, 2)  # BHW x D
    t = F.normalize(teacher.float(), dim=1).permute(0, 2, 3, 1).flatten(0, 2)
    valid = (labels.flatten() != IGNORE_INDEX).float()
    count = valid.sum().clamp_min(1.0)
    out = []
    for keys in (pixel_keys.float(), region_keys.float()):
        per_pixel = _row_kl(s, keys, t, keys, 1.0 / (temperature * kd_temperature))
        out.append((per_pixel * valid).sum() / count * kd_temperature**2)
    return out[0], out[1]


def select_keys(teacher: torch.Tensor, labels: torch.Tensor, num_classes: int, pixels_per_image: int,
                pixels_from: str = "class") -> dict[str, torch.Tensor]:
    """The keys one batch enqueues, per image and class: ``region`` (B x K x D, the re-normalised mean of the image's
    normalised teacher pixels of the class), ``pixel`` (B x K x m x D, m = ``pixels_per_image``; the first ``taken``
    rows are used) and ``taken`` (B x K, min(count, m); 0 = class absent). ``pixel`` rows are a uniformly random
    subset of the class's pixels (``pixels_from: class``), or, as CIRKD's code does (``cirkd_code``: it indexes the
    image's pixels with a permutation of the class's count n), of the image's first n pixels in raster order, any
    class. ``teacher``: B x D x H x W, already normalised; ``labels``: B x H x W. No host sync."""
    batch, dim = teacher.shape[:2]
    feats = teacher.float().flatten(2).transpose(1, 2)  # B x P x D
    cls = labels.flatten(1).long()
    cls = torch.where((cls >= 0) & (cls < num_classes), cls, torch.full_like(cls, num_classes))  # ignore -> K
    counts = torch.zeros(batch, num_classes + 1, dtype=torch.long, device=cls.device)
    counts.scatter_add_(1, cls, torch.ones_like(cls))
    counts = counts[:, :num_classes]
    sums = torch.zeros(batch, num_classes + 1, dim, device=feats.device)
    sums.scatter_add_(1, cls.unsqueeze(-1).expand(-1, -1, dim), feats)
    region = F.normalize(sums[:, :num_classes] / counts[..., None].clamp_min(1), dim=-1)
    # the m candidates with the smallest U[0, 1) draws (B x K x P scores, 2 = not a candidate)
    classes = torch.arange(num_classes, device=cls.device)
    if pixels_from == "class":
        candidate = cls[:, None, :] == classes[None, :, None]
    else:
        candidate = torch.arange(cls.shape[1], device=cls.device) < counts[..., None]
    scores = torch.where(candidate, torch.rand(cls.shape, device=cls.device)[:, None, :], 2.0)
    index = scores.topk(min(pixels_per_image, cls.shape[1]), dim=-1, largest=False).indices  # B x K x m'
    pixel = F.normalize(feats.gather(1, index.flatten(1)[..., None].expand(-1, -1, dim)), dim=-1)
    pixel = pixel.view(batch, num_classes, -1, dim)
    if pixel.shape[2] < pixels_per_image:
        pixel = F.pad(pixel, (0, 0, 0, pixels_per_image - pixel.shape[2]))
    return {"region": region, "pixel": pixel, "taken": counts.clamp_max(pixels_per_image)}


def enqueue(pixel_queue: torch.Tensor, pixel_ptr: torch.Tensor, region_queue: torch.Tensor,
            region_ptr: torch.Tensor, keys: dict[str, torch.Tensor]) -> None:
    """Write ``select_keys`` output into the queues in place, image by image (CIRKD's order and pointer rules).

    Queues are flat ``(K * size + 1) x D`` (row ``K * size`` takes the writes of absent classes); pointers are
    ``K`` int64. Region: class c of image b goes to slot ``ptr_c``, then ``ptr_c = (ptr_c + 1) % size``. Pixels:
    with ``n = taken[b, c]``, the rows go to ``ptr_c .. ptr_c + n - 1`` and ``ptr_c += n``, except when
    ``ptr_c + n >= size``: then to the last n slots, and ``ptr_c = 0``."""
    classes = pixel_ptr.shape[0]
    pixel_size = (pixel_queue.shape[0] - 1) // classes
    region_size = (region_queue.shape[0] - 1) // classes
    per_image = keys["pixel"].shape[2]
    base_p = torch.arange(classes, device=pixel_ptr.device) * pixel_size
    base_r = torch.arange(classes, device=region_ptr.device) * region_size
    rows = torch.arange(per_image, device=pixel_ptr.device)
    for b in range(keys["taken"].shape[0]):
        taken = keys["taken"][b]
        present = taken > 0
        region_queue[torch.where(present, base_r + region_ptr, classes * region_size)] = keys["region"][b]
        region_ptr.copy_(torch.where(present, (region_ptr + 1) % region_size, region_ptr))
        wrap = pixel_ptr + taken >= pixel_size
        start = torch.where(wrap, pixel_size - taken, pixel_ptr)
        slots = torch.where(rows < taken[:, None], (base_p + start)[:, None] + rows, classes * pixel_size)
        pixel_queue[slots.flatten()] = keys["pixel"][b].flatten(0, 1)
        pixel_ptr.copy_(torch.where(wrap, torch.zeros_like(pixel_ptr), pixel_ptr + taken))
