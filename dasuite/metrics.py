"""Segmentation metrics: one confusion matrix on the device, every figure derived from it.

Conventions (K classes, matrix ``M`` of shape KxK, int64, rows = ground truth, columns = prediction):

- ``TP_i = M[i, i]``, ``GT_i = sum_j M[i, j]`` (label pixels of class i), ``PR_i = sum_j M[j, i]``
  (predicted pixels of class i), ``N = sum M`` (scored pixels).
- ``IoU_i = TP_i / (GT_i + PR_i - TP_i)``. A class absent from both label and prediction has a 0/0 IoU:
  NaN, excluded from every mean. A class absent from the label but predicted somewhere has IoU 0
  (its false positives are real errors), so it does lower mIoU.
- ``Acc_i = TP_i / GT_i`` (per-class pixel accuracy, recall): NaN when the class is absent from the label,
  whatever the prediction.
- ``mIoU = nanmean(IoU)``, ``mAcc = nanmean(Acc)`` (mPA), ``aAcc = trace(M) / N`` (overall pixel accuracy),
  ``fwIoU = sum_{i: GT_i > 0} (GT_i / N) * IoU_i``. All are fractions in 0..1; NaN when undefined
  (no class scored, or N = 0).

Pixels whose label is ``ignore_index`` or outside ``[0, K)`` are not scored. Predictions are expected in
``[0, K)`` (an argmax always is); a pixel whose prediction is outside that range is dropped rather than
written into a neighbouring cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import torch
from torch import Tensor

from dasuite.constants import IGNORE_INDEX

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["ConfusionMatrix", "SegMetrics", "compute_metrics", "reduce_matrix"]


class _Reducer(Protocol):
    def reduce(self, tensor: Tensor, reduction: str = ...) -> Tensor: ...


def _clamped_index(x: Tensor, num_classes: int) -> Tensor:
    """int64 copy of ``x`` with every value outside ``[0, K)`` moved to -1 or K (the two "invalid" slots)."""
    return x.clamp(-1, num_classes) if x.dtype == torch.int64 else x.to(torch.int64).clamp_(-1, num_classes)


class ConfusionMatrix:
    """KxK pixel confusion matrix (rows = ground truth, columns = prediction), accumulated on ``device``.

    ``update`` costs one ``torch.bincount`` over the batch and no Python loop over classes or images.
    The count of each (label, prediction) pair is exact in int64.

    Distributed evaluation: each process accumulates its own shard, then ``reduce`` sums the matrices with one
    all-reduce. The sum is exact only if every sample is fed to exactly one process once: the caller must not
    feed the duplicates a distributed sampler pads the last batch with (shard without padding, or trim them
    with ``accelerator.gather_for_metrics`` before updating).
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @property
    def matrix(self) -> Tensor:
        """The accumulated KxK int64 counts (a live view: clone it to keep a snapshot)."""
        return self._matrix

    @property
    def device(self) -> torch.device:
        return self._matrix.device

    def reset(self) -> None:
        """Zero the counts (start of a new evaluation)."""
        self._matrix.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` are integer tensors of the same shape (e.g. BxHxW class indices).

        Both are clamped to ``[-1, K]`` so the invalid values share two border slots; the pair index
        ``(t + 1) * (K + 2) + (p + 1)`` is counted by one bincount of length ``(K + 2)^2`` whose inner KxK block
        is the update. This avoids boolean indexing (a device-to-host sync) and needs two temporaries.
        (On CUDA, ``torch.bincount`` itself reads the input's min/max back to size its output; that is the only
        sync and it is inside PyTorch.)
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        for name, x in (("pred", pred), ("target", target)):
            if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
                raise TypeError(f"{name} must hold integer class indices, got {x.dtype} (take the argmax of logits)")
            if x.device != self.device:
                raise ValueError(f"{name} is on {x.device} but the confusion matrix is on {self.device}")
        k = self.num_classes
        t = _clamped_index(target, k)
        if 0 <= self.ignore_index < k:  # an ignore value inside the class range is not caught by the clamp
            t.masked_fill_(target == self.ignore_index, -1)
        pair = _clamped_index(pred, k).add_(k + 3).add_(t, alpha=k + 2)  # (t + 1) * (K + 2) + (p + 1) >= 0
        counts = torch.bincount(pair.reshape(-1), minlength=(k + 2) ** 2)
        self._matrix += counts.view(k + 2, k + 2)[1 : k + 1, 1 : k + 1]

    def merge(self, other: Tensor | ConfusionMatrix) -> None:
        """Add another KxK count matrix (e.g. one computed elsewhere, or a checkpointed partial evaluation)."""
        other_matrix = other.matrix if isinstance(other, ConfusionMatrix) else other
        if other_matrix.shape != self._matrix.shape:
            raise ValueError(f"cannot merge a {tuple(other_matrix.shape)} matrix into a {tuple(self._matrix.shape)}")
        self._matrix += other_matrix.to(device=self.device, dtype=torch.int64)

    def reduce(self, accelerator: Accelerator | _Reducer) -> Tensor:
        """Sum of this matrix over all processes (see ``reduce_matrix``); this object is left unchanged."""
        return reduce_matrix(self._matrix, accelerator)

    def compute(self) -> SegMetrics:
        """Metrics of the local counts (call ``compute_metrics(cm.reduce(accelerator))`` in a distributed run)."""
        return compute_metrics(self._matrix)


def reduce_matrix(matrix: Tensor, accelerator: Accelerator | _Reducer) -> Tensor:
    """Sum a count matrix across processes with ONE all-reduce; returns a new tensor, ``matrix`` is untouched.

    Every process must call it (it is a collective). Exact only if each sample was counted on one process once
    (see ``ConfusionMatrix``). With a single process it returns a copy.
    """
    return accelerator.reduce(matrix, "sum")


@dataclass(frozen=True, eq=False)
class SegMetrics:
    """Figures derived from one confusion matrix. Per-class values are float64 CPU tensors of length K,
    NaN where undefined; scalars are floats in 0..1, NaN where undefined (see the module docstring)."""

    iou: Tensor
    acc: Tensor
    miou: float
    macc: float
    aacc: float
    fwiou: float

    @property
    def num_classes(self) -> int:
        return self.iou.numel()

    def to_json(
        self,
        class_names: Sequence[str],
        mean_loss: float | None = None,
        sec_per_image: float | None = None,
        num_images: int | None = None,
    ) -> dict:
        """JSON-ready dict (NaN -> None), the record written to ``metrics.jsonl`` and read by the tables::

            {"mIoU", "mAcc", "aAcc", "fwIoU": float 0..1 | None,
             "iou": {class name: float | None}, "acc": {class name: float | None},
             "mean_loss": float | None, "sec_per_image": float | None, "num_images": int | None}
        """
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names given for {self.num_classes} classes")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class names must be unique, got {list(class_names)}")
        return {
            "mIoU": _json_float(self.miou),
            "mAcc": _json_float(self.macc),
            "aAcc": _json_float(self.aacc),
            "fwIoU": _json_float(self.fwiou),
            "iou": {name: _json_float(v) for name, v in zip(class_names, self.iou.tolist())},
            "acc": {name: _json_float(v) for name, v in zip(class_names, self.acc.tolist())},
            "mean_loss": _json_float(mean_loss),
            "sec_per_image": _json_float(sec_per_image),
            "num_images": None if num_images is None else int(num_images),
        }


def _json_float(value: float | Tensor | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _nanmean(x: Tensor) -> float:
    """Mean over the non-NaN entries; NaN (not a warning) when there are none."""
    defined = ~torch.isnan(x)
    return float(x[defined].mean()) if bool(defined.any()) else math.nan


def compute_metrics(matrix: Tensor) -> SegMetrics:
    """Per-class IoU/Acc and mIoU, mAcc, aAcc, fwIoU from a KxK count matrix (rows = label, cols = prediction).

    Runs once per evaluation, on the CPU in float64 (this reads the matrix back to the host).
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square KxK confusion matrix, got shape {tuple(matrix.shape)}")
    m = matrix.detach().to("cpu", torch.float64)
    tp = m.diagonal()
    gt = m.sum(dim=1)
    pr = m.sum(dim=0)
    total = m.sum()
    union = gt + pr - tp
    nan = torch.tensor(math.nan, dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    if total > 0:
        aacc = float(tp.sum() / total)
        present = gt > 0  # IoU is defined wherever the class is in the label
        fwiou = float((gt[present] / total * iou[present]).sum())
    else:
        aacc = fwiou = math.nan
    return SegMetrics(iou=iou, acc=acc, miou=_nanmean(iou), macc=_nanmean(acc), aacc=aacc, fwiou=fwiou)
