"""The shipped GTA5 list files and ``tools/gta5_lists.py``: the blank frames and the official split (from the
dataset's ``split.mat``) land in the dataset folder as stem files that the ``gta5`` dataset reads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from scipy.io import savemat

from dasuite.data import GTA5Config, build_dataset
from tests.conftest import ROOT
from tests.test_data_gta5 import IDS, write_pair

SHIPPED = ROOT / "dasuite" / "data" / "lists" / "gta5_blank_frames.txt"


def load_tool():
    spec = importlib.util.spec_from_file_location("gta5_lists", ROOT / "tools" / "gta5_lists.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blank_frames_list_is_shipped_and_packaged() -> None:
    stems = [line for line in SHIPPED.read_text().splitlines() if line and not line.startswith("#")]
    assert stems == ["15188", "17705"]
    assert '"lists/*.txt"' in (ROOT / "pyproject.toml").read_text()


def test_tool_writes_lists_the_dataset_reads(tmp_path: Path, capsys) -> None:
    root = tmp_path / "gta5"
    for stem in ("00001", "00002", "00003", "15188", "17705"):
        write_pair(root, stem, IDS)
    split = tmp_path / "split.mat"
    # MATLAB column vectors of 1-based frame numbers, as in read_mapping.zip's split.mat
    savemat(split, {"trainIds": np.array([[3], [1], [15188]], np.float64), "valIds": np.array([[2]]),
                    "testIds": np.array([[17705]])})
    assert load_tool().main(["--root", str(root), "--split-mat", str(split)]) == 0
    out = capsys.readouterr().out
    assert "train.txt: 3 frames  (WARNING: 12403 expected)" in out
    assert (root / "train.txt").read_text() == "00001\n00003\n15188\n"
    assert (root / "blank_frames.txt").read_text() == SHIPPED.read_text()
    names = lambda ds: [ds[i]["name"] for i in range(len(ds))]  # noqa: E731
    everything = build_dataset(GTA5Config(root=str(root), exclude_list="blank_frames.txt"))
    assert names(everything) == ["00001.png", "00002.png", "00003.png"]
    train = build_dataset(GTA5Config(root=str(root), split="train", split_file="train.txt",
                                     exclude_list="blank_frames.txt"))
    assert names(train) == ["00001.png", "00003.png"]
    # without split.mat only the blank frames are written
    other = tmp_path / "other"
    assert load_tool().main(["--root", str(other)]) == 0
    assert sorted(p.name for p in other.iterdir()) == ["blank_frames.txt"]
