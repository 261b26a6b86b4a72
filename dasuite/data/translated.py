"""Translated sources: a parent dataset's labels and names with images from another root (a CycleGAN-translated
GTA5, "cycleGTA", is GTA5's labels with translated images).

Layout convention (written by ``dasuite translate``): the translated image of a parent image is
``<images_root>/<path of the parent image relative to the parent's image folder>``, with the extension replaced
by ``image_ext`` when set. The parent's image folder is ``images/`` for gta5, ``RGB/`` for synthia,
``leftImg8bit/`` for cityscapes (so ``<images_root>/train/aachen/aachen_..._leftImg8bit.png``) and ``images_dir``
for folder. A translated image may have another size than its label: the label is resized (nearest) to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from dasuite.data.base import DATASETS, DatasetConfig, resolve_root
from dasuite.data.cityscapes import CityscapesConfig
from dasuite.data.folder import FolderConfig
from dasuite.data.gta5 import GTA5Config
from dasuite.data.pairs import PairDataset, listing
from dasuite.data.synthia import SynthiaConfig
from dasuite.errors import DasuiteError

ParentEntry = Annotated[Union[GTA5Config, SynthiaConfig, CityscapesConfig, FolderConfig], Field(discriminator="name")]
_PARENT: TypeAdapter = TypeAdapter(ParentEntry)


class TranslatedConfig(DatasetConfig):
    """Options of the ``translated`` dataset: ``parent`` (a gta5, synthia, cityscapes or folder entry giving the
    labels and names), ``images_root`` (the translated images) and ``image_ext`` (e.g. ``.jpg``; default: the
    parent's extension). ``split`` defaults to the parent's; ``root`` is not used."""

    name: Literal["translated"] = "translated"
    """Selects this dataset (``dasuite list datasets``)."""
    parent: ParentEntry
    """The ``gta5``, ``synthia``, ``cityscapes`` or ``folder`` entry that gives labels, names and order (its ``resize``
    and ``augment`` are not used)."""
    images_root: str
    """Folder of the translated images, laid out like the parent's image folder (as ``dasuite translate`` writes it)."""
    image_ext: Optional[str] = Field(None, pattern=r"^\.[A-Za-z0-9]+$")
    """Extension of the translated files, e.g. ``.jpg``; null = the parent's."""

    @model_validator(mode="before")
    @classmethod
    def _split_from_parent(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "split" in data or data.get("parent") is None:
            return data
        try:  # the parent's split, defaults included; an invalid parent is reported by the field's validation
            parent = _PARENT.validate_python(data["parent"])
        except ValidationError:
            return data
        return {**data, "parent": parent, "split": parent.split}

    @model_validator(mode="after")
    def _no_root(self) -> "TranslatedConfig":
        if self.root is not None:
            raise ValueError("translated: set images_root (translated images) and parent.root (labels); "
                             f"root ({self.root!r}) is not used")
        return self


@DATASETS.register("translated", config=TranslatedConfig)
class TranslatedDataset(PairDataset):
    """The parent's items (labels, names, order) with each image replaced by its translated counterpart."""

    label_follows_image = True

    def __init__(self, cfg: TranslatedConfig, resize: Optional[tuple[int, int]] = None) -> None:
        super().__init__(cfg, resize)
        self.cfg: TranslatedConfig = cfg
        parent_cls = DATASETS.get(cfg.parent.name)
        self.parent: PairDataset = parent_cls(cfg.parent, None)
        self.image_dir = resolve_root(cfg.images_root, "translated (images_root)")
        self.classes = self.parent.classes
        self.label_map = self.parent.label_map
        self.names = self.parent.names
        self.files = [(self.translated_path(image), label) for image, label in self.parent.files]
        missing = [image for image, _ in self.files if not image.is_file()]
        if missing:
            raise DasuiteError(
                f"translated: {len(missing)} of {len(self.files)} translated images do not exist under "
                f"{str(self.image_dir)!r} (expected <images_root>/<parent image path relative to "
                f"{str(self.parent.image_dir)!r}>): {listing(missing)}"
            )

    def translated_path(self, parent_image: Path) -> Path:
        """``<images_root>/<parent_image relative to the parent's image folder>``, extension per ``image_ext``."""
        relative = parent_image.relative_to(self.parent.image_dir)
        if self.cfg.image_ext is not None:
            relative = relative.with_suffix(self.cfg.image_ext)
        return self.image_dir / relative

    def read_raw(self, path: Path) -> np.ndarray:
        return self.parent.read_raw(path)
