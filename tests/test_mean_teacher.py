"""The ``mean_teacher`` method: EMA math and placement, confidence weights, the unlabelled loss reaching the
gradient, both variants, and exact resume (teacher included) in real engine runs on the toy data."""

import json

import pytest
import torch
from torch import nn

from dasuite.data.mix import classmix_masks, mix
from dasuite.engine.loop import Trainer, train
from dasuite.methods import mean_teacher
from dasuite.methods.mean_teacher import confidence_weights, weighted_ce
from dasuite.models.ema import EMATeacher
from dasuite.rundir import RunDir
from tests.conftest import resumed_teacher_matches_uninterrupted, tiny_toy_config

TARGET = ["data.target.size=[64,48]", "data.target.num_images=16", "data.target.augment.crop=[48,48]"]
NO_STRONG = ["method.strong.policy=null", "method.strong.color_jitter=null", "method.strong.grayscale=0",
             "method.strong.blur=0"]


def mt_config(tmp_path, *overrides, max_iters=6, experiment="cutmix_pseudo.yaml"):
    return tiny_toy_config(tmp_path, *TARGET, *overrides, max_iters=max_iters, experiment=experiment)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_ema_update_is_exact_momentum_average():
    torch.manual_seed(0)
    student = _net()
    ema = EMATeacher(student, momentum=0.9, ramp=False)
    teacher_before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student(torch.randn(2, 3, 8, 8))  # moves the BatchNorm running statistics and num_batches_tracked
    ema.update(student)
    s = student.state_dict()
    for name, t in ema.module.state_dict().items():
        if t.is_floating_point():
            assert torch.equal(t, 0.9 * teacher_before[name] + (1 - 0.9) * s[name]), name
        else:
            assert torch.equal(t, s[name]), name
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    assert ema.updates == 1


def test_ema_ramp_and_state_roundtrip():
    ema = EMATeacher(_net(), momentum=0.99, ramp=True)
    seen = []
    for _ in range(4):
        seen.append(ema.current_momentum())
        ema.update(_net())
    assert seen == [0.0, 0.5, 1 - 1 / 3, 0.75]  # min(1 - 1/(t+1), 0.99)
    other = EMATeacher(_net(), momentum=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 4 and other.current_momentum() == pytest.approx(0.8)
    assert all(torch.equal(a, b) for a, b in zip(other.module.state_dict().values(), ema.module.state_dict().values()))
    with pytest.raises(ValueError, match="momentum"):
        EMATeacher(_net(), momentum=1.0)


def test_confidence_weights_ignore_weight_and_both():
    conf = torch.tensor([[[0.99, 0.5], [0.97, 0.1]]])
    w, q = confidence_weights(conf, 0.968, "ignore")
    assert torch.equal(w, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])) and q.item() == 0.5
    w, _ = confidence_weights(conf, 0.968, "weight")
    assert torch.equal(w, torch.full_like(conf, 0.5))
    w, _ = confidence_weights(conf, 0.968, "both")
    assert torch.equal(w, torch.tensor([[[0.5, 0.0], [0.5, 0.0]]]))


def test_weighted_ce_divides_by_all_pixels_and_skips_ignore():
    logits = torch.zeros(1, 2, 1, 4)  # CE = log 2 everywhere
    labels = torch.tensor([[[0, 1, 255, 0]]])
    weights = torch.tensor([[[1.0, 0.5, 1.0, 0.0]]])
    assert weighted_ce(logits, labels, weights).item() == pytest.approx(1.5 * torch.log(torch.tensor(2.0)).item() / 4)


def test_ema_update_happens_after_the_optimizer_step(tmp_path):
    cfg = mt_config(tmp_path, "method.momentum=0.5", "method.momentum_ramp=false", "train.eval_interval=10",
                    max_iters=1)
    trainer = Trainer(cfg)
    student = trainer.accelerator.unwrap_model(trainer.method.model)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer.fit()
    after = student.state_dict()
    teacher = trainer.method.ema.module.state_dict()
    moved = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert moved, "the optimizer step changed nothing"
    for k in moved:  # the teacher averaged the *stepped* student, not the one the step started from
        assert torch.equal(teacher[k], 0.5 * before[k] + 0.5 * after[k]), k


def _grads(method, batches, seed):
    torch.manual_seed(seed)
    method.model.zero_grad(set_to_none=True)
    losses = method.training_step(batches, 0)
    losses["loss"].backward()
    return losses, torch.cat([p.grad.flatten() for p in method.model.parameters() if p.grad is not None])


@pytest.mark.parametrize("experiment", ["cutmix_pseudo.yaml", "classmix_pseudo.yaml"])
def test_unlabelled_loss_reaches_the_student_gradient(tmp_path, experiment):
    """The notes' bug was ``loss_seg1 + lambda * loss_seg1``: the mixed loss never entered the total."""
    cfg = mt_config(tmp_path, "method.threshold=0.0", "method.unlabelled_weight=2.0", experiment=experiment)
    trainer = Trainer(cfg)
    method, batches = trainer.method, trainer._next_batches()
    losses, with_u = _grads(method, batches, 0)
    assert losses["loss_unlabelled"] > 0 and losses["pseudo_kept"].item() == 1.0
    assert losses["loss"].item() == pytest.approx((losses["loss_seg"] + 2.0 * losses["loss_unlabelled"]).item())
    method.options.unlabelled_weight = 0.0
    _, without = _grads(method, batches, 0)
    assert not torch.allclose(with_u, without)
    method.options.unlabelled_weight = 2.0
    _, again = _grads(method, batches, 0)
    assert torch.allclose(with_u, again)  # same seed, same mask: the difference is the unlabelled term alone


def test_mix_and_fixmatch_batches(tmp_path):
    trainer = Trainer(mt_config(tmp_path, *NO_STRONG, experiment="classmix_pseudo.yaml"))
    method, batches = trainer.method, trainer._next_batches()
    source, target = batches["source"], batches["target"]
    pseudo, _, _ = method.target_pseudo_labels(target)
    torch.manual_seed(5)
    images, labels, weights, _ = method.unlabelled_batch(source, target)
    torch.manual_seed(5)  # the same draw: the mask the method used
    mask = classmix_masks(source["label"], 19)
    assert mask.any() and (~mask).any()
    assert torch.allclose(images, mix(mask, source["image"], target["image"]), atol=1e-5)
    assert torch.equal(labels, torch.where(mask, source["label"], pseudo))
    assert (weights[mask] == 1).all() and torch.allclose(weights[~mask], weights[~mask][0])  # DACS scalar q
    method.options.variant = "fixmatch"
    images, labels, _, _ = method.unlabelled_batch(source, target)
    assert torch.allclose(images, target["image"], atol=1e-5) and torch.equal(labels, pseudo)


def test_mismatched_crops_are_a_clear_error(tmp_path):
    from dasuite.errors import DasuiteError

    trainer = Trainer(mt_config(tmp_path, "data.target.augment.crop=[32,32]"))
    with pytest.raises(DasuiteError, match="augment.crop"):
        trainer.method.training_step(trainer._next_batches(), 0)


def test_resume_restores_the_teacher_exactly(tmp_path, monkeypatch):
    full_cfg = mt_config(tmp_path / "full", experiment="classmix_pseudo.yaml")
    cfg = mt_config(tmp_path / "cut", experiment="classmix_pseudo.yaml")
    resumed_teacher_matches_uninterrupted(full_cfg, cfg, mean_teacher.MeanTeacher, monkeypatch)
    summary = json.loads(RunDir.for_config(cfg).summary.read_text())
    assert summary["eval_model"] == "student"


def test_eval_teacher_option_selects_the_ema_copy(tmp_path):
    trainer = Trainer(mt_config(tmp_path, "method.eval_teacher=true"))
    assert trainer.method.eval_model() is trainer.method.ema.module
    trainer = Trainer(mt_config(tmp_path / "s"))
    assert trainer.method.eval_model() is trainer.method.model


def test_summary_names_the_evaluated_network(tmp_path):
    summary = train(mt_config(tmp_path, "method.eval_teacher=true", max_iters=2))
    assert summary["eval_model"] == "teacher"
