"""A Hugging Face ``datasets`` dataset on local disk, with an image column and a label-mask column.

``root`` is either a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` or an image
folder in the ``imagefolder`` layout with a metadata file (``metadata.jsonl`` / ``.csv`` / ``.parquet`` holding
``file_name`` and ``label_file_name`` columns, optionally one sub-folder per split). Nothing is ever downloaded.
Both columns must be ``datasets.Image`` features; they are read undecoded (``{"bytes", "path"}``) and decoded per
item with PIL, so label masks keep their indices (no palette conversion). Classes come from the YAML
(:class:`~dasuite.data.folder.ClassOptions`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from dasuite.data.base import DATASETS, resolve_root
from dasuite.data.folder import ClassOptions
from dasuite.data.io import read_label, read_rgb
from dasuite.data.pairs import PairDataset
from dasuite.errors import DasuiteError

METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


class HFConfig(ClassOptions):
    """Options of the ``hf`` dataset; ``split`` picks a split of a DatasetDict or image folder (a single saved
    Dataset has one split: ``split`` only labels it); ``cache_dir``: where ``datasets`` keeps the Arrow index it
    builds for an image folder (default: its own cache)."""

    name: Literal["hf"] = "hf"
    """Selects this dataset (``dasuite list datasets``)."""
    image_column: str = "image"
    """Column of the images (a ``datasets.Image`` feature)."""
    label_column: str = "label"
    """Column of the label masks (a ``datasets.Image`` feature)."""
    cache_dir: Optional[str] = None
    """Where ``datasets`` keeps the Arrow index it builds for an image folder; null = its own cache."""


def _local_root(root: Optional[str]) -> Path:
    if root is not None and not Path(root).expanduser().exists() and "$" not in root:
        raise DasuiteError(
            f"hf: root {root!r} is not a local directory; dasuite never downloads datasets. On a machine with "
            f"network access run datasets.load_dataset(NAME).save_to_disk(DIR), copy DIR here and set root to it"
        )
    return resolve_root(root, "hf")


def load_split(cfg: HFConfig, root: Path) -> Any:
    """The ``datasets.Dataset`` of ``cfg.split`` from a saved dataset or an image folder under ``root``."""
    import datasets

    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        loaded = datasets.load_from_disk(str(root))
    elif any(p.name in METADATA_FILES for p in root.rglob("metadata.*")):
        loaded = datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=cfg.cache_dir)
    else:
        raise DasuiteError(
            f"hf: {str(root)!r} is neither a save_to_disk directory (dataset_dict.json or state.json) nor an image "
            f"folder with a metadata file ({', '.join(METADATA_FILES)})"
        )
    if isinstance(loaded, datasets.DatasetDict):
        if cfg.split not in loaded:
            raise DasuiteError(f"hf: {str(root)!r} has no split {cfg.split!r} (splits: {', '.join(loaded)})")
        return loaded[cfg.split]
    return loaded


@DATASETS.register("hf", config=HFConfig)
class HFDataset(PairDataset):
    """Rows of a local Hugging Face dataset; names are the image file names stored in the rows (or the row
    index, ``000012``, when a row has no path)."""


    def __init__(self, cfg: HFConfig, resize: Optional[tuple[int, int]] = None) -> None:
        super().__init__(cfg, resize)
        self.cfg: HFConfig = cfg
        import datasets

        root = _local_root(cfg.root)
        self.classes = cfg.class_table()
        self.label_map = cfg.build_label_map()
        table = load_split(cfg, root)
        self.columns = [cfg.image_column] + ([cfg.label_column] if cfg.labelled else [])
        for column in self.columns:
            feature = table.features.get(column)
            if feature is None:
                raise DasuiteError(f"hf: {str(root)!r} split {cfg.split!r} has no column {column!r} "
                                   f"(columns: {', '.join(table.column_names)})")
            if not isinstance(feature, datasets.Image):
                raise DasuiteError(f"hf: column {column!r} is {feature!r}; expected a datasets.Image column")
        table = table.select_columns(self.columns)
        for column in self.columns:
            table = table.cast_column(column, datasets.Image(decode=False))
        self.table = table
        paths = list(table.flatten().select_columns([f"{cfg.image_column}.path"])[f"{cfg.image_column}.path"])
        self.names = [Path(p).name if p else f"{i:06d}" for i, p in enumerate(paths)]
        if not self.names:
            raise DasuiteError(f"hf: {str(root)!r} split {cfg.split!r} has no rows")

    def _read(self, index: int, column: str, reader: Any) -> np.ndarray:
        """Decode the ``{"bytes", "path"}`` cell of row ``index`` with ``reader`` (bytes first)."""
        cell = self.table[index][column] or {}
        source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell.get("path")
        where = f"hf: row {index} ({self.names[index]}), column {column!r}"
        if not source:
            raise DasuiteError(f"{where} holds no image")
        try:
            return reader(source)
        except DasuiteError as e:
            raise DasuiteError(f"{where}: {e}") from None

    def image_at(self, index: int) -> np.ndarray:
        return self._read(index, self.cfg.image_column, read_rgb)

    def raw_label_at(self, index: int) -> Optional[np.ndarray]:
        return self._read(index, self.cfg.label_column, read_label) if self.cfg.labelled else None
