"""The dataset contract shared by every dataset, method and the engine.

A dataset item is ``{"image": uint8 tensor 3xHxW, "label": int64 tensor HxW (255 = ignore), "name": str}``.
Unlabelled datasets omit ``label``. Decoding and the optional fixed resize happen here (on the CPU, in
DataLoader workers); all random augmentation happens later, batched on the device (``augment.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import Field, field_validator

from dasuite.data.augment import AugmentConfig
from dasuite.data.labels import ClassTable
from dasuite.errors import DasuiteError
from dasuite.registry import DATASETS
from dasuite.schema_base import Section

__all__ = ["DATASETS", "DatasetConfig", "SegDataset", "resolve_root"]


class DatasetConfig(Section):
    """Fields every dataset entry has; each dataset subclasses this with ``name: Literal[...]`` and its options.

    ``root`` may use environment variables (``$DASUITE_DATA/camvid``); ``resize`` is (width, height) and, when
    unset, falls back to ``data.resize``; ``augment`` is the device augmentation used when the entry is trained on
    (ignored for evaluation entries).
    """

    name: str
    """Selects this dataset (``dasuite list datasets``)."""
    root: Optional[str] = None
    """Dataset folder; ``$VARS`` and ``~`` are expanded."""
    split: str = "train"
    """Which split to read (``folder``: the value of ``{split}`` in its folders)."""
    resize: Optional[tuple[int, int]] = None
    """Fixed (width, height) at decode time (evaluation labels keep their size); null = ``data.resize``."""
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    """Device augmentation used when this entry is trained on; ignored for ``val`` / ``test``."""

    @field_validator("resize")
    @classmethod
    def _positive_size(cls, v: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
        if v is not None and (v[0] <= 0 or v[1] <= 0):
            raise ValueError(f"resize must be (width, height) with positive values, got {list(v)}")
        return v


_DATA_HELP = "docs/datasets.md (experiments/toy/*.yaml run with no data at all)"


def resolve_root(root: Optional[str], dataset: str) -> Path:
    """Expand ``$VARS`` and ``~`` in a dataset root; a root that is unset or still names an unset variable is an
    error naming the dataset and the variable to set."""
    if root is None:
        raise DasuiteError(f"dataset {dataset!r}: no root given; set data.<entry>.root or DASUITE_DATA")
    expanded = os.path.expanduser(os.path.expandvars(root))
    if "$" in expanded:
        raise DasuiteError(
            f"dataset {dataset!r}: root {root!r} uses an unset environment variable; "
            f"export it (e.g. DASUITE_DATA=/path/to/data) or set the root explicitly; layouts and downloads: "
            f"{_DATA_HELP}"
        )
    path = Path(expanded)
    if not path.is_dir():
        raise DasuiteError(f"dataset {dataset!r}: root directory {str(path)!r} does not exist (from {root!r}); "
                           f"layouts and downloads: {_DATA_HELP}")
    return path


class SegDataset:
    """Base class (a map-style dataset for ``torch.utils.data.DataLoader``): subclasses are registered with
    ``@DATASETS.register("name", config=TheirConfig)``, set ``classes`` and implement ``__len__`` and
    ``__getitem__`` per the contract."""

    classes: ClassTable
    #: (width, height) images are resized to at decode time, or None.
    resize: Optional[tuple[int, int]] = None
    #: False for evaluation: labels stay at their stored resolution (logits are upsampled to it).
    resize_labels: bool = True

    def __init__(self, cfg: DatasetConfig) -> None:
        self.cfg = cfg

    @property
    def label_size(self) -> Optional[tuple[int, int]]:
        """The (width, height) labels are resized to, or None to keep their stored resolution."""
        return self.resize if self.resize_labels else None

    @property
    def num_classes(self) -> int:
        return len(self.classes.names)

    def raw_pair(self, index: int) -> tuple[np.ndarray, Optional[np.ndarray], str]:
        """Item ``index`` as numpy *before* any fixed resize: (image uint8 HxWx3, label HxW train ids or None, name).

        ``dasuite data check`` uses it to compare image and label sizes as stored. This default converts
        ``self[index]``; datasets that resize at decode time override it to return the file-resolution arrays.
        """
        item = self[index]
        label = item.get("label")
        return item["image"].permute(1, 2, 0).numpy(), None if label is None else label.numpy(), item["name"]
