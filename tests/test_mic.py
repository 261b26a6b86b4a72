"""MIC's masked image consistency and DAFormer's pseudo-label crop in ``mean_teacher``: the block mask against a
hand computation and its statistics, the masked loss against the target's own pseudo-labels and weights (one
teacher forward), the crop-ignore weights against a hand computation, both variants, and an unchanged run without
the blocks. (Gradient reach and exact resume: ``tests/test_method_contract.py``, whose toy overrides set both.)"""

import pytest
import torch

from dasuite.data.masking import block_masks, mask_images
from dasuite.data.mix import cutmix_masks
from dasuite.engine.loop import Trainer
from dasuite.methods.mean_teacher import confidence_weights, ignore_rows, weighted_ce
from tests.conftest import tiny_toy_config

TARGET = ["data.target.size=[64,48]", "data.target.num_images=8", "data.target.augment.crop=[48,48]",
          "model.options={drop_path: 0.0, dropout: 0.0}"]
MIC = "method.masking={weight: 1.0, patch: 8, ratio: 0.7, augment: true}"


def trainer(tmp_path, *overrides):
    cfg = tiny_toy_config(tmp_path, *TARGET, *overrides, max_iters=2, experiment="cutmix_pseudo.yaml")
    return Trainer(cfg)


# ------------------------------------------------------------------------------------------------ block mask
def test_block_mask_is_the_upsampled_grid_of_kept_cells():
    torch.manual_seed(3)
    mask = block_masks(2, 48, 64, 16, 0.7, torch.device("cpu"))
    torch.manual_seed(3)
    grid = torch.rand(2, 1, 3, 4) > 0.7  # round(48/16) x round(64/16) cells, kept where the draw exceeds the ratio
    expected = grid.repeat_interleave(16, 2).repeat_interleave(16, 3).float()
    assert mask.shape == (2, 1, 48, 64) and torch.equal(mask, expected)
    # sizes that the patch does not divide: round(H / patch) cells, nearest upsampling; at least one cell
    assert block_masks(1, 40, 100, 16, 0.5, torch.device("cpu")).shape == (1, 1, 40, 100)
    assert block_masks(1, 5, 5, 64, 0.0, torch.device("cpu")).eq(1).all()  # one cell, always kept at ratio 0


def test_block_mask_masks_the_ratio_of_cells_and_images_become_the_mean_colour():
    torch.manual_seed(0)
    masks = block_masks(256, 64, 64, 8, 0.7, torch.device("cpu"))
    masked = 1 - masks.mean().item()  # 256 * 64 cells
    assert abs(masked - 0.7) < 4 * (0.7 * 0.3 / (256 * 64)) ** 0.5
    images = torch.randn(256, 3, 64, 64)
    torch.manual_seed(0)
    out = mask_images(images, 8, 0.7)
    assert torch.equal(out, images * masks)  # normalised images: masked pixels are 0, i.e. the mean colour
    assert ((out == 0).all(1).float().mean() - masked).abs() < 1e-6


# ------------------------------------------------------------------------------------------- crop ignore
def test_ignore_rows_against_a_hand_computation():
    confidence = torch.tensor([[0.99, 0.5], [0.97, 0.1], [0.2, 0.98], [0.99, 0.99], [0.5, 0.5]]).unsqueeze(0)
    weights, q = confidence_weights(confidence, 0.968, "weight")
    assert q.item() == pytest.approx(5 / 10)  # DAFormer: the kept fraction counts every target pixel
    out = ignore_rows(weights, 1, 2)  # rows 0, 3 and 4 of the 5 get weight 0
    assert torch.equal(out, torch.tensor([[[0.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.0, 0.0], [0.0, 0.0]]]))
    assert torch.equal(ignore_rows(weights, 0, 0), weights) and ignore_rows(weights, 3, 3).eq(0).all()


def test_pseudo_ignore_zeroes_target_rows_before_mixing(tmp_path):
    t = trainer(tmp_path, "method.pseudo_ignore={top: 10, bottom: 20}", "method.threshold=0.0")
    method, batches = t.method, t._next_batches()
    _, weights, log = method.target_pseudo_labels(batches["target"])
    assert log["pseudo_kept"].item() == 1.0  # q = 1 at threshold 0, the ignored rows included
    assert weights[:, :10].eq(0).all() and weights[:, -20:].eq(0).all() and weights[:, 10:-20].eq(1).all()
    torch.manual_seed(4)
    _, _, mixed, _ = method.unlabelled_batch(batches["source"], batches["target"])
    torch.manual_seed(4)  # the same draw: the box the method pasted
    c = method.options.cutmix
    pasted = cutmix_masks(2, 48, 48, mixed.device, c.area, c.aspect, c.p)
    rows = torch.zeros_like(pasted)
    rows[:, :10], rows[:, -20:] = True, True
    assert (rows & pasted).any() and mixed[rows & pasted].eq(1).all()  # pasted source pixels keep weight 1 there
    assert mixed[rows & ~pasted].eq(0).all() and mixed[~rows].eq(1).all()


# ------------------------------------------------------------------------------------------------- masked loss
def _step(method, batches, seed=0):
    torch.manual_seed(seed)
    return method.training_step(batches, 0)


def test_masked_loss_uses_the_target_pseudo_labels_and_one_teacher_forward(tmp_path):
    t = trainer(tmp_path, MIC, "method.masking.weight=2.0", "method.threshold=0.0", "method.confidence=ignore",
                "method.pseudo_ignore={top: 4, bottom: 10}")
    method, batches = t.method, t._next_batches()
    calls = []
    hook = method.ema.module.register_forward_hook(lambda *_: calls.append(1))
    losses = _step(method, batches)
    hook.remove()
    assert len(calls) == 1  # the masked loss reuses the teacher's pseudo-labels of the weak target images
    total = losses["loss_seg"] + losses["loss_unlabelled"] + 2.0 * losses["loss_masked"]
    assert losses["loss"].item() == pytest.approx(total.item(), rel=1e-5) and losses["loss_masked"] > 0
    # replay the step's draws up to MIC's: its input is strong(target) times a block mask, its targets (y, w)
    pseudo, weights, _ = method.target_pseudo_labels(batches["target"])
    torch.manual_seed(0)
    method.model(batches["source"]["image"])
    method.unlabelled_batch(batches["source"], batches["target"])
    method.model(torch.zeros_like(batches["target"]["image"]))
    expected_images = method.strong.photometric(batches["target"]["image"])
    expected_images = expected_images * block_masks(2, 48, 48, 8, 0.7, expected_images.device)
    with torch.no_grad():
        expected = weighted_ce(method.model(expected_images), pseudo, weights)
    assert losses["loss_masked"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert weights[:, :4].eq(0).all() and weights[:, -10:].eq(0).all()  # the crop ignore reaches MIC's weights


def test_masking_changes_nothing_else_and_its_weight_scales_the_term(tmp_path):
    plain = trainer(tmp_path / "a", "method.threshold=0.0")  # every target pixel kept: a non-zero masked loss
    with_mic = trainer(tmp_path / "b", MIC, "method.threshold=0.0")
    with_mic.method.model.load_state_dict(plain.method.model.state_dict())
    with_mic.method.ema.module.load_state_dict(plain.method.ema.module.state_dict())
    batches = plain._next_batches()
    a, b = _step(plain.method, batches), _step(with_mic.method, batches)
    assert "loss_masked" not in a and b["loss_masked"] > 0
    for key in ("loss_seg", "loss_unlabelled", "pseudo_kept", "pseudo_confidence"):
        assert torch.equal(a[key], b[key]), key  # MIC's draws come after the others
    with_mic.method.options.masking.weight = 0.0
    c = _step(with_mic.method, batches)
    assert c["loss"].item() == pytest.approx(a["loss"].item(), rel=1e-6)


def test_fixmatch_variant_and_no_augment(tmp_path):
    t = trainer(tmp_path, MIC, "method.variant=fixmatch", "method.masking.augment=false", "method.masking.ratio=1.0",
                "method.threshold=0.0")
    method, batches = t.method, t._next_batches()
    masked = method.masked_images(batches["target"]["image"])
    assert masked.eq(0).all()  # ratio 1: every block masked, no colour augmentation
    losses = _step(method, batches)
    assert torch.isfinite(losses["loss_masked"]) and losses["loss_masked"] > 0
    t.method.options.masking.ratio = 0.0
    assert torch.equal(method.masked_images(batches["target"]["image"]), batches["target"]["image"])
