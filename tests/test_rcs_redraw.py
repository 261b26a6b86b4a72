"""Rare-class sampling's crop re-draws (DAFormer's ``min_crop_ratio``) and mmseg's ``cat_max_ratio`` source-crop
rule, drawn in the loader: the exact candidate chosen on constructed labels, the effect on the share of crops that
hold the sampled class, the geometry handed to the device, and exact resume through the engine."""

import numpy as np
import pytest
import torch

from dasuite.config import load_config
from dasuite.data.augment import AugmentConfig
from dasuite.data.sampling import RareClassConfig
from dasuite.data.training import CropRule, build_training_data, redrawn_crop
from dasuite.engine.loop import train
from tests.conftest import ROOT, tiny_toy_config, train_interrupted

CROP = AugmentConfig(scale=(1.0, 1.0), crop=(40, 40), hflip=0.0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DASUITE_CACHE", str(tmp_path / "cache"))


def strip_label(cls: int = 5) -> torch.Tensor:
    """40x100 label: class 1 everywhere except ``cls`` in columns 90-99 (400 pixels)."""
    label = torch.ones(40, 100, dtype=torch.long)
    label[:, 90:] = cls
    return label


def offsets(seed: int, n: int, margin: int) -> list[int]:
    """The crop offsets x0 of the first ``n`` candidates ``redrawn_crop`` draws from ``default_rng(seed)`` at scale
    1 without flips: per candidate a scale draw, a flip draw, then (u_x, u_y); x0 = round(u_x * margin) in float32."""
    rng, out = np.random.default_rng(seed), []
    for _ in range(n):
        rng.uniform(1.0, 1.0), rng.random()
        u = torch.tensor(rng.random((1, 2)), dtype=torch.float32)
        out.append(int((u[0, 0] * float(margin)).round()))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_redraw_picks_the_first_crop_holding_the_class_exactly(seed):
    """Crop [x0, x0 + 40) holds 40 * max(0, x0 - 50) pixels of the class; threshold 3000 * 0.2 = 600 needs x0 > 65."""
    label, rule = strip_label(), CropRule(class_pixels=3000 * 0.2, cat_max_ratio=1.0, max_redraws=10)
    xs = offsets(seed, 11, 60)
    chosen = next((x for x in xs if 40 * max(0, x - 50) > 600), xs[-1])  # none: the 11th (last) is kept
    matrix, cropped = redrawn_crop(label, 5, rule, CROP, np.random.default_rng(seed), 19)
    assert torch.equal(cropped, label[:, chosen:chosen + 40])
    assert matrix[0, 0, 2].item() == pytest.approx(-chosen)  # the image is warped with the same map


def test_no_rule_and_no_class_draw_one_candidate():
    label = strip_label()
    x0 = offsets(3, 1, 60)[0]
    for rule, cls in ((None, 5), (CropRule(600.0, 1.0, 10), -1)):
        _, cropped = redrawn_crop(label, cls, rule, CROP, np.random.default_rng(3), 19)
        assert torch.equal(cropped, label[:, x0:x0 + 40])


def test_cat_max_ratio_redraws_single_class_crops_exactly():
    """Class 2 in columns 0-59, class 3 in 60-99: a crop [x0, x0 + 40) holds 60 - x0 and x0 - 20 columns of them, so
    it is balanced (two classes, none at >= 75%, as mmseg's RandomCrop tests it) iff 30 < x0 < 50; otherwise it is
    re-drawn, up to 10 times."""
    label = torch.full((40, 100), 2, dtype=torch.long)
    label[:, 60:] = 3
    label[:5] = 255  # ignored pixels do not count
    rule = CropRule(class_pixels=0.0, cat_max_ratio=0.75, max_redraws=10)
    for seed in range(8):
        xs = offsets(seed, 11, 60)
        chosen = next((x for x in xs if 30 < x < 50), xs[-1])
        _, cropped = redrawn_crop(label, -1, rule, CROP, np.random.default_rng(seed), 19)
        assert torch.equal(cropped, label[:, chosen:chosen + 40]), seed


def test_rcs_redraw_runs_the_cat_max_rule_inside_each_candidate():
    """DAFormer re-runs the whole source pipeline (RandomCrop with its cat_max loop) per re-draw: class 7 in
    columns 95-99 only, the rest split 2 / 3 at column 50; each accepted crop is balanced and the last one holds 7."""
    label = torch.full((40, 100), 2, dtype=torch.long)
    label[:, 50:] = 3
    label[:, 95:] = 7
    rule = CropRule(class_pixels=100.0, cat_max_ratio=0.75, max_redraws=10)
    for seed in range(6):
        xs, k = offsets(seed, 121, 60), 0
        for attempt in range(11):  # outer: class re-draws; inner: cat_max re-draws, as DAFormer + mmseg nest them
            for inner in range(11):
                x = xs[k]
                k += 1
                counts = torch.bincount(label[:, x:x + 40].flatten(), minlength=19)
                if inner == 10 or ((counts > 0).sum() > 1 and counts.max() < 0.75 * counts.sum()):
                    break
            if attempt == 10 or (label[:, x:x + 40] == 7).sum() > 100:
                break
        _, cropped = redrawn_crop(label, 7, rule, CROP, np.random.default_rng(seed), 19)
        assert torch.equal(cropped, label[:, x:x + 40]), seed


def hit_probability(start: int) -> float:
    """P(one crop holds > 600 pixels of a 20-column strip at ``start``): x0 = round(60 u), so P(x0 = k) = 1/60 for
    k = 1..59 and 1/120 for 0 and 60; the crop [x0, x0 + 40) holds 40 x (overlap) pixels of the strip."""
    p = np.full(61, 1 / 60)
    p[[0, 60]] = 1 / 120
    overlap = np.array([min(k + 40, start + 20) - max(k, start) for k in range(61)])
    return float(p[40 * overlap > 600].sum())


def test_redraws_raise_the_share_of_crops_holding_the_sampled_class():
    """Random 20-column strips of the sampled class: the share of crops holding > 600 of its pixels matches
    ``mean(p_i)`` for one draw and ``mean(1 - (1 - p_i)^11)`` with 10 re-draws (within 4 standard errors), and the
    re-draws raise it from about 0.34 to about 0.94 (measured 0.33 and 0.93)."""
    gen = np.random.default_rng(0)
    n, hits, expected = 300, {0: [], 10: []}, {0: [], 10: []}
    for i in range(n):
        label = torch.ones(40, 100, dtype=torch.long)
        start = int(gen.integers(0, 81))
        label[:, start:start + 20] = 5
        p = hit_probability(start)
        for redraws in hits:
            rule = CropRule(class_pixels=600.0, cat_max_ratio=1.0, max_redraws=redraws)
            _, cropped = redrawn_crop(label, 5, rule, CROP, np.random.default_rng([i, redraws]), 19)
            hits[redraws].append(float((cropped == 5).sum() > 600))
            expected[redraws].append(1 - (1 - p) ** (redraws + 1))
    for redraws in hits:
        mean, var = np.mean(expected[redraws]), np.mean([q * (1 - q) for q in expected[redraws]])
        assert abs(np.mean(hits[redraws]) - mean) < 4 * np.sqrt(var / n) + 1e-9, (redraws, np.mean(hits[redraws]), mean)
    assert np.mean(hits[0]) < 0.5 and np.mean(hits[10]) > 0.85


def test_config_keys_and_rule():
    assert CropRule.from_config(RareClassConfig()) is None  # defaults: no re-draws, the device crops
    rule = CropRule.from_config(RareClassConfig(min_pixels=3000, min_crop_ratio=0.5, cat_max_ratio=0.75))
    assert rule == CropRule(class_pixels=1500.0, cat_max_ratio=0.75, max_redraws=10)
    with pytest.raises(ValueError):
        RareClassConfig(cat_max_ratio=0.0)


def toy_source(**rcs):
    """A toy ``data.source`` entry of 12 64x48 images with rare-class sampling (``rcs`` keys added)."""
    rcs_text = ", ".join(f"{k}: {v}" for k, v in {"temperature": 0.1, "min_pixels": 30, **rcs}.items())
    cfg = load_config(ROOT / "experiments" / "toy" / "source_only.yaml",
                      [f"data.source={{name: toy, num_images: 12, size: [64, 48], rcs: {{{rcs_text}}}, "
                       f"augment: {{scale: [0.75, 1.25], crop: [32, 32], color_jitter: true}}}}"])
    return cfg.data.source


def test_training_data_crops_in_the_loader_and_hands_the_rest_to_the_device():
    data = build_training_data("source", toy_source(min_crop_ratio=1.0))
    assert data.crop_augment.crop == (32, 32) and data.crop_augment.scale == (0.75, 1.25)
    device = data.augment  # what the engine applies on the device: the same minus the geometry
    assert device.crop is None and device.scale == (1.0, 1.0) and device.hflip == 0.0
    assert device.color_jitter == data.crop_augment.color_jitter
    stream = iter(data.sampler(seed=3))
    draws = [next(stream) for _ in range(40)]
    assert [d[3] for d in draws] == list(range(40)) and all(d[2] == 3 and d[1] >= 0 for d in draws)
    item = data[draws[0]]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (32, 32) and 0 <= item["image"].min() and item["image"].max() <= 255
    again = data[draws[0]]
    assert torch.equal(item["image"], again["image"]) and torch.equal(item["label"], again["label"])
    assert data[draws[0][0]]["image"].shape == (3, 48, 64)  # a plain index: the decoded item, no crop
    # the same positions without re-draws keep their first candidate: where it holds the class, the re-drawn crop
    # is that same crop; elsewhere re-draws can only help
    once = build_training_data("source", toy_source(min_crop_ratio=1.0, max_redraws=0))
    held = [[(d[key]["label"] == key[1]).sum().item() > 30 for key in draws] for d in (data, once)]
    assert all(a or not b for a, b in zip(*held)) and sum(held[0]) > sum(held[1]), held
    # without a crop rule nothing changes: the device crops
    plain = build_training_data("source", toy_source())
    assert plain.crop_augment is None and plain.augment.crop == (32, 32)
    assert isinstance(next(iter(plain.sampler(0))), int)


def test_engine_resume_with_crop_redraws_matches_uninterrupted_run(tmp_path, monkeypatch):
    from dasuite.methods import source_only

    settings = ["data.source={name: toy, num_images: 12, rcs: {temperature: 0.1, min_pixels: 30, "
                "min_crop_ratio: 1.0, cat_max_ratio: 0.75}, augment: {crop: [40, 40]}}", "data.resize=[64,48]",
                "train.checkpoint_interval=2", "train.eval_interval=4"]
    full = train(tiny_toy_config(tmp_path / "full", *settings, max_iters=4))
    cfg = tiny_toy_config(tmp_path / "cut", *settings, max_iters=4)
    train_interrupted(cfg, source_only.SourceOnly, 3, monkeypatch)
    resumed = train(cfg, resume=True)
    assert resumed["final"]["mIoU"] == full["final"]["mIoU"]
    assert resumed["final"]["mean_loss"] == full["final"]["mean_loss"]
