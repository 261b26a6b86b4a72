"""CamVid (SegNet layout): folders, list files, folds, label mapping, resize, errors, image I/O and the data check.

Tests marked by the ``shared_data`` fixture run on the real files and skip when the folder is absent; the rest use
a tiny fake SegNet tree written to ``tmp_path``.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from dasuite.data import CamVidConfig, CamVidDataset, build_dataset
from dasuite.data.camvid import FOLDS_DIR, read_list_file
from dasuite.data.check import check_dataset
from dasuite.data.io import read_label, read_rgb
from dasuite.errors import DasuiteError

ROOT = Path(__file__).resolve().parents[1]
FOLD_LISTS = ("fold1_train", "fold1_val", "fold2_train", "fold2_val")


def write_pair(root: Path, split: str, name: str, label: np.ndarray, label_size=None) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
    h, w = label.shape
    image = np.stack([label * 20, np.full_like(label, 100), np.full_like(label, 7)], -1).astype(np.uint8)
    Image.fromarray(image).save(root / split / name)
    lab = Image.fromarray(label.astype(np.uint8), mode="L")
    (lab.resize(label_size, Image.NEAREST) if label_size else lab).save(root / f"{split}annot" / name)


@pytest.fixture
def fake_camvid(tmp_path: Path) -> Path:
    root = tmp_path / "camvid"
    label = np.arange(48, dtype=np.uint8).reshape(6, 8) % 12  # every value 0..11
    for split, names in {"train": ["0001TP_000030.png", "0001TP_000060.png"], "val": ["0016E5_00001.png"],
                         "test": ["Seq05VD_f00030.png"]}.items():
        for name in names:
            write_pair(root, split, name, label)
    (root / "train.txt").write_text(
        "/SegNet/CamVid/train/0001TP_000030.png /SegNet/CamVid/trainannot/0001TP_000030.png\n"
        "\n/SegNet/CamVid/train/0001TP_000060.png /SegNet/CamVid/trainannot/0001TP_000060.png\n"
    )
    return root


def test_folders_mapping_and_names(fake_camvid):
    ds = build_dataset(CamVidConfig(root=str(fake_camvid), split="train"))
    assert len(ds) == 2 and ds.num_classes == 11
    item = ds[0]
    assert item["name"] == "0001TP_000030.png"
    assert item["image"].shape == (3, 6, 8) and item["label"].shape == (6, 8)
    raw = np.arange(48).reshape(6, 8) % 12
    expected = np.where(raw == 11, 255, raw)
    assert np.array_equal(item["label"].numpy(), expected)
    assert np.array_equal(item["image"][0].numpy(), (raw * 20).astype(np.uint8))
    assert len(CamVidDataset(CamVidConfig(root=str(fake_camvid), split="trainval"))) == 3


def test_root_env_variable_and_resize(fake_camvid, monkeypatch):
    monkeypatch.setenv("DASUITE_DATA", str(fake_camvid.parent))
    ds = build_dataset(CamVidConfig(split="test"), default_resize=(4, 3))
    item = ds[0]
    assert item["image"].shape == (3, 3, 4) and item["label"].shape == (3, 4)
    assert set(item["label"].unique().tolist()) <= set(range(11)) | {255}
    assert ds.raw_pair(0)[0].shape == (6, 8, 3)  # the data check sees the stored size


def test_list_file_prefix_and_single_column(fake_camvid, tmp_path):
    from_list = CamVidDataset(CamVidConfig(root=str(fake_camvid), list_file="train.txt"))
    from_folder = CamVidDataset(CamVidConfig(root=str(fake_camvid), split="train"))
    assert from_list.files == from_folder.files
    single = tmp_path / "mine.txt"
    single.write_text("# my subset\nval/0016E5_00001.png\n")
    pairs = read_list_file(single, fake_camvid)
    assert pairs == [(fake_camvid / "val/0016E5_00001.png", fake_camvid / "valannot/0016E5_00001.png")]


def test_errors_name_the_path(fake_camvid, tmp_path):
    with pytest.raises(DasuiteError, match="does not exist"):
        CamVidDataset(CamVidConfig(root=str(tmp_path / "nowhere")))
    with pytest.raises(DasuiteError, match="unset environment variable"):
        CamVidDataset(CamVidConfig(root="$DASUITE_SURELY_UNSET_VAR/camvid"))
    (fake_camvid / "testannot" / "Seq05VD_f00030.png").unlink()
    with pytest.raises(DasuiteError, match=r"testannot/Seq05VD_f00030\.png.*does not exist"):
        CamVidDataset(CamVidConfig(root=str(fake_camvid), split="test"))
    with pytest.raises(DasuiteError, match=r"camvid/nope\.txt"):
        CamVidDataset(CamVidConfig(root=str(fake_camvid), list_file="nope.txt"))
    (fake_camvid / "bad.txt").write_text("a.png b.png c.png\n")
    with pytest.raises(DasuiteError, match=r"bad\.txt:1"):
        CamVidDataset(CamVidConfig(root=str(fake_camvid), list_file="bad.txt"))
    with pytest.raises(ValidationError, match="either list_file"):
        CamVidConfig(list_file="train.txt", fold=1)
    with pytest.raises(ValidationError):
        CamVidConfig(fold=3)
    with pytest.raises(ValidationError, match="'other_train' is a part of the other fold: it needs fold"):
        CamVidConfig(split="other_train")


def test_image_io(tmp_path):
    pal = Image.fromarray(np.array([[0, 3], [11, 255]], np.uint8), mode="P")
    pal.putpalette([200, 10, 10] * 256)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(read_label(tmp_path / "p.png"), [[0, 3], [11, 255]])  # indices, not colours
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DasuiteError, match=r"rgb\.png.*single-channel"):
        read_label(tmp_path / "rgb.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DasuiteError, match=r"broken\.png"):
        read_rgb(tmp_path / "broken.png")
    Image.fromarray(np.full((4, 6), 9, np.uint8), mode="L").save(tmp_path / "grey.png")
    rgb = read_rgb(tmp_path / "grey.png", size=(3, 2))
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8 and (rgb == 9).all()


def test_data_check_finds_bad_values_and_size_mismatch(fake_camvid):
    write_pair(fake_camvid, "val", "0016E5_00003.png", np.full((6, 8), 40, np.uint8))  # 40 is no class
    write_pair(fake_camvid, "val", "0016E5_00005.png", np.zeros((6, 8), np.uint8), label_size=(9, 6))
    report = check_dataset(CamVidDataset(CamVidConfig(root=str(fake_camvid), split="val")), num_workers=0)
    assert not report.ok and report.num_items == 3
    assert report.bad_values == {40: ["0016E5_00003.png"]}
    assert report.size_mismatches == [("0016E5_00005.png", (8, 6), (9, 6))]
    text = report.format()
    assert "value 40" in text and "0016E5_00005.png: image 8x6, label 9x6" in text


def test_shipped_fold_lists_are_well_formed():
    lists = {name: (FOLDS_DIR / f"{name}.txt").read_text().split("\n") for name in FOLD_LISTS}
    paths = {name: [p for p in lines if p and not p.startswith("#")] for name, lines in lists.items()}
    assert [len(paths[n]) for n in FOLD_LISTS] == [317, 79, 244, 61]
    everything = sum(paths.values(), [])
    assert len(everything) == len(set(everything)) == 701
    seqs = {n: {Path(p).name.split("_")[0] for p in paths[n]} for n in FOLD_LISTS}
    assert seqs["fold1_train"] == seqs["fold1_val"] == {"0001TP", "0006R0", "Seq05VD"}
    assert seqs["fold2_train"] == seqs["fold2_val"] == {"0016E5"}


# ---- real CamVid files ----------------------------------------------------------------------------------------

def real(shared_data: Path, **kw) -> CamVidDataset:
    return CamVidDataset(CamVidConfig(root=str(shared_data / "camvid"), **kw))


def test_real_counts_shapes_names(shared_data):
    counts = {s: len(real(shared_data, split=s)) for s in ("train", "val", "test", "trainval")}
    assert counts == {"train": 367, "val": 101, "test": 233, "trainval": 468}
    ds = real(shared_data, split="test")
    item = ds[0]
    assert item["image"].shape == (3, 360, 480) and item["label"].shape == (360, 480)
    assert [ds.files[i][0].name for i in range(3)] == [ds[i]["name"] for i in range(3)]
    assert item["name"] == "0001TP_008550.png"


def test_real_labels_mapped(shared_data):
    report = check_dataset(real(shared_data, split="val"), num_workers=2)
    assert report.ok and report.num_items == 101 and report.image_sizes == {(480, 360): 101}
    assert report.ignore_pixels > 0 and all(c > 0 for c in report.class_pixels)
    raw = read_label(shared_data / "camvid/valannot/0016E5_07959.png")
    mapped = real(shared_data, split="val")[0]["label"].numpy()
    assert np.array_equal(mapped == 255, raw == 11) and np.array_equal(mapped[raw < 11], raw[raw < 11])


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_real_list_files_equal_folders(shared_data, split):
    assert real(shared_data, list_file=f"{split}.txt").files == real(shared_data, split=split).files


def test_real_folds(shared_data):
    folds = {(k, s): real(shared_data, fold=k, split=s) for k in (1, 2)
             for s in ("train", "val", "test", "trainval", "other_train", "other_val")}
    files = {key: {p for p, _ in ds.files} for key, ds in folds.items()}
    everything = files[1, "train"] | files[1, "val"] | files[2, "train"] | files[2, "val"]
    assert sum(len(folds[k, s]) for k in (1, 2) for s in ("train", "val")) == len(everything) == 701
    all_real = {p for s in ("train", "val", "test") for p, _ in real(shared_data, split=s).files}
    assert everything == all_real
    for k, other in ((1, 2), (2, 1)):
        assert files[k, "test"] == files[other, "train"] | files[other, "val"]
        assert files[k, "trainval"] == files[k, "train"] | files[k, "val"]
        assert files[k, "other_train"] == files[other, "train"] and files[k, "other_val"] == files[other, "val"]
        assert not files[k, "test"] & files[k, "trainval"]
    item = folds[1, "val"][0]
    assert item["label"].shape == (360, 480) and item["name"] == "0001TP_009660.png"


def test_real_fold_lists_match_the_tool(shared_data):
    spec = importlib.util.spec_from_file_location("make_camvid_folds", ROOT / "tools" / "make_camvid_folds.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    regenerated = tool.make_folds(shared_data / "camvid")
    for name in FOLD_LISTS:
        shipped = [p for p in (FOLDS_DIR / f"{name}.txt").read_text().splitlines() if not p.startswith("#")]
        assert shipped == regenerated[name]


def test_real_resize(shared_data):
    ds = build_dataset(CamVidConfig(root=str(shared_data / "camvid"), split="val"), default_resize=(240, 180))
    item = ds[5]
    assert item["image"].shape == (3, 180, 240) and item["label"].shape == (180, 240)
    assert set(item["label"].unique().tolist()) <= set(range(11)) | {255}


def test_eval_datasets_keep_full_resolution_labels(fake_camvid, monkeypatch):
    monkeypatch.setenv("DASUITE_DATA", str(fake_camvid.parent))
    cfg = CamVidConfig(root=str(fake_camvid), split="val")
    train_view = build_dataset(cfg, (8, 6))[0]
    eval_view = build_dataset(cfg, (8, 6), resize_labels=False)[0]
    assert tuple(train_view["image"].shape) == tuple(eval_view["image"].shape) == (3, 6, 8)
    assert tuple(train_view["label"].shape) == (6, 8)
    stored = read_label(sorted((fake_camvid / "valannot").iterdir())[0])
    assert tuple(eval_view["label"].shape) == stored.shape
