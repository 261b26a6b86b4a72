"""``ohem``: the hard-pixel cross-entropy against a hand computation (both of its branches), its effect on the
gradient of a real training step, and the error for methods without the shared labelled loss."""

import math

import numpy as np
import pytest
import torch

from dasuite.engine.loop import Trainer
from dasuite.errors import ConfigError
from dasuite.losses.segmentation import ohem_seg_loss, seg_loss
from dasuite.methods import Method
from tests.conftest import tiny_toy_config


def _by_hand(logits: torch.Tensor, labels: torch.Tensor, thresh: float, min_kept: int) -> float:
    """UniMatch's rule written out over the labelled pixels: sort their label probabilities, take the min_kept-th
    smallest as the threshold when it exceeds ``thresh``, average -log p over the pixels at or below it."""
    probs = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1]).numpy().astype(np.float64)
    flat = labels.reshape(-1).numpy()
    p = np.array([probs[i, t] for i, t in enumerate(flat) if t != 255])
    if len(p) < min_kept:
        kept = p
    else:
        kth = sorted(np.concatenate([p, np.ones((flat == 255).sum())]))[min_kept - 1]
        kept = p[p <= max(thresh, kth)]
    return float(np.mean(-np.log(kept)))


@pytest.mark.parametrize(("scale", "thresh", "min_kept"), [(1.0, 0.7, 50), (4.0, 0.3, 200), (0.2, 0.7, 10),
                                                           (1.0, 0.7, 100000)])
def test_matches_a_hand_computation(scale, thresh, min_kept):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 9, 11) * scale
    labels = torch.randint(0, 5, (2, 9, 11))
    labels[:, :2] = 255
    got = ohem_seg_loss(logits, labels, thresh, min_kept).item()
    assert got == pytest.approx(_by_hand(logits, labels, thresh, min_kept), rel=1e-5)
    if min_kept > labels.ne(255).sum():  # too few labelled pixels: plain cross-entropy
        assert got == pytest.approx(seg_loss(logits, labels).item(), rel=1e-6)


def test_threshold_rises_to_keep_min_kept_pixels_and_all_ignored_is_zero():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0] = torch.tensor([4.0, 3.0, 2.0, -1.0])  # label 0 probabilities: 0.98, 0.95, 0.88, 0.27
    labels = torch.zeros(1, 1, 4, dtype=torch.long)
    p = torch.sigmoid(logits[0, 0, 0])
    assert ohem_seg_loss(logits, labels, 0.7, 1).item() == pytest.approx(-math.log(p[3]), rel=1e-5)  # only p <= 0.7
    three = -(p[1:].log().mean()).item()  # the 3rd smallest (0.95) exceeds 0.7: every p <= 0.95 is kept
    assert ohem_seg_loss(logits, labels, 0.7, 3).item() == pytest.approx(three, rel=1e-5)
    assert ohem_seg_loss(logits, torch.full_like(labels, 255), 0.7, 1).item() == 0.0


def test_ohem_changes_the_gradient_of_a_training_step(tmp_path):
    grads = {}
    # an untrained network: label probabilities near 1/19, so thresh 0.05 drops some pixels
    for name, extra in (("ce", []), ("ohem", ["ohem={thresh: 0.05, min_kept: 100}"]),
                        ("ohem_all", ["ohem={thresh: 0.05, min_kept: 100000000}"])):
        torch.manual_seed(0)
        trainer = Trainer(tiny_toy_config(tmp_path / name, *extra))
        batches = trainer._next_batches()
        torch.manual_seed(1)
        trainer.method.training_step(batches, 0)["loss"].backward()
        grads[name] = torch.cat([p.grad.flatten() for p in trainer.method.model.parameters() if p.grad is not None])
    assert not torch.allclose(grads["ce"], grads["ohem"])
    assert torch.allclose(grads["ce"], grads["ohem_all"], atol=1e-6)  # fewer labelled pixels than min_kept: plain CE


def test_methods_without_the_shared_labelled_loss_refuse_it(tmp_path):
    class OwnLoss(Method):  # a method that computes its labelled loss itself
        def training_step(self, batches, step):
            raise AssertionError

    with pytest.raises(ConfigError, match="ohem: method OwnLoss does not compute the shared"):
        OwnLoss(tiny_toy_config(tmp_path, "ohem={thresh: 0.7}"), 19)
    with pytest.raises(ConfigError, match="ohem: method CycleGAN does not compute the shared"):
        Trainer(tiny_toy_config(tmp_path / "gan", "ohem={thresh: 0.7}", "data.val=null", "data.test=null",
                                experiment="cyclegan.yaml"))
