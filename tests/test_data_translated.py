"""Translated sources: a parent's labels and names with images from images_root (the cycleGTA layout), the
extension change, labels following a translated image of another size, errors and the config entry."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from dasuite.config import load_config
from dasuite.config.schema import DatasetEntry
from dasuite.data import GTA5Config, TranslatedConfig, TranslatedDataset, build_dataset
from dasuite.data.check import check_dataset
from dasuite.data.io import image_size
from dasuite.data.labels import CITYSCAPES_ID_TO_TRAINID
from dasuite.errors import DasuiteError

ROOT = Path(__file__).resolve().parents[1]
IDS = np.array([[7, 7, 8, 8], [26, 26, 23, 0]], np.uint8).repeat(2, 0).repeat(2, 1)  # 4x8 labelIds


def save(path: Path, array: np.ndarray, mode=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode=mode)
    if mode == "P":
        image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])  # a full palette keeps 8-bit indices
    image.save(path)


@pytest.fixture
def gta_and_cycle(tmp_path: Path) -> tuple[Path, Path]:
    gta, cycle = tmp_path / "gta5", tmp_path / "cycle_gta5"
    for index, stem in enumerate(("00001", "00002", "00003")):
        save(gta / f"images/{stem}.png", np.full((4, 8, 3), 10, np.uint8))
        save(gta / f"labels/{stem}.png", IDS, mode="P")  # GTA5 encoding: indices are labelIds
        save(cycle / f"{stem}.jpg", np.full((2, 4, 3), 100 + 50 * index, np.uint8))  # translated at half size
    return gta, cycle


def translated(gta: Path, cycle: Path, **kw) -> TranslatedDataset:
    return TranslatedDataset(TranslatedConfig(parent=GTA5Config(root=str(gta)), images_root=str(cycle),
                                              image_ext=".jpg", **kw))


def test_parent_labels_with_translated_images(gta_and_cycle):
    gta, cycle = gta_and_cycle
    ds = translated(gta, cycle)
    parent = ds.parent
    assert ds.names == parent.names == ["00001.png", "00002.png", "00003.png"]
    assert ds.files[1] == (cycle / "00002.jpg", gta / "labels/00002.png")
    item = ds[1]
    assert item["image"].shape == (3, 2, 4) and abs(int(item["image"].float().mean()) - 150) <= 2
    # the label follows the translated image's size (nearest): the 2x-upsampled ids come back exactly
    assert np.array_equal(item["label"].numpy(), CITYSCAPES_ID_TO_TRAINID[IDS[::2, ::2]])
    assert parent[1]["label"].shape == (4, 8) and image_size(cycle / "00002.jpg") == (4, 2)
    report = check_dataset(ds, num_workers=0)
    assert report.ok and report.num_items == 3 and report.image_sizes == {(4, 2): 3}
    resized = build_dataset(TranslatedConfig(parent=GTA5Config(root=str(gta)), images_root=str(cycle),
                                             image_ext=".jpg"), default_resize=(8, 4))
    assert resized[0]["image"].shape == (3, 4, 8) and resized[0]["label"].shape == (4, 8)


def test_missing_translated_files_are_listed(gta_and_cycle):
    gta, cycle = gta_and_cycle
    (cycle / "00001.jpg").unlink()
    (cycle / "00003.jpg").unlink()
    with pytest.raises(DasuiteError, match=r"2 of 3 translated images do not exist.*00001\.jpg.*00003\.jpg"):
        translated(gta, cycle)
    with pytest.raises(DasuiteError, match=r"3 of 3 .*00001\.png"):  # no image_ext: the parent's extension
        TranslatedDataset(TranslatedConfig(parent=GTA5Config(root=str(gta)), images_root=str(cycle)))
    with pytest.raises(DasuiteError, match=r"images_root.*does not exist"):
        translated(gta, cycle / "nowhere")


def test_cityscapes_parent_layout(tmp_path):
    city, out = tmp_path / "cityscapes", tmp_path / "translated"
    frame = "lindau_000000_000019"
    save(city / f"leftImg8bit/val/lindau/{frame}_leftImg8bit.png", np.zeros((4, 8, 3), np.uint8))
    save(city / f"gtFine/val/lindau/{frame}_gtFine_labelIds.png", IDS)
    save(out / f"val/lindau/{frame}_leftImg8bit.png", np.full((4, 8, 3), 77, np.uint8))
    entry = TypeAdapter(DatasetEntry).validate_python(
        {"name": "translated", "parent": {"name": "cityscapes", "root": str(city), "split": "val"},
         "images_root": str(out)})
    assert isinstance(entry, TranslatedConfig) and entry.split == "val"
    ds = build_dataset(entry)
    assert ds.names == [f"{frame}_leftImg8bit.png"] and (ds[0]["image"] == 77).all()
    assert np.array_equal(ds[0]["label"].numpy(), CITYSCAPES_ID_TO_TRAINID[IDS])
    unlabelled = TranslatedDataset(TranslatedConfig(
        parent={"name": "cityscapes", "root": str(city), "split": "val", "labelled": False}, images_root=str(out)))
    assert "label" not in unlabelled[0]


def test_config_validation_and_experiment_entry(gta_and_cycle, tmp_path):
    gta, cycle = gta_and_cycle
    with pytest.raises(ValidationError, match="root .* is not used"):
        TranslatedConfig(parent=GTA5Config(root=str(gta)), images_root=str(cycle), root=str(cycle))
    with pytest.raises(ValidationError, match="parent"):
        TranslatedConfig(parent={"name": "toy"}, images_root=str(cycle))
    source = {"name": "translated", "parent": {"name": "gta5", "root": str(gta)}, "images_root": str(cycle),
              "image_ext": ".jpg"}
    cfg = load_config(ROOT / "experiments/toy/source_only.yaml",
                      [f"data.source={yaml.safe_dump(source, default_flow_style=True).strip()}"])
    assert cfg.data.source.name == "translated" and cfg.data.source.split == "all"
    assert len(build_dataset(cfg.data.source)) == 3
