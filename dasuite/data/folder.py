"""Any image/label tree: ``<root>/<images_dir>/**/<stem><image ext>`` paired with
``<root>/<labels_dir>/**/<stem><label_suffix>`` (same relative folder and stem). Classes, palette and the raw
label -> train id map come from the experiment YAML (:class:`ClassOptions`, shared with the ``hf`` dataset).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from dasuite.data.base import DATASETS, DatasetConfig, resolve_root
from dasuite.data.labels import IGNORE_INDEX, ClassTable, LabelMap, default_palette
from dasuite.data.pairs import PairDataset, listing, require_dir, require_files
from dasuite.errors import DasuiteError

Colour = tuple[int, int, int]


class ClassOptions(DatasetConfig):
    """Classes of a dataset described in the YAML.

    ``classes``: names in train-id order. ``palette``: one ``[r, g, b]`` per class (default: the PASCAL VOC
    colour map). ``label_map``: ``{raw value: train id}``; raw values it does not list become 255. Without it raw
    value ``v < len(classes)`` is train id ``v``. ``ignore_index``: a raw value that means *ignore* (-> 255).
    ``labelled: false`` draws the images only (items without ``label``).
    """

    classes: list[str] = Field(min_length=1)
    """Class names in train-id order."""
    palette: Optional[list[Colour]] = None
    """One ``[r, g, b]`` colour per class for visualisations; null = the PASCAL VOC colour map."""
    label_map: Optional[dict[int, int]] = None
    """``{raw value: train id}``; unlisted raw values become 255 (ignore); null = raw value v is train id v."""
    ignore_index: Optional[int] = Field(None, ge=0, le=255)
    """A raw label value that means ignore (mapped to 255); null = only 255."""
    labelled: bool = True
    """``false``: images only (no labels read), e.g. unlabelled target images."""

    @field_validator("palette")
    @classmethod
    def _colours_in_range(cls, v: Optional[list[Colour]]) -> Optional[list[Colour]]:
        bad = [c for c in v or [] if not all(0 <= x <= 255 for x in c)]
        if bad:
            raise ValueError(f"palette colours must be [r, g, b] with values 0..255, got {list(bad[0])}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ClassOptions":
        k = len(self.classes)
        if self.palette is not None and len(self.palette) != k:
            raise ValueError(f"palette has {len(self.palette)} colours for {k} classes")
        for raw, train in (self.label_map or {}).items():
            if not 0 <= raw <= 255:
                raise ValueError(f"label_map key {raw} is not a raw label value 0..255")
            if not (0 <= train < k or train == IGNORE_INDEX):
                raise ValueError(f"label_map maps {raw} to {train}; expected a train id 0..{k - 1} or 255")
        if self.ignore_index is not None and self.ignore_index in (self.label_map or {}):
            raise ValueError(f"ignore_index {self.ignore_index} is also a label_map key")
        return self

    def class_table(self) -> ClassTable:
        palette = tuple(tuple(c) for c in self.palette) if self.palette else default_palette(len(self.classes))
        return ClassTable(self.name, tuple(self.classes), palette)

    def build_label_map(self) -> LabelMap:
        """Raw -> train id table; with ``label_map`` every raw value is *known* (unlisted ones are ignored on
        purpose), without it the known values are ``0..k-1``, ``ignore_index`` and 255."""
        k = len(self.classes)
        mapping = dict(self.label_map) if self.label_map is not None else {i: i for i in range(min(k, 255))}
        known = range(256) if self.label_map is not None else [*range(min(k, 255)), IGNORE_INDEX]
        if self.ignore_index is not None:
            mapping[self.ignore_index] = IGNORE_INDEX
            known = [*known, self.ignore_index]
        return LabelMap.from_dict(mapping, known)


class FolderConfig(ClassOptions):
    """Options of the ``folder`` dataset; ``images_dir`` / ``labels_dir`` (relative to ``root``) may contain
    ``{split}``; ``label_suffix`` replaces the image extension (``.png``, or e.g. ``_mask.png``)."""

    name: Literal["folder"] = "folder"
    """Selects this dataset (``dasuite list datasets``)."""
    images_dir: str = "images"
    """Image folder relative to ``root``, searched recursively; ``{split}`` becomes ``split``."""
    labels_dir: str = "labels"
    """Label folder relative to ``root``, with the images' sub-folders; ``{split}`` becomes ``split``."""
    image_exts: list[str] = Field(default_factory=lambda: [".png", ".jpg", ".jpeg"], min_length=1)
    """Extensions of the image files to use (any case)."""
    label_suffix: str = ".png"
    """Replaces an image's extension to give its label's file name (e.g. ``_mask.png``)."""


@DATASETS.register("folder", config=FolderConfig)
class FolderDataset(PairDataset):
    """Images found recursively under ``images_dir`` (sorted by relative path); names are those relative paths."""


    def __init__(self, cfg: FolderConfig, resize: Optional[tuple[int, int]] = None) -> None:
        super().__init__(cfg, resize)
        self.cfg: FolderConfig = cfg
        root = resolve_root(cfg.root, "folder")
        self.classes = cfg.class_table()
        self.label_map = cfg.build_label_map()
        layout = f"{cfg.images_dir}/**/<stem>{{{','.join(cfg.image_exts)}}}"
        images_dir = cfg.images_dir.replace("{split}", cfg.split)
        self.image_dir = require_dir(root / images_dir, "folder image folder", layout)
        images = find_images(self.image_dir, cfg.image_exts)
        self.names = [p.relative_to(self.image_dir).as_posix() for p in images]
        if not cfg.labelled:
            self.files = [(p, None) for p in images]
            return
        label_dir = require_dir(root / cfg.labels_dir.replace("{split}", cfg.split), "folder label folder",
                                f"{cfg.labels_dir}/**/<stem>{cfg.label_suffix}, or labelled: false")
        labels = [label_dir / p.relative_to(self.image_dir).parent / (p.stem + cfg.label_suffix) for p in images]
        require_files(labels, "folder label files")
        self.files = list(zip(images, labels))


def find_images(folder: Path, exts: list[str]) -> list[Path]:
    """Files under ``folder`` (recursively) whose extension is one of ``exts`` (any case), sorted by relative path;
    two images with the same relative stem are an error (their labels would collide)."""
    wanted = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in exts}
    images = sorted((p for p in folder.rglob("*") if p.suffix.lower() in wanted and p.is_file()),
                    key=lambda p: p.relative_to(folder).as_posix())
    if not images:
        raise DasuiteError(f"folder image folder {str(folder)!r} holds no {'/'.join(sorted(wanted))} files")
    clashes = sorted(str(stem) for stem, n in Counter(p.with_suffix("") for p in images).items() if n > 1)
    if clashes:
        raise DasuiteError(f"folder: several images share a stem: {listing(clashes)}")
    return images

