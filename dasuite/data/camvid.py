"""CamVid in the SegNet layout (``train/ trainannot/ val/ valannot/ test/ testannot/``), 11 classes.

Labels are mode-L PNGs with values 0..10 (classes, order of ``CAMVID``) and 11 = Unlabelled, mapped to 255.
Items come from the split folders, from a list file (SegNet ``train.txt`` style: ``img [label]`` per line, the
absolute ``/SegNet/CamVid/`` prefix removed, paths relative to the root), or from the shipped sequence-disjoint
folds (``camvid_folds/``, see docs/datasets.md and tools/make_camvid_folds.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import model_validator

from dasuite.data.base import DATASETS, DatasetConfig, SegDataset, resolve_root
from dasuite.data.io import make_item, read_label, read_rgb
from dasuite.data.labels import CAMVID, CAMVID_TO_TRAINID
from dasuite.errors import DasuiteError

SEGNET_PREFIX = "/SegNet/CamVid/"
FOLDS_DIR = Path(__file__).resolve().parent / "camvid_folds"
Pair = tuple[Path, Path]
# For the data check: like CAMVID_TO_TRAINID, but values that are not CamVid labels (12..254) stay visible.
_CHECK_LUT = CAMVID_TO_TRAINID.copy()
_CHECK_LUT[12:255] = np.arange(12, 255, dtype=np.uint8)


class CamVidConfig(DatasetConfig):
    """Options of the ``camvid`` dataset. ``fold: K`` picks fold K's train / val, as ``test`` the other fold's
    train + val, and as ``other_train`` / ``other_val`` the other fold's train / val (cross-sequence adaptation:
    unlabelled target and its held-out test); ``list_file`` (relative to ``root`` unless absolute) replaces the split
    folders."""

    name: Literal["camvid"] = "camvid"
    """Selects this dataset (``dasuite list datasets``)."""
    root: str = "$DASUITE_DATA/camvid"
    """The SegNet ``CamVid/`` folder (``train/``, ``trainannot/``, ``val/``, ...)."""
    split: Literal["train", "val", "test", "trainval", "other_train", "other_val"] = "train"
    """Split to read (``trainval``: train + val); with ``fold``, that part of the fold (``test``: the other fold;
    ``other_train`` / ``other_val``, with ``fold`` only: the other fold's train / val)."""
    list_file: Optional[str] = None
    """A SegNet-style list file (``image [label]`` per line) replacing the split folders, relative to ``root`` unless
    absolute; null = the folders."""
    fold: Optional[Literal[1, 2]] = None
    """One of the two shipped sequence-disjoint folds (docs/datasets.md); null = the SegNet splits."""

    @model_validator(mode="after")
    def _one_source(self) -> "CamVidConfig":
        if self.list_file is not None and self.fold is not None:
            raise ValueError(f"give either list_file ({self.list_file!r}) or fold ({self.fold}), not both")
        if self.split.startswith("other_") and self.fold is None:
            raise ValueError(f"split {self.split!r} is a part of the other fold: it needs fold (1 or 2)")
        return self


def _resolve(token: str, root: Path) -> Path:
    if token.startswith(SEGNET_PREFIX):
        token = token[len(SEGNET_PREFIX) :]
    path = Path(token)
    return path if path.is_absolute() else root / path


def label_path_for(image: Path) -> Path:
    """SegNet convention: ``<split>/<name>.png`` has its label at ``<split>annot/<name>.png``."""
    return image.parent.parent / f"{image.parent.name}annot" / image.name


def read_list_file(path: Path, root: Path) -> list[Pair]:
    """Parse a list file: per line ``image [label]`` (``#`` starts a comment); a missing label column means the
    SegNet ``<split>annot/`` convention. Returns absolute (image, label) paths."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DasuiteError(f"cannot read CamVid list file {str(path)!r}: {e.strerror or e}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        if len(tokens) > 2:
            raise DasuiteError(f"{path}:{number}: expected 'image [label]', got {line.strip()!r}")
        image = _resolve(tokens[0], root)
        pairs.append((image, _resolve(tokens[1], root) if len(tokens) == 2 else label_path_for(image)))
    if not pairs:
        raise DasuiteError(f"CamVid list file {str(path)!r} lists no images")
    return pairs


def folder_pairs(root: Path, split: str) -> list[Pair]:
    """All ``<root>/<split>/*.png`` images (sorted by name) with their ``<split>annot/`` labels."""
    folder = root / split
    if not folder.is_dir():
        raise DasuiteError(f"CamVid split folder {str(folder)!r} does not exist (expected the SegNet layout)")
    images = sorted(folder.glob("*.png"))
    if not images:
        raise DasuiteError(f"CamVid split folder {str(folder)!r} holds no .png images")
    return [(image, label_path_for(image)) for image in images]


def fold_files(fold: int, split: str) -> list[Path]:
    """The shipped list files that make up ``split`` of fold ``fold`` (test = the other fold's train + val,
    other_train / other_val = the other fold's train / val)."""
    other = 3 - fold
    names = {
        "train": [f"fold{fold}_train.txt"],
        "val": [f"fold{fold}_val.txt"],
        "trainval": [f"fold{fold}_train.txt", f"fold{fold}_val.txt"],
        "test": [f"fold{other}_train.txt", f"fold{other}_val.txt"],
        "other_train": [f"fold{other}_train.txt"],
        "other_val": [f"fold{other}_val.txt"],
    }[split]
    return [FOLDS_DIR / name for name in names]


def _check_exist(pairs: list[Pair], source: str) -> None:
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DasuiteError(f"CamVid file {missing[0]!r}{more} listed by {source} does not exist")


@DATASETS.register("camvid", config=CamVidConfig)
class CamVidDataset(SegDataset):
    """CamVid (SegNet version): 367 train / 101 val / 233 test images of 480x360; names are the file names."""

    classes = CAMVID

    def __init__(self, cfg: CamVidConfig, resize: Optional[tuple[int, int]] = None) -> None:
        super().__init__(cfg)
        self.cfg: CamVidConfig = cfg
        self.resize = tuple(resize) if resize is not None else None
        root = resolve_root(cfg.root, "camvid")
        if cfg.list_file is not None:
            list_path = Path(os.path.expanduser(os.path.expandvars(cfg.list_file)))
            list_path = list_path if list_path.is_absolute() else root / list_path
            self.files, source = read_list_file(list_path, root), f"list file {str(list_path)!r}"
        elif cfg.fold is not None:
            lists = fold_files(cfg.fold, cfg.split)
            self.files = [pair for path in lists for pair in read_list_file(path, root)]
            source = f"fold {cfg.fold} ({', '.join(p.name for p in lists)})"
        else:
            splits = ("train", "val") if cfg.split == "trainval" else (cfg.split,)
            self.files = [pair for split in splits for pair in folder_pairs(root, split)]
            source = f"the {cfg.split} folder listing of {str(root)!r}"
        _check_exist(self.files, source)

    def __len__(self) -> int:
        return len(self.files)

    def raw_pair(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Stored-size arrays for the data check; label values that no CamVid class uses (12..254) are kept so
        the check reports them (training maps them to ignore)."""
        image, label = self.files[index]
        return read_rgb(image), _CHECK_LUT[read_label(label)], image.name

    def __getitem__(self, index: int) -> dict:
        image, label = self.files[index]
        rgb = read_rgb(image, self.resize)
        return make_item(rgb, CAMVID_TO_TRAINID[read_label(label, self.label_size)], image.name)
