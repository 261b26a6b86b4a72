"""Knowledge-distillation losses between a student and a (detached) teacher: ``kl``, ``at``, ``sp``, ``cwd``.

Every function takes student tensors first, teacher tensors second, computes in float32 (also under autocast) and
returns a scalar. Reductions are stated in each docstring (docs/kd.md). Spatial sizes must
already agree where the formula compares positions (``kl``, ``cwd``); ``at`` resizes the teacher's attention map
itself; ``sp`` compares batch Gram matrices, so sizes and channel counts may differ.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Pixel-wise KL(teacher || student) with temperature, averaged per pixel (Hinton et al. 2015, per pixel).

    ``L = T^2 / N * sum_{b,h,w} sum_k p_T[k] (log p_T[k] - log p_S[k])`` with ``p = softmax(z / T)`` over the class
    dim of BxKxHxW logits and N = B*H*W, or N = number of pixels where ``valid`` (BxHxW bool/0-1) is set (then only
    those pixels are summed). This is *not* ``F.kl_div(reduction="batchmean")`` on 4-D tensors, which divides by B
    alone (a per-image sum over pixels).
    """
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    per_pixel = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=1)  # B x H x W
    scale = temperature**2
    if valid is None:
        return per_pixel.mean() * scale
    valid = valid.to(per_pixel.dtype)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1) * scale


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Activation-based spatial attention ``a = mean_c |F_c|^p`` of BxCxHxW features -> Bx1xHxW (float32)."""
    return features.float().abs().pow(p).mean(dim=1, keepdim=True)


def at_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017).

    ``q(F) = vec(a(F)) / ||vec(a(F))||_2`` per sample (``a`` = ``attention_map``, flattened over H*W);
    ``L = mean_{b, i} (q_S[b, i] - q_T[b, i])^2`` over B*H*W. Channel counts may differ; when the spatial sizes
    differ the teacher's map is resized (bilinear) to the student's before normalisation.
    """
    a_s = attention_map(student_features, p)
    a_t = attention_map(teacher_features, p)
    if a_t.shape[-2:] != a_s.shape[-2:]:
        a_t = F.interpolate(a_t, size=a_s.shape[-2:], mode="bilinear", align_corners=False)
    q_s = F.normalize(a_s.flatten(1), dim=1)
    q_t = F.normalize(a_t.flatten(1), dim=1)
    return (q_s - q_t).pow(2).mean()


def similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """Row-normalised batch Gram matrix ``G~ = normalize_rows(Q Q^T)`` of Q = features flattened to B x (C*H*W)."""
    flat = features.float().flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def sp_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): ``L = ||G~_S - G~_T||_F^2 / B^2``.

    ``G~`` = ``similarity_matrix`` (B x B), so channel counts and spatial sizes of the two tensors may differ.
    """
    batch = student_features.shape[0]
    diff = similarity_matrix(student_features) - similarity_matrix(teacher_features)
    return diff.pow(2).sum() / batch**2


def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021) of BxCxHxW maps (logits or features, same shape).

    Per channel, ``phi(y_c) = softmax(y_c / T)`` over the H*W positions;
    ``L = T^2 / (B*C) * sum_{b,c} sum_i phi_T[b,c,i] (log phi_T[b,c,i] - log phi_S[b,c,i])``.
    """
    log_s = F.log_softmax(student.float().flatten(2) / temperature, dim=2)
    log_t = F.log_softmax(teacher.float().flatten(2) / temperature, dim=2)
    per_channel = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=2)  # B x C
    return per_channel.mean() * temperature**2
