"""Cityscapes: the real 8x-downsampled val frame, a fake tree in the exact encoding (labelIds / labelTrainIds),
unlabelled splits, resize views, errors and the data check."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter

from dasuite.config.schema import DatasetEntry
from dasuite.data import CityscapesConfig, CityscapesDataset, build_dataset
from dasuite.data.check import check_dataset
from dasuite.data.io import read_label
from dasuite.data.labels import CITYSCAPES_ID_TO_TRAINID
from dasuite.errors import DasuiteError

SAMPLE = "cityscapes_sample/pseudo_cityscapes_dataset"
FRAME = "frankfurt_000000_000294"
# every labelId 0..33 once per row, plus an id Cityscapes does not define (40) only where asked
IDS = np.tile(np.arange(34, dtype=np.uint8), (4, 1))  # 4x34


def write_frame(root: Path, split: str, city: str, frame: str, ids: np.ndarray, train_ids: bool = True) -> None:
    img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    rgb = np.stack([ids * 7, np.full_like(ids, 50), np.full_like(ids, 200)], -1).astype(np.uint8)
    Image.fromarray(rgb).save(img_dir / f"{frame}_leftImg8bit.png")
    Image.fromarray(ids, mode="L").save(gt_dir / f"{frame}_gtFine_labelIds.png")
    if train_ids:
        Image.fromarray(CITYSCAPES_ID_TO_TRAINID[ids], mode="L").save(gt_dir / f"{frame}_gtFine_labelTrainIds.png")


@pytest.fixture
def fake_cityscapes(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    write_frame(root, "train", "bremen", "bremen_000000_000019", IDS)
    write_frame(root, "train", "aachen", "aachen_000001_000019", IDS[:, ::-1].copy())
    write_frame(root, "val", "lindau", "lindau_000000_000019", IDS)
    write_frame(root, "test", "berlin", "berlin_000000_000019", np.zeros((4, 34), np.uint8), train_ids=False)
    return root


def test_labelids_mapped_and_sorted_by_city(fake_cityscapes):
    ds = build_dataset(CityscapesConfig(root=str(fake_cityscapes), split="train"))
    assert len(ds) == 2 and ds.num_classes == 19
    assert ds.names == ["aachen_000001_000019_leftImg8bit.png", "bremen_000000_000019_leftImg8bit.png"]
    item = ds[1]
    assert item["image"].shape == (3, 4, 34) and item["label"].shape == (4, 34)
    row = item["label"][0].tolist()
    assert row[7] == 0 and row[8] == 1 and row[26] == 13 and row[33] == 18  # road, sidewalk, car, bicycle
    assert [row[i] for i in (0, 1, 6, 9, 10, 14, 15, 16, 18, 29, 30)] == [255] * 11
    assert sorted(set(row) - {255}) == list(range(19))
    assert np.array_equal(item["image"][0, 0].numpy(), (np.arange(34) * 7).astype(np.uint8))


def test_label_train_ids_mode_equals_mapping(fake_cityscapes):
    ids_view = CityscapesDataset(CityscapesConfig(root=str(fake_cityscapes), split="val"))
    train_view = CityscapesDataset(CityscapesConfig(root=str(fake_cityscapes), split="val",
                                                    label_type="labelTrainIds"))
    assert train_view.files[0][1].name == "lindau_000000_000019_gtFine_labelTrainIds.png"
    assert np.array_equal(ids_view[0]["label"].numpy(), train_view[0]["label"].numpy())


def test_unlabelled_test_split(fake_cityscapes, caplog):
    ds = build_dataset(CityscapesConfig(root=str(fake_cityscapes), split="test", labelled=False))
    item = ds[0]
    assert "label" not in item and item["image"].shape == (3, 4, 34)
    report = check_dataset(ds, num_workers=0)
    assert report.ok and not report.labelled
    with caplog.at_level(logging.WARNING, logger="dasuite.data.cityscapes"):
        labelled = CityscapesDataset(CityscapesConfig(root=str(fake_cityscapes), split="test"))
    assert "not public" in caplog.text
    assert (labelled[0]["label"] == 255).all()  # all-unlabelled test labels are all ignore


def test_resize_and_eval_views(fake_cityscapes):
    cfg = CityscapesConfig(root=str(fake_cityscapes), split="train")
    train = build_dataset(cfg, default_resize=(17, 2))
    evaluation = build_dataset(cfg, default_resize=(17, 2), resize_labels=False)
    assert train[0]["image"].shape == (3, 2, 17) and train[0]["label"].shape == (2, 17)
    assert evaluation[0]["image"].shape == (3, 2, 17) and evaluation[0]["label"].shape == (4, 34)
    image, label, name = train.raw_pair(0)
    assert image.shape == (4, 34, 3) and label.shape == (4, 34) and name == train.names[0]


def test_errors_name_the_path(fake_cityscapes, tmp_path):
    with pytest.raises(DasuiteError, match=r"leftImg8bit/val.*does not exist"):
        CityscapesDataset(CityscapesConfig(root=str(tmp_path), split="val"))
    with pytest.raises(DasuiteError, match=r"berlin_000000_000019_gtFine_labelTrainIds\.png.*csCreateTrainIdLabelImgs"):
        CityscapesDataset(CityscapesConfig(root=str(fake_cityscapes), split="test", label_type="labelTrainIds"))
    (fake_cityscapes / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DasuiteError, match=r"1 cityscapes labelIds label files do not exist.*bremen_000000_000019"):
        CityscapesDataset(CityscapesConfig(root=str(fake_cityscapes), split="train"))
    with pytest.raises(Exception, match="split"):
        CityscapesConfig(split="training")


def test_data_check_and_unknown_ids(fake_cityscapes):
    report = check_dataset(CityscapesDataset(CityscapesConfig(root=str(fake_cityscapes), split="train")),
                           num_workers=0)
    assert report.ok and report.num_items == 2 and report.class_pixels == [8] * 19 and report.ignore_pixels == 120
    bad = IDS.copy()
    bad[0, 0] = 40  # not a Cityscapes labelId: ignored in training, reported by the check
    write_frame(fake_cityscapes, "val", "ulm", "ulm_000000_000019", bad)
    ds = CityscapesDataset(CityscapesConfig(root=str(fake_cityscapes), split="val"))
    report = check_dataset(ds, num_workers=0)
    assert report.bad_values == {40: ["ulm_000000_000019_leftImg8bit.png"]}
    assert ds[1]["label"][0, 0] == 255


def test_schema_entry(fake_cityscapes):
    entry = TypeAdapter(DatasetEntry).validate_python(
        {"name": "cityscapes", "root": str(fake_cityscapes), "split": "val", "labelled": False})
    assert isinstance(entry, CityscapesConfig) and len(build_dataset(entry)) == 1


# ---- the real (8x downsampled) Cityscapes val frame -----------------------------------------------------------

def test_real_sample(shared_data):
    root = shared_data / SAMPLE
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    ids_view = CityscapesDataset(CityscapesConfig(root=str(root), split="val"))
    train_view = CityscapesDataset(CityscapesConfig(root=str(root), split="val", label_type="labelTrainIds"))
    assert ids_view.names == [f"{FRAME}_leftImg8bit.png"] == train_view.names
    a, b = ids_view[0], train_view[0]
    assert a["image"].shape == (3, 128, 256) and a["label"].shape == (128, 256) == b["label"].shape
    for label in (a["label"], b["label"]):
        assert set(label.unique().tolist()) <= set(range(19)) | {255}
    assert set(a["label"].unique().tolist()) == {0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 255}
    # cityscapesScripts re-rasterises labelTrainIds from polygons: close to, but not equal to, the mapped labelIds
    assert (a["label"] == b["label"]).float().mean() > 0.99
    stored = read_label(root / f"gtFine/val/frankfurt/{FRAME}_gtFine_labelIds.png")
    assert np.array_equal(a["label"].numpy(), CITYSCAPES_ID_TO_TRAINID[stored])
    for ds in (ids_view, train_view):
        report = check_dataset(ds, num_workers=0)
        assert report.ok and report.image_sizes == {(256, 128): 1} and report.class_pixels[0] > 0
    unlabelled = CityscapesDataset(CityscapesConfig(root=str(root), split="val", labelled=False))
    assert "label" not in unlabelled[0] and np.array_equal(unlabelled[0]["image"], a["image"])
