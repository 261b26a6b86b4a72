"""SYNTHIA-RAND-CITYSCAPES: ``RGB/*.png`` with ``GT/LABELS/*.png`` of the same name.

Labels are 16-bit multi-channel PNGs whose first (R) channel holds the SYNTHIA class id (0..22); the second holds
an instance id. Plain PIL decoding cuts 16-bit RGB to 8 bits (keeping the high byte, which is 0 for every class
id), so labels are decoded with :func:`dasuite.data.io.read_png_samples` at full depth. Ids are mapped to the 16
Cityscapes train ids SYNTHIA shares (:data:`dasuite.data.labels.SYNTHIA_IDS`); everything else is 255. Report
SYNTHIA -> Cityscapes results over :data:`~dasuite.data.labels.SYNTHIA16` and
:data:`~dasuite.data.labels.SYNTHIA13` with :func:`~dasuite.data.labels.subset_miou`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import numpy as np
from dasuite.data.base import DATASETS, resolve_root
from dasuite.data.io import read_png_samples
from dasuite.data.labels import CITYSCAPES, SYNTHIA_IDS
from dasuite.data.pairs import PairDataset, StemListConfig, same_name_pairs

LAYOUT = "RGB/*.png and GT/LABELS/*.png"


class SynthiaConfig(StemListConfig):
    """Options of the ``synthia`` dataset (SYNTHIA-RAND-CITYSCAPES, Ros et al. CVPR'16): the whole image folder or
    the stems a ``split_file`` lists, as for gta5."""

    name: Literal["synthia"] = "synthia"
    """Selects this dataset (``dasuite list datasets``)."""
    root: str = "$DASUITE_DATA/synthia"
    """The ``RAND_CITYSCAPES`` folder (holding ``RGB/`` and ``GT/LABELS/``)."""


@DATASETS.register("synthia", config=SynthiaConfig)
class SynthiaDataset(PairDataset):
    """SYNTHIA-RAND-CITYSCAPES: 9,400 frames of 1280x760; names are the image file names (``0000000.png``)."""

    classes = CITYSCAPES
    label_map = SYNTHIA_IDS

    def __init__(self, cfg: SynthiaConfig, resize: Optional[tuple[int, int]] = None) -> None:
        super().__init__(cfg, resize)
        self.cfg: SynthiaConfig = cfg
        root = resolve_root(cfg.root, "synthia")
        self.image_dir = root / "RGB"
        self.files = same_name_pairs(cfg, root, self.image_dir, root / "GT" / "LABELS", LAYOUT)
        self.names = [image.name for image, _ in self.files]

    def read_raw(self, path: Path) -> np.ndarray:
        """The class ids: channel 0 (R) of the 16-bit label PNG (a single-channel label is used as it is)."""
        samples = read_png_samples(path)
        return samples[..., 0] if samples.ndim == 3 else samples
