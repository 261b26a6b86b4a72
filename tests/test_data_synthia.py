"""SYNTHIA-RAND-CITYSCAPES: 16-bit RGB label PNGs (class id in R) written byte for byte, the full-depth PNG
reader, the 16-class id map, the 16/13-class evaluation subsets, errors and the data check."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dasuite.data import SynthiaConfig, SynthiaDataset, build_dataset
from dasuite.data.check import check_dataset
from dasuite.data.io import read_png_samples
from dasuite.data.labels import CITYSCAPES, SYNTHIA13, SYNTHIA16, SYNTHIA_ID_TO_TRAINID, subset_miou
from dasuite.errors import DasuiteError

# SYNTHIA id -> Cityscapes train id (da_ssl_anchors.md 4.3): the 16 shared classes, plus terrain / truck / train
# whose SYNTHIA ids (16, 18, 20) never occur in RAND-CITYSCAPES
SHARED = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12, 8: 13, 19: 15, 12: 17,
          11: 18}
ABSENT = {16: 9, 18: 14, 20: 16}


def png16(path: Path, samples: np.ndarray, filter_type: int = 0) -> None:
    """Write HxWxC uint16 samples (C = 3: RGB, 4: RGBA) as a 16-bit PNG, as SYNTHIA's GT/LABELS files are.
    ``filter_type`` 1 (Sub) exercises the decoder's un-filtering across 6-byte pixels."""
    h, w, c = samples.shape
    raw = samples.astype(">u2").reshape(h, w * c).view(np.uint8)
    if filter_type == 1:
        bpp = 2 * c
        raw = raw.copy()
        raw[:, bpp:] = raw[:, bpp:] - samples.astype(">u2").reshape(h, w * c).view(np.uint8)[:, :-bpp]
    rows = b"".join(bytes([filter_type]) + row.tobytes() for row in raw)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour_type = {3: 2, 4: 6}[c]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def label_samples(ids: np.ndarray) -> np.ndarray:
    """R = class id, G = an instance id above 255 (as SYNTHIA stores), B = 0."""
    instance = np.where(ids > 0, 1000 + ids, 0)
    return np.stack([ids, instance, np.zeros_like(ids)], -1).astype(np.uint16)


IDS = np.arange(24, dtype=np.uint16).reshape(4, 6) % 23  # every SYNTHIA id 0..22


def write_frame(root: Path, stem: str, ids: np.ndarray, filter_type: int = 0) -> None:
    (root / "RGB").mkdir(parents=True, exist_ok=True)
    (root / "GT/LABELS").mkdir(parents=True, exist_ok=True)
    h, w = ids.shape
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "RGB" / f"{stem}.png")
    png16(root / "GT/LABELS" / f"{stem}.png", label_samples(ids), filter_type)


@pytest.fixture
def fake_synthia(tmp_path: Path) -> Path:
    root = tmp_path / "RAND_CITYSCAPES"
    write_frame(root, "0000000", IDS)
    write_frame(root, "0000001", IDS[::-1].copy(), filter_type=1)
    return root


def test_png16_reader_keeps_full_depth(tmp_path):
    samples = label_samples(IDS)
    samples[0, 0] = (300, 65535, 7)
    png16(tmp_path / "rgb16.png", samples)
    png16(tmp_path / "sub16.png", samples, filter_type=1)
    rgba = np.concatenate([samples, np.full((4, 6, 1), 513, np.uint16)], -1)
    png16(tmp_path / "rgba16.png", rgba)
    for name, expected in (("rgb16.png", samples), ("sub16.png", samples), ("rgba16.png", rgba)):
        decoded = read_png_samples(tmp_path / name)
        assert decoded.dtype == np.uint16 and np.array_equal(decoded, expected), name
    # the pitfall: PIL's own decoding keeps only the high byte, so every class id below 256 reads as 0
    assert (np.asarray(Image.open(tmp_path / "rgb16.png"))[1:, :, 0] == 0).all()
    Image.fromarray(np.full((2, 3), 9, np.uint8)).save(tmp_path / "l8.png")
    assert read_png_samples(tmp_path / "l8.png").dtype == np.uint8


def test_ids_mapped_to_cityscapes_train_ids(fake_synthia):
    ds = build_dataset(SynthiaConfig(root=str(fake_synthia)))
    assert ds.names == ["0000000.png", "0000001.png"] and ds.num_classes == 19
    for index, ids in ((0, IDS), (1, IDS[::-1])):
        label = ds[index]["label"].numpy()
        expected = np.vectorize(lambda i: {**SHARED, **ABSENT}.get(int(i), 255))(ids)
        assert np.array_equal(label, expected)
    assert sorted(SHARED.values()) == list(SYNTHIA16)
    assert [SYNTHIA_ID_TO_TRAINID[i] for i in (0, 13, 14, 22)] == [255] * 4  # void, parking, road-work, lanemarking


def test_resize_and_data_check(fake_synthia):
    ds = build_dataset(SynthiaConfig(root=str(fake_synthia)), default_resize=(3, 2))
    assert ds[0]["image"].shape == (3, 2, 3) and ds[0]["label"].shape == (2, 3)
    assert ds.raw_pair(0)[1].shape == (4, 6)
    report = check_dataset(ds, num_workers=0)
    assert report.ok and report.image_sizes == {(6, 4): 2}
    # per frame: 24 pixels, ids 0..22 and 0 again; 19 ids map to one class each, ids 0 (x2), 13, 14, 22 are ignore
    assert report.class_pixels == [2] * 19 and report.ignore_pixels == 2 * 5
    bad = IDS.copy()
    bad[0, :2] = (30, 300)  # not SYNTHIA ids: ignored in training, reported by the check
    write_frame(fake_synthia, "0000002", bad)
    ds = SynthiaDataset(SynthiaConfig(root=str(fake_synthia)))
    assert ds[2]["label"][0, 0] == 255 and ds[2]["label"][0, 1] == 255
    assert check_dataset(ds, num_workers=0).bad_values == {30: ["0000002.png"], 300: ["0000002.png"]}


def test_split_file_and_errors(fake_synthia, tmp_path):
    (fake_synthia / "val.txt").write_text("0000001\n")
    assert SynthiaDataset(SynthiaConfig(root=str(fake_synthia), split="val", split_file="val.txt")).names == [
        "0000001.png"]
    with pytest.raises(DasuiteError, match=r"synthia label folder .*GT/LABELS.* does not exist"):
        (tmp_path / "empty/RGB").mkdir(parents=True)
        SynthiaDataset(SynthiaConfig(root=str(tmp_path / "empty")))
    (fake_synthia / "GT/LABELS/0000001.png").unlink()
    with pytest.raises(DasuiteError, match=r"GT/LABELS/0000001\.png"):
        SynthiaDataset(SynthiaConfig(root=str(fake_synthia)))


def test_evaluation_subsets():
    names = CITYSCAPES.names
    assert [names[t] for t in sorted(set(range(19)) - set(SYNTHIA16))] == ["terrain", "truck", "train"]
    assert [names[t] for t in sorted(set(SYNTHIA16) - set(SYNTHIA13))] == ["wall", "fence", "pole"]
    iou = {n: 0.5 for n in names}
    iou.update({"road": 0.9, "wall": 0.1, "terrain": None, "truck": 0.0, "train": float("nan")})
    assert subset_miou(iou, SYNTHIA16) == pytest.approx((0.9 + 0.1 + 0.5 * 14) / 16)
    assert subset_miou(iou, SYNTHIA13) == pytest.approx((0.9 + 0.5 * 12) / 13)
    assert subset_miou({n: None for n in names}, SYNTHIA13) is None
    with pytest.raises(KeyError, match="road"):
        subset_miou({"sky": 0.3}, SYNTHIA13)
