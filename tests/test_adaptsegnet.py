"""The ``adaptsegnet`` method: loss wiring and gradient routing (the adversarial term reaches the segmenter, D's
loss only D), the D/segmenter alternation in a real engine iteration, single- and multi-level training, the
target BatchNorm option, config errors, and exact resume (discriminators and their optimizer included)."""

import copy
import json

import pytest
import torch

from dasuite.engine.loop import Trainer, train
from dasuite.errors import ConfigError
from dasuite.fileio import load_torch
from dasuite.losses import seg_loss
from dasuite.losses.gan import gan_loss
from dasuite.methods import adaptsegnet
from dasuite.methods.adaptsegnet import AdaptSegNet, AdaptSegNetConfig, batchnorm_eval
from dasuite.rundir import RunDir
from tests.conftest import tiny_toy_config, train_interrupted

TARGET = ["data.target.size=[64,48]", "data.target.num_images=16", "data.target.augment.crop=[48,48]"]
MULTI = ["model.arch=deeplabv2_r50", "model.options={multi_level: true}", "method.levels=[main,aux]"]


def asn_config(tmp_path, *overrides, max_iters=6):
    return tiny_toy_config(tmp_path, *TARGET, *overrides, max_iters=max_iters, experiment="adaptsegnet.yaml")


def test_config_defaults_and_errors():
    cfg = AdaptSegNetConfig()
    assert (cfg.objective, cfg.levels, cfg.adv_weight.main, cfg.adv_weight.aux, cfg.seg_weight_aux, cfg.ndf,
            cfg.target_bn) == ("vanilla", ["main", "aux"], 0.001, 0.0002, 0.1, 64, "train")
    assert (cfg.discriminator.lr, cfg.discriminator.betas, cfg.discriminator.schedule.power) == (1e-4, (0.9, 0.99), 0.9)
    for bad in (["aux"], ["main", "main"], []):
        with pytest.raises(ValueError, match=r"\[main\] or \[main, aux\]"):
            AdaptSegNetConfig(levels=bad)


@pytest.mark.parametrize("model", [[], ["model.arch=deeplabv2_r50", "model.options={multi_level: false}"]])
def test_aux_level_without_aux_logits_is_a_clear_error(tmp_path, model):
    with pytest.raises(ConfigError, match=r"method.levels=\['main', 'aux'\] needs auxiliary logits.*levels=\[main\]"):
        Trainer(asn_config(tmp_path, *model, "method.levels=[main,aux]"))


def _step_grads(method, batches):
    """(losses, segmenter gradient, discriminator gradient) of one training_step's total loss."""
    method.model.zero_grad(set_to_none=True)
    method.adversary.optimizer.zero_grad(set_to_none=True)
    losses = method.training_step(batches, 0)
    losses["loss"].backward()
    flat = lambda params: torch.cat([p.grad.flatten() for p in params if p.grad is not None])  # noqa: E731
    return losses, flat(method.model.parameters()), flat(method.adversary.modules.parameters())


def test_adversarial_loss_reaches_segmenter_and_d_loss_only_d(tmp_path):
    trainer = Trainer(asn_config(tmp_path, *MULTI))
    method, batches = trainer.method, trainer._next_batches()
    weights = method.options.adv_weight
    weights.main, weights.aux = 0.0, 0.0
    losses, seg0, d0 = _step_grads(method, batches)
    expected = (losses["loss_seg"] + 0.1 * losses["loss_seg_aux"] + losses["loss_d_main"] + losses["loss_d_aux"])
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # with zero adversarial weights the segmenter's gradient is that of the source seg losses alone: no D term
    method.model.zero_grad(set_to_none=True)
    src = method.predict(batches["source"]["image"])
    label = batches["source"]["label"]
    (seg_loss(src["main"], label) + 0.1 * seg_loss(src["aux"], label)).backward()
    assert torch.allclose(seg0, torch.cat([p.grad.flatten() for p in method.model.parameters() if p.grad is not None]))
    weights.main, weights.aux = 5.0, 1.0  # large weights: the adversarial part stands well above float32 noise
    losses1, seg1, d1 = _step_grads(method, batches)
    weights.main, weights.aux = 10.0, 2.0
    losses2, seg2, d2 = _step_grads(method, batches)
    assert losses1["loss_adv_main"] > 0 and losses1["loss_adv_aux"] > 0
    assert not torch.allclose(seg0, seg1)  # the adversarial loss reaches the segmenter...
    step = (seg1 - seg0).abs().max()
    assert step > 1e-6 and ((seg2 - seg0) - 2 * (seg1 - seg0)).abs().max() < 1e-2 * step  # ...linearly in its weight
    assert d0.abs().sum() > 0 and torch.equal(d0, d1) and torch.equal(d0, d2)  # D's gradient ignores the adv term
    for key in ("d_main_source", "d_main_target", "d_aux_source", "d_aux_target"):
        assert 0 < losses[key].item() < 1
    assert losses["lr_d_main"].item() == pytest.approx(1e-4)


def test_one_engine_iteration_alternates_segmenter_and_discriminator(tmp_path):
    trainer = Trainer(asn_config(tmp_path, *MULTI, "train.eval_interval=10", max_iters=1))
    method = trainer.method
    d_params = {id(p) for p in method.adversary.modules.parameters()}
    assert not d_params & {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    seen = {}
    original = AdaptSegNet.training_step

    def record(self, batches, step):
        seen.update(batches=batches, model=copy.deepcopy(self.model), d=copy.deepcopy(self.adversary.modules))
        return original(self, batches, step)

    method.training_step = record.__get__(method)
    trainer.fit()
    # the manual alternation: D's loss on detached predictions of the pre-step segmenter, one Adam step
    model, discriminators, batches = seen["model"], seen["d"], seen["batches"]
    before = [p.detach().clone() for p in discriminators.parameters()]
    loss = 0
    for role, real in (("source", True), ("target", False)):
        image = batches[role]["image"]
        logits, feats = model(image, return_features=True)
        for level, out in (("main", logits), ("aux", feats["aux_logits"])):
            probs = AdaptSegNet.maps(out.detach(), image.shape[-2:])
            loss = loss + 0.5 * gan_loss(discriminators[level](probs), real, "vanilla")
    loss.backward()
    torch.optim.Adam(discriminators.parameters(), lr=1e-4, betas=(0.9, 0.99)).step()
    after = method.adversary.modules
    for (name, p), q, old in zip(after.named_parameters(), discriminators.parameters(), before):
        assert torch.allclose(p, q, atol=1e-7, rtol=0), name
        assert (p - old).abs().max() > 5e-5, name  # every D parameter moved by about one Adam step (lr 1e-4)
    assert trainer.method.adversary.scheduler.last_epoch == 1


@pytest.mark.parametrize("variant", [["method.objective=lsgan"], MULTI])
def test_single_and_multi_level_train_through_the_engine(tmp_path, variant):
    summary = train(asn_config(tmp_path, *variant, max_iters=2))
    assert summary["final"]["iteration"] == 2 and summary["test"]["mIoU"] is not None
    state = load_torch(RunDir.for_config(asn_config(tmp_path, *variant)).last)["method"]["adversary"]
    assert set(state["discriminators"]) == ({"main", "aux"} if variant == MULTI else {"main"})
    assert state["scheduler"]["last_epoch"] == 2


def test_target_bn_eval_leaves_running_statistics(tmp_path):
    trainer = Trainer(asn_config(tmp_path, *MULTI[:1], "model.options={multi_level: false, freeze_bn: false}",
                                 "method.target_bn=eval"))
    method, batches = trainer.method, trainer._next_batches()
    norms = [m for m in method.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.training for m in norms)
    before = [m.running_mean.clone() for m in norms]
    with batchnorm_eval(method.model):
        assert not any(m.training for m in norms)
        method.predict(batches["target"]["image"])
    assert all(m.training for m in norms) and all(torch.equal(a, m.running_mean) for a, m in zip(before, norms))
    method.predict(batches["target"]["image"])  # target_bn: train moves them
    assert not all(torch.equal(a, m.running_mean) for a, m in zip(before, norms))


def _untimed(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "sec_per_image"}


def test_resume_restores_discriminators_exactly(tmp_path, monkeypatch):
    full_cfg = asn_config(tmp_path / "full")
    full = train(full_cfg)
    cfg = asn_config(tmp_path / "cut")
    train_interrupted(cfg, adaptsegnet.AdaptSegNet, 4, monkeypatch)
    assert load_torch(RunDir.for_config(cfg).last)["method"]["adversary"]["scheduler"]["last_epoch"] == 3
    resumed = train(cfg, resume=True)
    assert _untimed(resumed["final"]) == _untimed(full["final"]) and _untimed(resumed["test"]) == _untimed(full["test"])
    a = load_torch(RunDir.for_config(full_cfg).last)["method"]["adversary"]
    b = load_torch(RunDir.for_config(cfg).last)["method"]["adversary"]
    assert all(torch.equal(a["discriminators"]["main"][k], v) for k, v in b["discriminators"]["main"].items())
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert a["scheduler"] == b["scheduler"]
    metrics = [[_untimed(json.loads(line)) for line in RunDir.for_config(c).metrics.read_text().splitlines()]
               for c in (cfg, full_cfg)]
    assert len(metrics[0]) == 2 and metrics[0] == metrics[1]
