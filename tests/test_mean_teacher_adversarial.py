"""``mean_teacher``'s ``adversarial:`` block (notes S11: seg loss + adversarial loss on predictions + CutMix): the
config, which logits feed the discriminator, gradient routing (the adversarial term reaches the student linearly in
its weight, D's loss only D), one D step per iteration, exact resume with the discriminator, and no change without
the block."""

import json

import pytest
import torch

from dasuite.config import load_config
from dasuite.engine.loop import Trainer, train
from dasuite.errors import ConfigError, DasuiteError
from dasuite.fileio import load_torch
from dasuite.losses.gan import gan_loss
from dasuite.methods import mean_teacher
from dasuite.methods.output_adversarial import OutputAdversarialConfig, OutputAdversary, output_probabilities
from dasuite.rundir import RunDir
from tests.conftest import ROOT, tiny_toy_config

TARGET = ["data.target.size=[64,48]", "data.target.num_images=16", "data.target.augment.crop=[48,48]"]


def adv_config(tmp_path, *overrides, max_iters=6):
    return tiny_toy_config(tmp_path, *TARGET, *overrides, max_iters=max_iters, experiment="cutmix_adv.yaml")


def test_config_block_defaults_and_clear_errors():
    cfg = OutputAdversarialConfig()
    assert (cfg.objective, cfg.weight, cfg.ndf, cfg.discriminator.lr, cfg.discriminator.betas) == (
        "vanilla", 0.001, 64, 1e-4, (0.9, 0.99))
    toy = ROOT / "experiments" / "toy" / "cutmix_pseudo.yaml"
    assert load_config(toy).method.adversarial is None
    assert load_config(ROOT / "experiments" / "toy" / "cutmix_adv.yaml").method.adversarial.ndf == 16
    bad = {"method.adversarial={weight: -1}": r"method\.adversarial\.weight.*greater than or equal to 0",
           "method.adversarial={objective: wgan}": r"method\.adversarial\.objective.*'vanilla' or 'lsgan'",
           "method.adversarial={levels: [main, aux]}": r"method\.adversarial\.levels: unknown key.*weight",
           "method.adversarial={discriminator: {betas: [0.9, 1.5]}}": r"method\.adversarial\.discriminator\.betas"}
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(toy, [override])


def test_without_the_block_nothing_is_added(tmp_path):
    trainer = Trainer(tiny_toy_config(tmp_path, *TARGET, experiment="cutmix_pseudo.yaml"))
    method = trainer.method
    assert method.adversary is None and not mean_teacher.MeanTeacher.find_unused_parameters
    assert set(method.state_dict()) == {"teacher"}
    losses = method.training_step(trainer._next_batches(), 0)
    assert not any(k.startswith(("loss_adv", "loss_d", "d_main", "lr_d")) for k in losses)


def _grads(method, batches, seed):
    """(losses, student gradient, D gradient) of one training_step's total loss, mixing drawn from ``seed``."""
    torch.manual_seed(seed)
    method.model.zero_grad(set_to_none=True)
    if method.adversary is not None:
        method.adversary.optimizer.zero_grad(set_to_none=True)
    losses = method.training_step(batches, 0)
    losses["loss"].backward()
    flat = lambda params: torch.cat([p.grad.flatten() for p in params if p.grad is not None])  # noqa: E731
    return losses, flat(method.model.parameters()), flat(method.adversary.modules.parameters())


def test_discriminator_sees_the_source_forward_and_the_weak_target_images(tmp_path):
    trainer = Trainer(adv_config(tmp_path, "method.threshold=0.0"))
    method, batches = trainer.method, trainer._next_batches()
    inputs, outputs = [], []

    def record(module, args, out):
        inputs.append(args[0])
        outputs.append(out)

    hook = method.model.register_forward_hook(record)
    losses = method.training_step(batches, 0)
    hook.remove()
    # three student forwards: source, mixed (strong), weak target; the source logits are reused for D
    assert len(outputs) == 3
    assert inputs[0] is batches["source"]["image"] and inputs[2] is batches["target"]["image"]
    d = method.adversary.modules["main"]
    size = batches["source"]["image"].shape[-2:]
    p_src, p_tgt = (output_probabilities(outputs[i].detach(), size) for i in (0, 2))
    with torch.no_grad():
        loss_d = 0.5 * (gan_loss(d(p_src), True, "vanilla") + gan_loss(d(p_tgt), False, "vanilla"))
        loss_adv = gan_loss(d(p_tgt), True, "vanilla")
    assert losses["loss_d_main"].item() == pytest.approx(loss_d.item(), rel=1e-6)
    assert losses["loss_adv_main"].item() == pytest.approx(loss_adv.item(), rel=1e-6)
    assert 0 < losses["d_main_source"].item() < 1 and 0 < losses["d_main_target"].item() < 1
    assert losses["lr_d_main"].item() == pytest.approx(1e-4)


def test_adversarial_term_reaches_the_student_and_d_loss_only_d(tmp_path):
    trainer = Trainer(adv_config(tmp_path, "method.threshold=0.0"))
    method, batches = trainer.method, trainer._next_batches()
    opts = method.options.adversarial
    opts.weight = 0.0
    losses0, s0, d0 = _grads(method, batches, 0)
    total = losses0["loss_seg"] + losses0["loss_unlabelled"] + losses0["loss_d_main"]
    assert losses0["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    # with weight 0 the student's gradient is that of the method without the block: D's loss never reaches it
    adversary, method.adversary = method.adversary, None
    torch.manual_seed(0)
    method.model.zero_grad(set_to_none=True)
    method.training_step(batches, 0)["loss"].backward()
    plain = torch.cat([p.grad.flatten() for p in method.model.parameters() if p.grad is not None])
    method.adversary = adversary
    assert torch.allclose(s0, plain)
    opts.weight = 5.0  # large weights: the adversarial part stands well above float32 noise
    losses1, s1, d1 = _grads(method, batches, 0)
    opts.weight = 10.0
    _, s2, d2 = _grads(method, batches, 0)
    assert losses1["loss_adv_main"] > 0
    step = (s1 - s0).abs().max()
    assert step > 1e-6 and ((s2 - s0) - 2 * (s1 - s0)).abs().max() < 1e-2 * step  # linear in the weight
    assert d0.abs().sum() > 0 and torch.equal(d0, d1) and torch.equal(d0, d2)  # D's gradient ignores the adv term


def test_discriminator_steps_once_per_iteration(tmp_path):
    trainer = Trainer(adv_config(tmp_path, "train.grad_accum=2", "train.eval_interval=10", max_iters=2))
    adversary = trainer.method.adversary
    assert isinstance(adversary, OutputAdversary) and tuple(adversary.modules) == ("main",)
    assert not {id(p) for p in adversary.modules.parameters()} & {
        id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    before = [p.detach().clone() for p in adversary.modules.parameters()]
    steps = []
    original = adversary.step
    adversary.step = lambda: (steps.append(trainer.iteration), original())[1]
    trainer.fit()
    assert len(steps) == 2 and adversary.scheduler.last_epoch == 2  # per optimizer step, not per micro-batch
    assert all((p - old).abs().max() > 5e-5 for p, old in zip(adversary.modules.parameters(), before))


def test_resume_restores_teacher_and_discriminator_exactly(tmp_path, monkeypatch):
    from tests.conftest import train_interrupted

    full_cfg = adv_config(tmp_path / "full")
    full = train(full_cfg)
    cfg = adv_config(tmp_path / "cut")
    train_interrupted(cfg, mean_teacher.MeanTeacher, 4, monkeypatch)
    assert load_torch(RunDir.for_config(cfg).last)["method"]["adversary"]["scheduler"]["last_epoch"] == 3
    resumed = train(cfg, resume=True)
    assert resumed["final"]["mIoU"] == full["final"]["mIoU"] and resumed["test"]["iou"] == full["test"]["iou"]
    a = load_torch(RunDir.for_config(full_cfg).last)["method"]
    b = load_torch(RunDir.for_config(cfg).last)["method"]
    assert all(torch.equal(a["teacher"]["module"][k], v) for k, v in b["teacher"]["module"].items())
    da, db = a["adversary"], b["adversary"]
    assert all(torch.equal(da["discriminators"]["main"][k], v) for k, v in db["discriminators"]["main"].items())
    sa, sb = da["optimizer"]["state"], db["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert da["scheduler"] == db["scheduler"] and da["scheduler"]["last_epoch"] == 6
    untimed = [[{k: v for k, v in json.loads(line).items() if k != "sec_per_image"}
                for line in RunDir.for_config(c).metrics.read_text().splitlines()] for c in (cfg, full_cfg)]
    assert untimed[0] == untimed[1]
    with pytest.raises(DasuiteError, match="no method.adversarial state"):  # a checkpoint trained without the block
        Trainer(adv_config(tmp_path / "x")).method.load_state_dict({"teacher": b["teacher"]})
