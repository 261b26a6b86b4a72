"""HRDA / MIC's pseudo-label margins of the full image (``augment.pseudo_margins``): the crop's ``pseudo_valid`` map
follows the random scale, crop and flip (checked against coordinate ramps warped like the image), is drawn with the
crop in the loader when a crop rule moves the geometry there, and zeroes the mean teacher's target weights."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from dasuite.data.augment import AugmentConfig, DeviceAugment, crop_matrix, pseudo_valid, warp_images
from dasuite.data.training import build_training_data
from dasuite.engine.loop import Trainer
from tests.conftest import tiny_toy_config
from tests.test_rcs_redraw import toy_source

TARGET = ["data.target.size=[64,48]", "data.target.num_images=8", "data.target.augment.crop=[48,48]"]


def _box(h: int, w: int, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    box = torch.zeros(h, w)
    box[top:h - bottom, left:w - right] = 1
    return box


def test_identity_geometry_gives_the_margin_box():
    aug = DeviceAugment(AugmentConfig(scale=(1.0, 1.0), hflip=0.0, pseudo_margins=(3, 7, 5, 2)))
    out = aug.batch(torch.zeros(2, 3, 30, 40, dtype=torch.uint8))
    assert torch.equal(out["pseudo_valid"], _box(30, 40, 3, 7, 5, 2).expand(2, 30, 40))
    assert "pseudo_valid" not in DeviceAugment(AugmentConfig()).batch(torch.zeros(1, 3, 30, 40, dtype=torch.uint8))


def test_the_map_follows_scale_crop_and_flip_like_the_image():
    """Warp ramps of the source column and row with the same maps: wherever a crop pixel samples the image
    unambiguously, the map is 1 exactly when its source pixel lies inside the margins."""
    torch.manual_seed(0)
    h, w, crop, margins = 60, 80, (48, 40), (6, 12, 9, 4)
    n = 64
    matrix = crop_matrix(0.5 + 1.5 * torch.rand(n), torch.rand(n) < 0.5, torch.rand(n, 2), (h, w), crop)
    cols = torch.arange(w, dtype=torch.float32).expand(h, w)
    rows = torch.arange(h, dtype=torch.float32).view(-1, 1).expand(h, w)
    ramps = torch.stack([cols, rows, torch.ones(h, w)]).expand(n, 3, h, w)
    x, y, inside = warp_images(ramps, matrix, crop).unbind(1)
    valid = pseudo_valid(matrix, (h, w), crop, margins)
    top, bottom, left, right = margins
    expected = (inside > 0.5) & (x.round() >= left) & (x.round() < w - right) & (y.round() >= top) & \
        (y.round() < h - bottom)
    # sampling lands exactly between two source pixels, or straddles the image border: either answer is right
    clear = ((x - x.round()).abs() < 0.49) & ((y - y.round()).abs() < 0.49) & ((inside < 0.01) | (inside > 0.99))
    assert clear.float().mean() > 0.95 and valid.shape == (n, crop[1], crop[0])
    assert torch.equal(valid[clear], expected[clear].float())
    assert 0.2 < valid.mean() < 0.9  # the draws cover margins, padding and interior


def test_device_augment_uses_its_own_geometry_draws():
    cfg = AugmentConfig(scale=(0.5, 2.0), crop=(32, 24), hflip=0.5, pseudo_margins=(2, 4, 3, 1))
    aug = DeviceAugment(cfg)
    images = torch.randint(0, 255, (4, 3, 40, 50), dtype=torch.uint8)
    torch.manual_seed(5)
    out = aug.batch(images)
    torch.manual_seed(5)
    matrix = aug._matrix(images.float())
    assert torch.equal(out["pseudo_valid"], pseudo_valid(matrix, (40, 50), (32, 24), (2, 4, 3, 1)))
    torch.manual_seed(5)  # the map adds no random draw: the images are those of a run without margins
    plain = DeviceAugment(cfg.model_copy(update={"pseudo_margins": None})).batch(images)
    assert torch.equal(plain["image"], out["image"])


def test_loader_draws_the_map_with_a_re_drawn_crop():
    entry = toy_source(min_crop_ratio=1.0)
    entry = entry.model_copy(update={"augment": entry.augment.model_copy(
        update={"scale": (1.0, 1.0), "hflip": 0.0, "crop": (32, 48), "pseudo_margins": (4, 8, 6, 2)})})
    data = build_training_data("source", entry)
    assert data.augment.pseudo_margins is None  # the device sees the crop only
    item = data[next(iter(data.sampler(seed=1)))]
    valid = item["pseudo_valid"]
    assert valid.shape == (48, 32)
    assert valid[:4].eq(0).all() and valid[40:].eq(0).all()  # the crop spans the full height: rows exact
    on = valid[20].nonzero().flatten()
    assert len(on) > 0 and torch.equal(on, torch.arange(int(on[0]), int(on[-1]) + 1))  # one interval of columns
    assert valid[4:40].eq(valid[20]).all()
    batch = next(iter(data.loader(batch_size=2, num_workers=0, seed=1)))  # collated with the images
    assert batch["pseudo_valid"].shape == (2, 48, 32) and torch.equal(batch["pseudo_valid"][0], valid)


def test_engine_hands_a_loader_drawn_map_to_the_method(tmp_path):
    cfg = tiny_toy_config(tmp_path, "data.source.rcs={temperature: 0.1, min_pixels: 30, min_crop_ratio: 1.0}",
                          "data.source.augment.scale=[1.0,1.0]", "data.source.augment.pseudo_margins=[4,8,6,2]",
                          max_iters=2)
    source = Trainer(cfg)._next_batches()["source"]
    valid = source["pseudo_valid"]
    assert valid.shape == source["label"].shape == (2, 48, 48)
    assert valid[:, :4].eq(0).all() and valid[:, 40:].eq(0).all() and valid[:, 4:40].sum() > 0


def test_mean_teacher_zeroes_target_weights_outside_the_margins(tmp_path):
    cfg = tiny_toy_config(tmp_path, *TARGET, "method.threshold=0.0", "data.target.augment.scale=[1.0,1.0]",
                          "data.target.augment.hflip=0.0", "data.target.augment.pseudo_margins=[5,10,0,0]",
                          max_iters=2, experiment="cutmix_pseudo.yaml")
    trainer = Trainer(cfg)
    target = trainer._next_batches()["target"]
    assert torch.equal(target["pseudo_valid"], _box(48, 48, 5, 10, 0, 0).expand(2, 48, 48))
    _, weights, log = trainer.method.target_pseudo_labels(target)
    assert log["pseudo_kept"].item() == 1.0  # q counts every target pixel, the margins included
    assert weights[:, :5].eq(0).all() and weights[:, -10:].eq(0).all() and weights[:, 5:-10].eq(1).all()
    _, plain, _ = trainer.method.target_pseudo_labels({k: v for k, v in target.items() if k != "pseudo_valid"})
    assert plain.eq(1).all()
    trainer.fit()  # and it trains


def test_negative_margins_are_refused():
    with pytest.raises(ValidationError, match="pseudo_margins"):
        AugmentConfig(pseudo_margins=(0, -1, 0, 0))
