"""Cityscapes (fine annotations): ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
``gtFine/<split>/<city>/*_gtFine_labelIds.png`` (ids 0..33 mapped to the 19 train ids, everything else 255) or,
with ``label_type: labelTrainIds``, the ``*_gtFine_labelTrainIds.png`` files written by cityscapesScripts.

The test split's public labels are all "unlabelled" (every pixel ignore); use ``labelled: false`` to draw any
split as unlabelled target images (items without ``label``).
"""

from __future__ import annotations

import logging
from typing import Literal, Optional

from dasuite.data.base import DATASETS, DatasetConfig, resolve_root
from dasuite.data.labels import CITYSCAPES, CITYSCAPES_LABEL_IDS, CITYSCAPES_TRAIN_IDS
from dasuite.data.pairs import PairDataset, require_dir, require_files
from dasuite.errors import DasuiteError

log = logging.getLogger(__name__)
IMAGE_SUFFIX = "_leftImg8bit.png"


class CityscapesConfig(DatasetConfig):
    """Options of the ``cityscapes`` dataset (root: the folder holding ``leftImg8bit/`` and ``gtFine/``)."""

    name: Literal["cityscapes"] = "cityscapes"
    """Selects this dataset (``dasuite list datasets``)."""
    root: str = "$DASUITE_DATA/cityscapes"
    """The folder holding ``leftImg8bit/`` and ``gtFine/``."""
    split: Literal["train", "val", "test"] = "train"
    """Split to read: 2,975 (train), 500 (val) or 1,525 (test) images; the test split's public labels are all ignore."""
    label_type: Literal["labelIds", "labelTrainIds"] = "labelIds"
    """``labelIds``: ``*_gtFine_labelIds.png`` mapped to the 19 train ids on the fly; ``labelTrainIds``: the files
    cityscapesScripts writes."""
    labelled: bool = True
    """``false``: images only (no ``gtFine/`` needed), e.g. unlabelled target images."""


@DATASETS.register("cityscapes", config=CityscapesConfig)
class CityscapesDataset(PairDataset):
    """Cityscapes fine: 2,975 train / 500 val / 1,525 test frames of 2048x1024; names are the image file names
    (``aachen_000000_000019_leftImg8bit.png``), sorted by city then frame."""

    classes = CITYSCAPES

    def __init__(self, cfg: CityscapesConfig, resize: Optional[tuple[int, int]] = None) -> None:
        super().__init__(cfg, resize)
        self.cfg: CityscapesConfig = cfg
        root = resolve_root(cfg.root, "cityscapes")
        self.image_dir = root / "leftImg8bit"
        split_dir = require_dir(self.image_dir / cfg.split, "cityscapes image folder",
                                f"leftImg8bit/{cfg.split}/<city>/*{IMAGE_SUFFIX}")
        images = sorted(split_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not images:
            raise DasuiteError(f"cityscapes image folder {str(split_dir)!r} holds no <city>/*{IMAGE_SUFFIX} files")
        self.names = [p.name for p in images]
        self.label_map = CITYSCAPES_LABEL_IDS if cfg.label_type == "labelIds" else CITYSCAPES_TRAIN_IDS
        if not cfg.labelled:
            self.files = [(p, None) for p in images]
            return
        label_dir = require_dir(root / "gtFine" / cfg.split, "cityscapes label folder",
                                f"gtFine/{cfg.split}/<city>/*_gtFine_{cfg.label_type}.png, or labelled: false")
        suffix = f"_gtFine_{cfg.label_type}.png"
        labels = [label_dir / p.parent.name / (p.name[: -len(IMAGE_SUFFIX)] + suffix) for p in images]
        if cfg.label_type == "labelTrainIds" and not labels[0].is_file():
            raise DasuiteError(
                f"cityscapes: label_type labelTrainIds but {str(labels[0])!r} does not exist; create the "
                "*_labelTrainIds.png files with cityscapesScripts (csCreateTrainIdLabelImgs) or use "
                "label_type: labelIds (mapped on the fly)"
            )
        require_files(labels, f"cityscapes {cfg.label_type} label files")
        self.files = list(zip(images, labels))
        if cfg.split == "test":
            log.warning("cityscapes test labels are not public (every pixel is ignore); "
                        "use labelled: false to draw the test images as unlabelled target data")
