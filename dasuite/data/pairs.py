"""The shared machinery of file datasets made of (image file, label file) pairs: cityscapes, gta5, synthia, folder
and translated sources.

A :class:`PairDataset` holds ``files`` (image path, label path or None), ``names`` and ``image_dir`` (the folder
the image paths are relative to; translated sources mirror that relative layout), decodes raw label values with
:meth:`PairDataset.read_raw` and maps them to train ids with its :class:`~dasuite.data.labels.LabelMap`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from pydantic import model_validator

from dasuite.data.base import DatasetConfig, SegDataset
from dasuite.data.io import make_item, read_label, read_rgb, resize_image, resize_label
from dasuite.data.labels import LabelMap
from dasuite.errors import DasuiteError

Pair = tuple[Path, Optional[Path]]
MAX_LISTED = 5  # file names quoted per error message


def listing(items: Sequence[object]) -> str:
    """The first :data:`MAX_LISTED` items quoted, and how many more there are."""
    shown = [repr(str(p)) for p in items[:MAX_LISTED]]
    more = f" and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return ", ".join(shown) + more


def require_dir(path: Path, what: str, expected: str) -> Path:
    """``path`` if it is a directory, else a DasuiteError naming it, what it is and the expected layout."""
    if not path.is_dir():
        raise DasuiteError(f"{what} {str(path)!r} does not exist (expected {expected})")
    return path


def require_files(paths: list[Path], what: str) -> None:
    """Raise a DasuiteError listing the first missing files (and the count) among ``paths``."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DasuiteError(f"{len(missing)} {what} do not exist: {listing(missing)}")


def resolve_file(path: str, root: Path) -> Path:
    """Expand ``$VARS`` / ``~``; relative paths are relative to the dataset ``root``."""
    resolved = Path(os.path.expanduser(os.path.expandvars(path)))
    return resolved if resolved.is_absolute() else root / resolved


def read_stem_list(path: Path, what: str) -> list[str]:
    """File stems listed one per line (``#`` starts a comment); ``images/00001.png``, ``00001.png`` and ``00001``
    all name stem ``00001``."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DasuiteError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None
    stems = [Path(t).stem for line in lines if (t := line.split("#", 1)[0].strip())]
    if not stems:
        raise DasuiteError(f"{what} {str(path)!r} lists no file names")
    return stems


class StemListConfig(DatasetConfig):
    """Options of datasets that use a whole image folder or the stems a file lists (gta5, synthia).

    ``split_file`` / ``exclude_list``: files of stems, relative to ``root`` unless absolute. Without
    ``split_file`` every image is used and ``split`` must be ``all`` (it only labels the entry)."""

    split: str = "all"
    """A name for the selection; anything but ``all`` (every image) needs ``split_file``."""
    split_file: Optional[str] = None
    """File of image stems to use, one per line (e.g. an official train split); null = every image."""
    exclude_list: Optional[str] = None
    """File of image stems to drop, one per line (e.g. blank frames); null = none."""

    @model_validator(mode="after")
    def _split_needs_file(self) -> "StemListConfig":
        if self.split != "all" and self.split_file is None:
            raise ValueError(f"{self.name} split {self.split!r} needs split_file (a list of image stems); "
                             "without one, use split: all")
        return self


def same_name_pairs(cfg: StemListConfig, root: Path, image_dir: Path, label_dir: Path, layout: str) -> list[Pair]:
    """``image_dir/*.png`` (sorted; selected by ``cfg.split_file`` / ``cfg.exclude_list``) paired with the label
    of the same file name in ``label_dir``; missing folders or labels are errors naming the paths."""
    require_dir(image_dir, f"{cfg.name} image folder", layout)
    require_dir(label_dir, f"{cfg.name} label folder", layout)
    images = sorted(image_dir.glob("*.png"))
    if cfg.split_file is not None:
        split_path = resolve_file(cfg.split_file, root)
        wanted = read_stem_list(split_path, f"{cfg.name} split_file")
        stems = {p.stem for p in images}
        unknown = [s for s in wanted if s not in stems]
        if unknown:
            raise DasuiteError(f"{cfg.name} split_file {str(split_path)!r} names {len(unknown)} images that are "
                               f"not in {str(image_dir)!r}: {listing(unknown)}")
        keep = set(wanted)
        images = [p for p in images if p.stem in keep]
    if cfg.exclude_list is not None:
        drop = set(read_stem_list(resolve_file(cfg.exclude_list, root), f"{cfg.name} exclude_list"))
        images = [p for p in images if p.stem not in drop]
    if not images:
        raise DasuiteError(f"{cfg.name}: no .png images selected from {str(image_dir)!r} (expected {layout})")
    labels = [label_dir / p.name for p in images]
    require_files(labels, f"{cfg.name} label files")
    return list(zip(images, labels))


class PairDataset(SegDataset):
    """Items made of an image and an optional label; file datasets fill ``files``, ``names``, ``image_dir``,
    ``label_map`` and ``classes``; other sources (Hugging Face rows) override :meth:`image_at` and
    :meth:`raw_label_at` instead of setting ``files``.

    ``label_follows_image``: when True, a label whose stored size differs from its image's stored size is resized
    (nearest) to the image size before anything else, in every view (training, evaluation, data check).
    """

    files: list[Pair]
    names: list[str]
    image_dir: Path
    label_map: LabelMap
    label_follows_image: bool = False

    def __init__(self, cfg: DatasetConfig, resize: Optional[tuple[int, int]] = None) -> None:
        super().__init__(cfg)
        self.resize = tuple(resize) if resize is not None else None

    def __len__(self) -> int:
        return len(self.names)

    def read_raw(self, path: Path) -> np.ndarray:
        """Raw label values HxW of one label file (8-bit index PNG, palette never applied)."""
        return read_label(path)

    def image_at(self, index: int) -> np.ndarray:
        """uint8 HxWx3 image of item ``index`` at its stored size."""
        return read_rgb(self.files[index][0])

    def raw_label_at(self, index: int) -> Optional[np.ndarray]:
        """Raw label values HxW of item ``index`` at their stored size, or None when it has no label."""
        path = self.files[index][1]
        return None if path is None else self.read_raw(path)

    def _decode(self, index: int, check: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
        image, raw = self.image_at(index), self.raw_label_at(index)
        if raw is None:
            return image, None
        label = self.label_map.check(raw, self.num_classes) if check else self.label_map.train(raw)
        image_size = (image.shape[1], image.shape[0])
        if self.label_follows_image and (label.shape[1], label.shape[0]) != image_size:
            label = _resize_any(label, image_size)
        return image, label

    def raw_pair(self, index: int) -> tuple[np.ndarray, Optional[np.ndarray], str]:
        """Stored-size image and label (train ids; raw values the encoding does not define are kept so that the
        data check reports them)."""
        image, label = self._decode(index, check=True)
        return image, label, self.names[index]

    def __getitem__(self, index: int) -> dict:
        image, label = self._decode(index, check=False)
        if self.resize is not None:
            image = resize_image(image, self.resize)
        if label is not None and self.label_size is not None:
            label = resize_label(label, self.label_size)
        return make_item(image, label, self.names[index])


def _resize_any(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest resize of an integer HxW array of any dtype (the check view may hold values above 255)."""
    h, w = label.shape
    rows = np.minimum((np.arange(size[1]) + 0.5) * h / size[1], h - 1).astype(np.int64)
    cols = np.minimum((np.arange(size[0]) + 0.5) * w / size[0], w - 1).astype(np.int64)
    return label[rows[:, None], cols[None, :]]
