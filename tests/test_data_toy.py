"""Toy street scenes: item contract, determinism, disjoint splits, the two appearances, resize, data check."""

import time

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from dasuite.data import DATASETS, ToyConfig, ToyDataset, build_dataset
from dasuite.data.check import check_dataset
from dasuite.data.toy import BUILDING, CAR, PERSON, ROAD, SIDEWALK, SKY, TOY_CLASSES, render_toy


def test_item_contract_and_registry():
    assert DATASETS.get("toy") is ToyDataset
    ds = build_dataset(ToyConfig(split="val", num_images=3))
    assert len(ds) == 3 and ds.num_classes == 19
    item = ds[2]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 96, 128)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (96, 128)
    assert item["name"] == "toy_synthetic_val_00002.png"
    assert set(item["label"].unique().tolist()) <= set(TOY_CLASSES)
    with pytest.raises(IndexError):
        ds[3]


def test_default_lengths_and_config_validation():
    assert [len(ToyDataset(ToyConfig(split=s))) for s in ("train", "val", "test")] == [200, 40, 40]
    with pytest.raises(ValidationError):
        ToyConfig(domain="cartoon")
    with pytest.raises(ValidationError):
        ToyConfig(num_images=0)


def test_deterministic_and_streams_disjoint():
    a_img, a_lab = render_toy(0, "real", "train", 5, (128, 96))
    b_img, b_lab = render_toy(0, "real", "train", 5, (128, 96))
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    others = [render_toy(0, "real", "val", 5, (128, 96)), render_toy(1, "real", "train", 5, (128, 96)),
              render_toy(0, "real", "train", 6, (128, 96))]
    for img, lab in others:
        assert not np.array_equal(img, a_img) and not np.array_equal(lab, a_lab)


def test_layouts_look_like_streets():
    labels = np.stack([render_toy(0, d, "train", i, (128, 96))[1] for d in ("synthetic", "real") for i in range(40)])
    freq = np.bincount(labels.ravel(), minlength=19) / labels.size
    for cls in (ROAD, SIDEWALK, BUILDING, SKY, CAR, PERSON):
        assert freq[cls] > 0.005, f"class {cls} is (almost) never drawn"
    assert (labels[:, 0, :] == SKY).mean() > 0.4 or (labels[:, 0, :] == BUILDING).mean() > 0.4  # top: sky/facades
    assert (labels[:, -1, 40:88] == ROAD).mean() > 0.5  # bottom centre: road
    # Both domains draw from the same layout distribution.
    syn, real = labels[:40], labels[40:]
    for cls in (ROAD, SKY, BUILDING):
        assert abs((syn == cls).mean() - (real == cls).mean()) < 0.08


def test_appearance_differs_between_domains():
    """Synthetic: near-constant colour per class; real: much wider per-class colour spread and a shifted mean."""
    spreads, means = {}, {}
    for domain in ("synthetic", "real"):
        pairs = [render_toy(0, domain, "train", i, (128, 96)) for i in range(12)]
        road = np.concatenate([img[lab == ROAD] for img, lab in pairs]).astype(float)
        spreads[domain], means[domain] = road.std(0).mean(), road.mean(0)
    assert spreads["synthetic"] < 10 < spreads["real"]
    assert np.abs(means["synthetic"] - means["real"]).max() > 15


def test_size_and_resize():
    ds = ToyDataset(ToyConfig(num_images=2, size=(64, 48)))
    assert ds[0]["image"].shape == (3, 48, 64)
    resized = build_dataset(ToyConfig(num_images=2, size=(64, 48)), default_resize=(32, 24))
    item = resized[1]
    assert item["image"].shape == (3, 24, 32) and item["label"].shape == (24, 32)
    raw_img, raw_lab, _ = resized.raw_pair(1)
    assert raw_img.shape == (48, 64, 3)
    assert set(item["label"].unique().tolist()) <= set(np.unique(raw_lab).tolist())  # nearest: no new values
    own = build_dataset(ToyConfig(num_images=2, size=(64, 48), resize=(40, 30)), default_resize=(32, 24))
    assert own[0]["image"].shape == (3, 30, 40)


def test_generation_is_cheap():
    ds = ToyDataset(ToyConfig(num_images=30, domain="real"))
    ds[0]
    start = time.perf_counter()
    for i in range(30):
        ds[i]
    per_item = (time.perf_counter() - start) / 30
    assert per_item < 0.05, f"{per_item * 1e3:.1f} ms per 128x96 item"


def test_data_check_on_toy():
    report = check_dataset(ToyDataset(ToyConfig(num_images=6)), num_workers=0)
    assert report.ok and report.num_items == 6 and report.image_sizes == {(128, 96): 6}
    assert sum(report.class_pixels) == 6 * 128 * 96 and report.ignore_pixels == 0
    assert report.class_frequency[ROAD] > 0.1
    assert "toy (train): 6 items" in report.format()
