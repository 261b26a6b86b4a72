"""Image / label decoding and fixed resizing with PIL, shared by every file dataset.

Images are resized bilinearly with antialiasing (PIL's ``BILINEAR`` filter widens its support when
downscaling), labels with ``NEAREST`` so no new label values appear. Sizes are ``(width, height)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dasuite.errors import DasuiteError

PathLike = Union[str, Path]
Size = tuple[int, int]


def _open(path: PathLike) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DasuiteError(f"image file {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DasuiteError(f"cannot decode image file {str(path)!r}: {e}") from None
    return img


def read_rgb(path: PathLike, size: Optional[Size] = None) -> np.ndarray:
    """Decode an image as uint8 HxWx3 RGB (grey / paletted / RGBA are converted); resize to ``size`` if given."""
    img = _open(path)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if size is not None and img.size != tuple(size):
        img = img.resize(tuple(size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def read_label(path: PathLike, size: Optional[Size] = None) -> np.ndarray:
    """Decode a single-channel label PNG as uint8 HxW *indices* (mode L or P, palette never applied).

    16-bit labels are accepted only when every value fits in 0..255; colour labels are an error.
    """
    img = _open(path)
    if img.mode in ("L", "P"):
        arr = np.asarray(img, dtype=np.uint8)
    elif img.mode in ("I", "I;16", "I;16B", "I;16L"):
        wide = np.asarray(img)
        if wide.size and int(wide.max()) > 255:
            raise DasuiteError(
                f"label file {str(path)!r} is a {img.mode} image with values up to {int(wide.max())}; "
                "expected 8-bit class indices (0..255)"
            )
        arr = wide.astype(np.uint8)
    else:
        raise DasuiteError(
            f"label file {str(path)!r} has mode {img.mode!r}; expected a single-channel index PNG (mode L or P), "
            "not a colour image"
        )
    if size is not None and (arr.shape[1], arr.shape[0]) != tuple(size):
        arr = resize_label(arr, size)
    return arr


def resize_image(image: np.ndarray, size: Size) -> np.ndarray:
    """Resize uint8 HxWx3 to ``size`` = (w, h), bilinear with antialiasing."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(tuple(size), Image.BILINEAR), dtype=np.uint8)


def resize_label(label: np.ndarray, size: Size) -> np.ndarray:
    """Resize uint8 HxW class indices to ``size`` = (w, h), nearest neighbour."""
    if (label.shape[1], label.shape[0]) == tuple(size):
        return label
    return np.asarray(Image.fromarray(label).resize(tuple(size), Image.NEAREST), dtype=np.uint8)


def make_item(image: np.ndarray, label: Optional[np.ndarray], name: str) -> dict:
    """Build a dataset item: ``image`` uint8 3xHxW tensor, ``label`` int64 HxW tensor (omitted if None), ``name``."""
    item = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), "name": name}
    if label is not None:
        item["label"] = torch.from_numpy(label.astype(np.int64))
    return item
