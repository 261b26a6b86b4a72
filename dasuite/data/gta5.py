"""GTA5 ("Playing for Data"): ``images/*.png`` with ``labels/*.png`` of the same name.

Labels are paletted ('P') PNGs whose *indices* are Cityscapes labelIds (the palette holds the Cityscapes colours):
they are read as indices with PIL, never converted to colour, and mapped through the Cityscapes 34 -> 19 table.

Some frames' label size differs from their image size. The index is built from the PNG headers only, every
mismatched pair is logged, and ``size_mismatch`` decides: ``resize_label`` (the label is resized nearest to the
image size, in every view) or ``skip`` (the pair is dropped).
"""

from __future__ import annotations

import logging
from typing import Literal, Optional

from dasuite.data.base import DATASETS, resolve_root
from dasuite.data.io import image_size
from dasuite.data.labels import CITYSCAPES, CITYSCAPES_LABEL_IDS
from dasuite.data.pairs import PairDataset, StemListConfig, same_name_pairs
from dasuite.errors import DasuiteError

log = logging.getLogger(__name__)
MAX_LOGGED = 20  # mismatched pairs named in the log


class GTA5Config(StemListConfig):
    """Options of the ``gta5`` dataset (GTA5, "Playing for Data", Richter et al. ECCV'16): the whole image folder or
    the stems a ``split_file`` lists; ``size_mismatch``: what to do with pairs whose label size differs from the
    image size."""

    name: Literal["gta5"] = "gta5"
    """Selects this dataset (``dasuite list datasets``)."""
    root: str = "$DASUITE_DATA/gta5"
    """The folder holding ``images/`` and ``labels/``."""
    size_mismatch: Literal["resize_label", "skip"] = "resize_label"
    """Pairs whose label size differs from the image's: ``resize_label`` (nearest, to the image) or ``skip``."""


@DATASETS.register("gta5", config=GTA5Config)
class GTA5Dataset(PairDataset):
    """GTA5: 24,966 frames, mostly 1914x1052; names are the image file names (``00001.png``)."""

    classes = CITYSCAPES
    label_map = CITYSCAPES_LABEL_IDS
    label_follows_image = True  # only mismatched pairs are affected; they are resized or skipped at index time

    def __init__(self, cfg: GTA5Config, resize: Optional[tuple[int, int]] = None) -> None:
        super().__init__(cfg, resize)
        self.cfg: GTA5Config = cfg
        root = resolve_root(cfg.root, "gta5")
        self.image_dir = root / "images"
        pairs = same_name_pairs(cfg, root, self.image_dir, root / "labels", "images/*.png and labels/*.png")
        sizes = [(image_size(image), image_size(label)) for image, label in pairs]
        mismatched = [(image.name, a, b) for (image, _), (a, b) in zip(pairs, sizes) if a != b]
        if mismatched:
            _log_mismatches(mismatched, cfg.size_mismatch)
            if cfg.size_mismatch == "skip":
                pairs = [pair for pair, (a, b) in zip(pairs, sizes) if a == b]
        if not pairs:
            raise DasuiteError(f"gta5: every pair in {str(root)!r} was skipped (size_mismatch: skip)")
        self.files = pairs
        self.names = [image.name for image, _ in pairs]
        #: names of the pairs whose image and label sizes differ as stored
        self.mismatched = [name for name, _, _ in mismatched]


def _log_mismatches(mismatched: list[tuple[str, tuple[int, int], tuple[int, int]]], policy: str) -> None:
    action = "labels resized (nearest) to the image size" if policy == "resize_label" else "pairs skipped"
    shown = "; ".join(f"{name}: image {a[0]}x{a[1]}, label {b[0]}x{b[1]}" for name, a, b in mismatched[:MAX_LOGGED])
    more = f"; and {len(mismatched) - MAX_LOGGED} more" if len(mismatched) > MAX_LOGGED else ""
    log.warning("gta5: %d image/label pairs differ in size (%s): %s%s", len(mismatched), action, shown, more)
