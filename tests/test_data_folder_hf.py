"""folder (any images/ + labels/ tree) and hf (a local Hugging Face dataset): pairing, classes and palette from
the YAML, label_map / ignore_index, unlabelled use, errors, offline-only loading and the data check."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from dasuite.config.schema import DatasetEntry
from dasuite.data import FolderConfig, FolderDataset, HFConfig, HFDataset, build_dataset
from dasuite.data.check import check_dataset
from dasuite.data.labels import default_palette
from dasuite.errors import DasuiteError

CLASSES = ["background", "cat", "dog"]
RAW = np.array([[0, 1, 2, 255], [9, 9, 1, 0]], np.uint8)  # 9 = the dataset's own "ignore" value


def save_rgb(path: Path, value: int, shape=(2, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*shape, 3), value, np.uint8)).save(path)


def save_label(path: Path, raw: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    label = Image.fromarray(raw, mode=mode)
    if mode == "P":
        label.putpalette([200, 30, 30] * 256)
    label.save(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    for split in ("train", "val"):
        save_rgb(root / f"images/{split}/a.png", 10)
        save_rgb(root / f"images/{split}/sub/b.jpg", 200)
        save_label(root / f"labels/{split}/a.png", RAW)
        save_label(root / f"labels/{split}/sub/b.png", RAW[::-1].copy(), mode="P")
    return root


def folder(root: Path, **kw) -> FolderDataset:
    options = dict(root=str(root), images_dir="images/{split}", labels_dir="labels/{split}", classes=CLASSES,
                   ignore_index=9)
    return FolderDataset(FolderConfig(**{**options, **kw}))


# ---- folder ------------------------------------------------------------------------------------------------

def test_folder_pairs_by_stem_and_maps_labels(tree):
    ds = folder(tree, split="val", palette=[[0, 0, 0], [255, 0, 0], [0, 0, 255]])
    assert ds.names == ["a.png", "sub/b.jpg"]
    assert ds.files[1][1] == tree / "labels/val/sub/b.png"
    assert ds.classes.names == tuple(CLASSES) and ds.classes.palette[1] == (255, 0, 0)
    a, b = ds[0], ds[1]
    assert a["label"].tolist() == [[0, 1, 2, 255], [255, 255, 1, 0]]
    assert b["label"].tolist() == [[255, 255, 1, 0], [0, 1, 2, 255]]  # paletted label read as indices
    assert (a["image"] == 10).all() and b["image"].shape == (3, 2, 4)
    assert check_dataset(ds, num_workers=0).ok
    assert folder(tree).classes.palette == default_palette(3)


def test_folder_label_map_and_unknown_values(tree):
    save_label(tree / "labels/train/a.png", np.array([[10, 20, 30, 40], [9, 10, 10, 10]], np.uint8))
    mapped = folder(tree, label_map={10: 0, 20: 1, 30: 2})
    assert mapped[0]["label"].tolist() == [[0, 1, 2, 255], [255, 0, 0, 0]]  # 40 is not listed: ignored
    assert check_dataset(mapped, num_workers=0).ok  # with a label_map, unlisted values are ignored on purpose
    plain = folder(tree)  # without one, raw values >= len(classes) are not classes: reported by the check
    report = check_dataset(plain, num_workers=0)
    assert report.bad_values == {10: ["a.png"], 20: ["a.png"], 30: ["a.png"], 40: ["a.png"]}
    assert (plain[0]["label"] == 255).all()


def test_folder_unlabelled_resize_and_eval(tree):
    import shutil

    shutil.rmtree(tree / "labels/val")
    ds = build_dataset(FolderConfig(root=str(tree), images_dir="images/{split}", split="val", classes=CLASSES,
                                    labelled=False), default_resize=(2, 1))
    assert "label" not in ds[0] and ds[0]["image"].shape == (3, 1, 2)
    assert check_dataset(ds, num_workers=0).ok
    cfg = FolderConfig(root=str(tree), images_dir="images/{split}", labels_dir="labels/{split}", classes=CLASSES)
    assert build_dataset(cfg, (2, 1))[0]["label"].shape == (1, 2)
    assert build_dataset(cfg, (2, 1), resize_labels=False)[0]["label"].shape == (2, 4)


def test_folder_errors(tree):
    with pytest.raises(DasuiteError, match="no root given"):
        FolderDataset(FolderConfig(classes=CLASSES))
    (tree / "labels/train/sub/b.png").unlink()
    with pytest.raises(DasuiteError, match=r"1 folder label files do not exist.*labels/train/sub/b\.png"):
        folder(tree)
    save_rgb(tree / "images/val/a.jpg", 3)
    with pytest.raises(DasuiteError, match=r"share a stem.*images/val/a"):
        folder(tree, split="val")
    with pytest.raises(DasuiteError, match=r"image folder .*images/test.* does not exist"):
        folder(tree, split="test")
    with pytest.raises(ValidationError, match="palette has 1 colours for 3 classes"):
        FolderConfig(classes=CLASSES, palette=[[1, 2, 3]])
    with pytest.raises(ValidationError, match="maps 5 to 3"):
        FolderConfig(classes=CLASSES, label_map={5: 3})
    with pytest.raises(ValidationError, match="0..255"):
        FolderConfig(classes=CLASSES, palette=[[0, 0, 0], [0, 0, 0], [0, 300, 0]])
    with pytest.raises(ValidationError):
        FolderConfig(classes=[])


def test_folder_from_yaml_entry(tree):
    entry = TypeAdapter(DatasetEntry).validate_python({
        "name": "folder", "root": str(tree), "images_dir": "images/{split}", "labels_dir": "labels/{split}",
        "split": "train", "classes": CLASSES, "palette": [[0, 0, 0], [1, 1, 1], [2, 2, 2]],
        "label_map": {0: 0, 1: 1, 2: 2}, "ignore_index": 9,
    })
    assert isinstance(entry, FolderConfig) and len(build_dataset(entry)) == 2


# ---- hf ----------------------------------------------------------------------------------------------------

@pytest.fixture
def saved_dict(tmp_path: Path) -> Path:
    import datasets

    files = tmp_path / "files"
    save_rgb(files / "x0.png", 10)
    save_rgb(files / "x1.png", 50)
    save_label(files / "m0.png", RAW, mode="P")
    save_label(files / "m1.png", RAW[::-1].copy())
    features = datasets.Features(
        {"img": datasets.Image(), "mask": datasets.Image(), "caption": datasets.Value("string")})
    split = {"img": [str(files / "x0.png"), str(files / "x1.png")], "mask": [str(files / "m0.png"),
             str(files / "m1.png")], "caption": ["a", "b"]}
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(split, features=features),
        "validation": datasets.Dataset.from_dict({k: v[:1] for k, v in split.items()}, features=features),
    })
    dd.save_to_disk(str(tmp_path / "saved"))
    for p in files.iterdir():
        p.unlink()  # the saved dataset must hold the bytes itself
    return tmp_path / "saved"


def hf(root: Path, **kw) -> HFDataset:
    return HFDataset(HFConfig(**{"root": str(root), "image_column": "img", "label_column": "mask",
                                 "classes": CLASSES, "ignore_index": 9, **kw}))


def test_hf_saved_dataset_dict(saved_dict):
    ds = hf(saved_dict)
    assert len(ds) == 2 and ds.names == ["x0.png", "x1.png"]
    assert ds[0]["label"].tolist() == [[0, 1, 2, 255], [255, 255, 1, 0]]
    assert ds[1]["label"].tolist() == [[255, 255, 1, 0], [0, 1, 2, 255]]
    assert (ds[1]["image"] == 50).all() and ds[1]["image"].shape == (3, 2, 4)
    assert check_dataset(ds, num_workers=2).ok  # rows decode in DataLoader worker processes
    val = build_dataset(HFConfig(root=str(saved_dict), split="validation", image_column="img", label_column="mask",
                                 classes=CLASSES, labelled=False), default_resize=(2, 2))
    assert len(val) == 1 and "label" not in val[0] and val[0]["image"].shape == (3, 2, 2)


def test_hf_image_folder_with_metadata(tmp_path):
    root = tmp_path / "imgfolder"
    for split in ("train", "test"):
        save_rgb(root / split / "f0.png", 7)
        save_label(root / split / "f0_mask.png", RAW)
        (root / split / "metadata.jsonl").write_text(
            json.dumps({"file_name": "f0.png", "label_file_name": "f0_mask.png"}) + "\n")
    ds = HFDataset(HFConfig(root=str(root), split="test", classes=CLASSES, ignore_index=9,
                            cache_dir=str(tmp_path / "cache")))
    assert ds.names == ["f0.png"] and ds[0]["label"].tolist() == [[0, 1, 2, 255], [255, 255, 1, 0]]
    assert check_dataset(ds, num_workers=0).ok


def test_hf_errors(saved_dict, tmp_path):
    with pytest.raises(DasuiteError, match="never downloads"):
        HFDataset(HFConfig(root="someone/cityscapes", classes=CLASSES))
    with pytest.raises(DasuiteError, match=r"no split 'test' \(splits: train, validation\)"):
        hf(saved_dict, split="test")
    with pytest.raises(DasuiteError, match=r"no column 'label' \(columns: img, mask, caption\)"):
        hf(saved_dict, label_column="label")
    with pytest.raises(DasuiteError, match=r"column 'caption' .*expected a datasets.Image"):
        hf(saved_dict, label_column="caption")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DasuiteError, match="neither a save_to_disk directory"):
        hf(tmp_path / "plain")


def test_hf_bytes_rows_and_a_corrupt_cell(tmp_path):
    import datasets

    good = tmp_path / "m.png"
    save_label(good, RAW)
    cells = {"image": [{"bytes": b"not an image", "path": None}], "label": [{"bytes": good.read_bytes(), "path": None}]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    datasets.Dataset.from_dict(cells, features=features).save_to_disk(str(tmp_path / "bad"))
    ds = HFDataset(HFConfig(root=str(tmp_path / "bad"), classes=CLASSES, ignore_index=9))
    assert ds.names == ["000000"]
    with pytest.raises(DasuiteError, match=r"hf: row 0 \(000000\), column 'image': cannot decode"):
        ds[0]
