"""``dasuite data check``: read every item of a dataset once and report what would break training.

Per item (at the stored resolution, via ``SegDataset.raw_pair``): files that cannot be read, label values outside
``[0, num_classes)`` and 255, image/label size mismatches, the image size, and per-class pixel counts. Items are
read in DataLoader workers; only small per-item summaries travel back, an unreadable item included (the check
carries on and lists it).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from torch.utils.data import DataLoader, Dataset

from dasuite.data.base import SegDataset
from dasuite.data.labels import IGNORE_INDEX
from dasuite.errors import DasuiteError, one_line
from dasuite.procs import worker_init

MAX_LISTED = 5  # files named per problem in the report


@dataclass
class DataCheckReport:
    """Summary of one dataset; sizes are (width, height); ``bad_values`` maps a value to the files holding it."""

    dataset: str
    split: str
    num_items: int
    class_names: tuple[str, ...]
    labelled: bool = True
    bad_values: dict[int, list[str]] = field(default_factory=dict)
    size_mismatches: list[tuple[str, tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    image_sizes: Counter = field(default_factory=Counter)
    class_pixels: list[int] = field(default_factory=list)
    ignore_pixels: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.num_items > 0 and not self.bad_values and not self.size_mismatches and not self.unreadable

    @property
    def class_frequency(self) -> list[float]:
        """Pixel frequency of each class among the non-ignored pixels."""
        total = sum(self.class_pixels)
        return [c / total if total else 0.0 for c in self.class_pixels]

    def format(self) -> str:
        k = len(self.class_names)
        lines = [f"{self.dataset} ({self.split}): {self.num_items} items, {k} classes, read in {self.seconds:.1f} s"]
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.image_sizes.most_common())
        lines.append(f"image sizes WxH (count): {sizes or 'none'}")
        if self.num_items == 0:
            lines.append("PROBLEM: the dataset is empty")
        if self.unreadable:
            lines.append(f"PROBLEM: {len(self.unreadable)} items cannot be read:")
            lines.extend(f"  {name}: {reason}" for name, reason in self.unreadable)
        if not self.labelled:
            lines.append("labels: none (unlabelled dataset)")
            return "\n".join(lines)
        if self.bad_values:
            lines.append(f"PROBLEM: label values outside 0..{k - 1} and {IGNORE_INDEX}:")
            for value, files in sorted(self.bad_values.items()):
                lines.append(f"  value {value}: in {_listing(files)}")
        else:
            lines.append(f"label values: OK (0..{k - 1} and {IGNORE_INDEX})")
        if self.size_mismatches:
            lines.append(f"PROBLEM: {len(self.size_mismatches)} items whose label size differs from the image size:")
            for name, img, lab in self.size_mismatches[:MAX_LISTED]:
                lines.append(f"  {name}: image {img[0]}x{img[1]}, label {lab[0]}x{lab[1]}")
        else:
            lines.append("image/label sizes: OK (equal for every item)")
        total = sum(self.class_pixels) + self.ignore_pixels
        lines.append(f"class pixel frequency (ignore = {self.ignore_pixels / max(total, 1):.1%} of all pixels):")
        width = max(len(n) for n in self.class_names)
        for name, freq in zip(self.class_names, self.class_frequency):
            lines.append(f"  {name:<{width}}  {freq:.4f}")
        return "\n".join(lines)


def _listing(files: list[str]) -> str:
    shown = ", ".join(files[:MAX_LISTED])
    return f"{len(files)} files ({shown}{', ...' if len(files) > MAX_LISTED else ''})"


class _ItemSummaries(Dataset):
    """Per item: (name, image (w, h), label (w, h) or None, label values, their pixel counts)."""

    def __init__(self, dataset: SegDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        """(name, image size, label size, values, counts, None), or (name, None, ..., reason) when unreadable."""
        try:
            image, label, name = self.dataset.raw_pair(index)
        except (DasuiteError, OSError, ValueError) as err:
            names = getattr(self.dataset, "names", None)
            name = names[index] if isinstance(names, list) and index < len(names) else f"item {index}"
            return name, None, None, None, None, one_line(err)
        if label is None:
            return name, (image.shape[1], image.shape[0]), None, None, None, None
        flat = label.astype(np.int64).ravel()
        if flat.size and flat.min() >= 0:
            counts = np.bincount(flat)
            values = np.flatnonzero(counts)
            counts = counts[values]
        else:
            values, counts = np.unique(flat, return_counts=True)
        return name, (image.shape[1], image.shape[0]), (label.shape[1], label.shape[0]), values, counts, None


def _single(batch: list) -> tuple:
    return batch[0]


def check_dataset(dataset: SegDataset, num_workers: Optional[int] = None) -> DataCheckReport:
    """Read every item of ``dataset`` (``num_workers`` defaults to min(4, CPUs)) and summarise it."""
    start = time.perf_counter()
    workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
    k = dataset.num_classes
    cfg = getattr(dataset, "cfg", None)
    report = DataCheckReport(
        dataset=getattr(cfg, "name", type(dataset).__name__), split=str(getattr(cfg, "split", "")),
        num_items=len(dataset), class_names=tuple(dataset.classes.names), class_pixels=[0] * k,
    )
    pixels = np.zeros(k, np.int64)
    bad: dict[int, list[str]] = {}
    loader = DataLoader(_ItemSummaries(dataset), batch_size=1, num_workers=workers, collate_fn=_single,
                        worker_init_fn=worker_init if workers else None)
    for name, image_size, label_size, values, counts, unreadable in loader:
        if unreadable is not None:
            report.unreadable.append((name, unreadable))
            continue
        report.image_sizes[image_size] += 1
        if label_size is None:
            report.labelled = False
            continue
        if label_size != image_size:
            report.size_mismatches.append((name, image_size, label_size))
        valid = (values >= 0) & (values < k)
        np.add.at(pixels, values[valid], counts[valid])
        report.ignore_pixels += int(counts[values == IGNORE_INDEX].sum())
        for value in values[~valid & (values != IGNORE_INDEX)].tolist():
            bad.setdefault(int(value), []).append(name)
    report.bad_values = bad
    report.class_pixels = pixels.tolist()
    report.seconds = time.perf_counter() - start
    return report


def require_labels(dataset: SegDataset, where: str, samples: int = 16) -> None:
    """Raise when every label pixel of up to ``samples`` items spread over ``dataset`` is ignore (255) after
    decoding: a label encoding or ``label_map`` that matches none of the files' raw values trains on nothing and
    evaluates to ``null``. Unlabelled datasets pass. ``where`` names the config key (``data.source``)."""
    n = len(dataset)
    if n == 0:
        return
    picks = sorted({round(i * (n - 1) / max(samples - 1, 1)) for i in range(min(samples, n))})
    for index in picks:
        label = dataset[index].get("label")
        if label is None or (label != IGNORE_INDEX).any():
            return
    cfg = getattr(dataset, "cfg", None)
    mapping = getattr(cfg, "label_map", None)
    raw_values = _raw_values(dataset, picks[:4])
    seen = f"; raw values in {len(picks[:4])} of its label files: {raw_values}" if raw_values else ""
    how = (f"its label_map {mapping} maps none of them to a class" if mapping is not None
           else f"the {getattr(cfg, 'name', type(dataset).__name__)} label encoding maps none of them to a class")
    raise DasuiteError(f"{where}: every label pixel of the {len(picks)} items checked is ignore (255) after "
                       f"decoding{seen}: {how}; fix the labels' encoding (label_map, classes, ignore_index) or the "
                       f"files (dasuite data check shows the label values)")


def _raw_values(dataset: SegDataset, picks: list[int]) -> list[int]:
    raw_label_at = getattr(dataset, "raw_label_at", None)
    if raw_label_at is None:
        return []
    values: set[int] = set()
    for index in picks:
        raw = raw_label_at(index)
        if raw is not None:
            values.update(int(v) for v in np.unique(raw)[:32])
    return sorted(values)[:32]
