"""Datasets (registered by name in ``DATASETS``), device augmentation, loaders and the data check.

Importing this package registers every built-in dataset.
"""

from __future__ import annotations

from typing import Optional

from dasuite.data.base import DATASETS, DatasetConfig, SegDataset
from dasuite.data.camvid import CamVidConfig, CamVidDataset
from dasuite.data.cityscapes import CityscapesConfig, CityscapesDataset
from dasuite.data.folder import FolderConfig, FolderDataset
from dasuite.data.gta5 import GTA5Config, GTA5Dataset
from dasuite.data.hf import HFConfig, HFDataset
from dasuite.data.pairs import PairDataset
from dasuite.data.synthia import SynthiaConfig, SynthiaDataset
from dasuite.data.toy import ToyConfig, ToyDataset
from dasuite.data.translated import TranslatedConfig, TranslatedDataset

__all__ = [
    "DATASETS", "DatasetConfig", "SegDataset", "PairDataset", "CamVidConfig", "CamVidDataset", "CityscapesConfig",
    "CityscapesDataset", "FolderConfig", "FolderDataset", "GTA5Config", "GTA5Dataset", "HFConfig", "HFDataset",
    "SynthiaConfig", "SynthiaDataset", "ToyConfig", "ToyDataset", "TranslatedConfig", "TranslatedDataset",
    "build_dataset",
]


def build_dataset(cfg: DatasetConfig, default_resize: Optional[tuple[int, int]] = None,
                  resize_labels: bool = True) -> SegDataset:
    """Instantiate the dataset named by ``cfg.name``; the effective resize is ``cfg.resize`` or ``default_resize``
    (the experiment-wide ``data.resize``), as (width, height). With ``resize_labels=False`` (evaluation) only the
    images are resized and labels keep their stored resolution, so metrics are computed at full label resolution."""
    cls, config_class = DATASETS.get(cfg.name), DATASETS.config(cfg.name)
    if not isinstance(cfg, config_class):
        cfg = config_class.model_validate(cfg.model_dump(exclude_unset=True))
    resize = cfg.resize if cfg.resize is not None else default_resize
    dataset = cls(cfg, tuple(resize) if resize is not None else None)
    dataset.resize_labels = resize_labels
    return dataset
