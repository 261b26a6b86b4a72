"""Per-image class statistics of a dataset (item names and pixel counts per class), computed once and cached.

One pass reads every item as training decodes it (the entry's ``resize`` applied to image and label), in
DataLoader workers, and keeps per item its name and ``bincount(label[label < K], minlength=K)`` (255 and any other
out-of-range value are not counted). Target subsets and rare-class sampling use it. A dataset that can decode a
label without its image may offer ``label_at(index) -> (label HxW train ids at the training label size, name)``;
the pass then skips the images.

Cache: ``$DASUITE_CACHE/class_stats/`` (default ``~/.cache/dasuite/class_stats/``), one ``.npz`` per dataset
keyed by a hash of the entry's options (absolute root, split, dataset-specific keys; not ``augment``/``subset``/
``rcs``), the effective resize, the number of items and of classes; written atomically (temp file + rename), so
concurrent processes never read a partial file. A missing or unreadable file is recomputed. Delete the folder
after changing the files of a dataset in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dasuite.errors import DasuiteError
from dasuite.fileio import atomic_write
from dasuite.procs import worker_init

logger = logging.getLogger(__name__)
_VERSION = 1
_TRAINING_KEYS = {"augment", "subset", "rcs"}


@dataclass(frozen=True)
class ClassStats:
    """``names`` (N,) item names in dataset order; ``pixels`` (N, K) int64 pixel counts, or None (no labels)."""

    names: list[str]
    pixels: Optional[np.ndarray]


class _CountView(Dataset):
    """Item i -> (name, per-class pixel counts (K,) or None), so only small arrays leave the workers."""

    def __init__(self, dataset: Dataset, num_classes: int) -> None:
        self.dataset, self.num_classes = dataset, num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[str, Optional[np.ndarray]]:
        label_at = getattr(self.dataset, "label_at", None)
        if callable(label_at):
            label, name = label_at(index)
        else:
            item = self.dataset[index]
            label, name = item.get("label"), item["name"]
        if label is None:
            return name, None
        label = torch.as_tensor(label).reshape(-1).long()
        counts = torch.bincount(label[label < self.num_classes], minlength=self.num_classes)
        return name, counts.numpy().astype(np.int64)


def compute_class_stats(dataset: Dataset, num_classes: int, num_workers: int = 0, label: str = "dataset") -> ClassStats:
    """Read every item once (see the module docstring)."""
    # A private generator: iterating must not consume torch's global RNG, or a run's random stream would depend
    # on whether the statistics were cached.
    loader = DataLoader(_CountView(dataset, num_classes), batch_size=16, num_workers=num_workers,
                        collate_fn=list, shuffle=False, generator=torch.Generator().manual_seed(0),
                        worker_init_fn=worker_init if num_workers else None)
    rows = [row for batch in loader for row in batch]
    labelled = [counts is not None for _, counts in rows]
    if any(labelled) and not all(labelled):
        raise DasuiteError(f"{label}: {labelled.count(False)} of {len(rows)} items have no label")
    pixels = np.stack([c for _, c in rows]) if rows and all(labelled) else None
    return ClassStats([name for name, _ in rows], pixels)


def cache_root() -> Path:
    """``$DASUITE_CACHE`` or ``~/.cache/dasuite``."""
    return Path(os.environ.get("DASUITE_CACHE") or Path.home() / ".cache" / "dasuite").expanduser()


def stats_key(entry_options: dict, resize: Optional[tuple[int, int]], size: int, num_classes: int) -> str:
    """Hash of what determines the statistics (the entry's options minus training-only keys, resize, sizes)."""
    options = {k: v for k, v in entry_options.items() if k not in _TRAINING_KEYS}
    if options.get("root"):
        options["root"] = os.path.abspath(os.path.expanduser(os.path.expandvars(str(options["root"]))))
    blob = json.dumps({"v": _VERSION, "entry": options, "resize": resize, "size": size, "classes": num_classes},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _load(path: Path, size: int, num_classes: int) -> Optional[ClassStats]:
    try:
        with np.load(path, allow_pickle=False) as f:
            names = [str(n) for n in f["names"]]
            pixels = f["pixels"] if bool(f["labelled"]) else None
    except (OSError, KeyError, ValueError) as e:
        logger.warning("ignoring unreadable class-statistics cache %s (%s)", path, e)
        return None
    if len(names) != size or (pixels is not None and pixels.shape != (size, num_classes)):
        return None
    return ClassStats(names, pixels)


def _save(path: Path, stats: ClassStats, num_classes: int) -> None:
    pixels = stats.pixels if stats.pixels is not None else np.zeros((0, num_classes), np.int64)
    atomic_write(path, lambda f: np.savez(f, names=np.array(stats.names, dtype=str), pixels=pixels,
                                          labelled=stats.pixels is not None))


def class_stats(dataset: Dataset, num_classes: int, entry_options: dict, resize: Optional[tuple[int, int]],
                num_workers: int = 0, label: str = "dataset") -> ClassStats:
    """Cached ``compute_class_stats``; ``label`` names the dataset in log messages."""
    key = stats_key(entry_options, resize, len(dataset), num_classes)
    path = cache_root() / "class_stats" / f"{entry_options.get('name', 'dataset')}-{key}.npz"
    if path.is_file():
        cached = _load(path, len(dataset), num_classes)
        if cached is not None:
            return cached
    logger.info("%s: computing class statistics over %d items (cached at %s)", label, len(dataset), path)
    stats = compute_class_stats(dataset, num_classes, num_workers, label)
    _save(path, stats, num_classes)
    return stats
