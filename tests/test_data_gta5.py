"""GTA5: paletted labelId PNGs read as indices, size mismatches (resize_label / skip), split and exclude lists,
errors, the data check, and the real full-size GTA5 frame with a label written in the GTA5 encoding."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from dasuite.data import GTA5Config, GTA5Dataset, build_dataset
from dasuite.data.check import check_dataset
from dasuite.data.io import image_size
from dasuite.data.labels import CITYSCAPES_ID_TO_TRAINID
from dasuite.errors import DasuiteError

# Cityscapes colour of every labelId 0..33 (cityscapesScripts labels.py): GTA5 label PNGs carry this palette.
LABEL_ID_COLOURS = [
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (111, 74, 0), (81, 0, 81), (128, 64, 128),
    (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (180, 165, 180), (150, 100, 100), (150, 120, 90), (153, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]
IDS = (np.arange(48, dtype=np.uint8).reshape(6, 8) % 34)


def write_gta_label(path: Path, ids: np.ndarray) -> None:
    """A 'P' PNG whose indices are labelIds and whose palette holds the Cityscapes colours (GTA5's encoding)."""
    label = Image.fromarray(ids, mode="P")
    label.putpalette([c for colour in LABEL_ID_COLOURS for c in colour])
    label.save(path)


def write_pair(root: Path, stem: str, ids: np.ndarray, image_size=None) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    w, h = image_size or (ids.shape[1], ids.shape[0])
    Image.fromarray(np.full((h, w, 3), (10, 20, 30), np.uint8)).save(root / "images" / f"{stem}.png")
    write_gta_label(root / "labels" / f"{stem}.png", ids)


@pytest.fixture
def fake_gta5(tmp_path: Path) -> Path:
    root = tmp_path / "gta5"
    write_pair(root, "00001", IDS)
    write_pair(root, "00002", IDS[::-1].copy())
    write_pair(root, "00003", np.full((6, 9), 26, np.uint8), image_size=(8, 6))  # label 9x6, image 8x6
    return root


def test_labels_are_indices_not_colours(fake_gta5):
    stored = Image.open(fake_gta5 / "labels/00001.png")
    assert stored.mode == "P" and stored.convert("RGB").getpixel((7, 0)) == (128, 64, 128)  # id 7 = road colour
    ds = GTA5Dataset(GTA5Config(root=str(fake_gta5)))
    assert ds.names == ["00001.png", "00002.png", "00003.png"] and ds.mismatched == ["00003.png"]
    item = ds[0]
    assert item["label"].dtype == torch.int64
    assert np.array_equal(item["label"].numpy(), CITYSCAPES_ID_TO_TRAINID[IDS])
    assert item["label"][0, 7] == 0 and item["image"].shape == (3, 6, 8)


def test_size_mismatch_resize_label(fake_gta5, caplog):
    with caplog.at_level(logging.WARNING, logger="dasuite.data.gta5"):
        ds = GTA5Dataset(GTA5Config(root=str(fake_gta5)))
    assert "1 image/label pairs differ in size" in caplog.text and "00003.png: image 8x6, label 9x6" in caplog.text
    item = ds[2]
    assert item["label"].shape == (6, 8) and (item["label"] == 13).all()  # car, resized nearest to the image
    evaluation = build_dataset(GTA5Config(root=str(fake_gta5)), resize_labels=False)
    assert evaluation[2]["label"].shape == (6, 8)
    report = check_dataset(ds, num_workers=0)
    assert report.ok and report.num_items == 3 and report.image_sizes == {(8, 6): 3}


def test_size_mismatch_skip(fake_gta5, caplog):
    with caplog.at_level(logging.WARNING, logger="dasuite.data.gta5"):
        ds = GTA5Dataset(GTA5Config(root=str(fake_gta5), size_mismatch="skip"))
    assert ds.names == ["00001.png", "00002.png"] and "skipped" in caplog.text
    assert check_dataset(ds, num_workers=0).ok


def test_split_file_and_exclude_list(fake_gta5, tmp_path):
    (fake_gta5 / "train.txt").write_text("# train stems\n00001\nimages/00003.png\n")
    (tmp_path / "blank.txt").write_text("00003\n")
    ds = GTA5Dataset(GTA5Config(root=str(fake_gta5), split="train", split_file="train.txt"))
    assert ds.names == ["00001.png", "00003.png"]
    ds = GTA5Dataset(GTA5Config(root=str(fake_gta5), split="train", split_file="train.txt",
                                exclude_list=str(tmp_path / "blank.txt")))
    assert ds.names == ["00001.png"] and ds.mismatched == []
    assert GTA5Dataset(GTA5Config(root=str(fake_gta5), exclude_list=str(tmp_path / "blank.txt"))).names == [
        "00001.png", "00002.png"]
    with pytest.raises(ValidationError, match="needs split_file"):
        GTA5Config(split="val")
    (fake_gta5 / "val.txt").write_text("00009\n")
    with pytest.raises(DasuiteError, match=r"val\.txt.*1 images.*00009"):
        GTA5Dataset(GTA5Config(root=str(fake_gta5), split="val", split_file="val.txt"))


def test_errors_name_the_path(fake_gta5, tmp_path):
    with pytest.raises(DasuiteError, match=r"gta5 image folder .*images.* does not exist"):
        GTA5Dataset(GTA5Config(root=str(tmp_path)))
    (fake_gta5 / "labels/00002.png").unlink()
    with pytest.raises(DasuiteError, match=r"1 gta5 label files do not exist.*labels/00002\.png"):
        GTA5Dataset(GTA5Config(root=str(fake_gta5)))
    (fake_gta5 / "labels/00002.png").write_bytes(b"not a png")
    with pytest.raises(DasuiteError, match=r"labels/00002\.png"):
        GTA5Dataset(GTA5Config(root=str(fake_gta5)))


def test_real_gta5_frame(shared_data, tmp_path):
    source = shared_data / "gta5_sample/demo_images/source.png"
    if not source.is_file():
        pytest.skip(f"{source} is absent")
    root = tmp_path / "gta5"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "images/00042.png").symlink_to(source)
    ids = np.full((1052, 1914), 23, np.uint8)  # sky above, road below, a car: the GTA5 label encoding
    ids[600:] = 7
    ids[700:800, 900:1200] = 26
    write_gta_label(root / "labels/00042.png", ids)
    ds = build_dataset(GTA5Config(root=str(root)), default_resize=(1280, 720))
    item = ds[0]
    assert item["image"].shape == (3, 720, 1280) and item["label"].shape == (720, 1280)
    assert set(item["label"].unique().tolist()) == {0, 10, 13}
    assert item["image"].float().std() > 10  # a real frame, not a flat fixture
    assert image_size(root / "images/00042.png") == (1914, 1052)  # from the PNG header
    image, label, _ = ds.raw_pair(0)
    assert image.shape == (1052, 1914, 3) and label.shape == (1052, 1914)
    report = check_dataset(ds, num_workers=0)
    assert report.ok and report.image_sizes == {(1914, 1052): 1}
