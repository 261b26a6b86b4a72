"""The shared adversarial layer: GAN objectives (numbers), gradient routing of the generator and discriminator losses,
D's own optimizer step and schedule, state round trip, the output-space discriminator's shapes."""

import math

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from dasuite.errors import ConfigError
from dasuite.losses.gan import gan_loss
from dasuite.methods.adversary import Adversary, AdversaryOptimConfig
from dasuite.models.discriminator import OutputSpaceDiscriminator


def _adversary(objective="vanilla", **optim) -> Adversary:
    torch.manual_seed(0)
    d = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 3, padding=1))
    return Adversary({"main": d}, objective, AdversaryOptimConfig(**optim), max_iters=10)


def test_gan_loss_targets_vanilla_and_lsgan():
    z = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    # vanilla: BCE with logits, real -> mean softplus(-z), fake -> mean softplus(z)
    assert gan_loss(z, True, "vanilla").item() == pytest.approx(F.softplus(-z).mean().item())
    assert gan_loss(z, False, "vanilla").item() == pytest.approx(F.softplus(z).mean().item())
    assert gan_loss(torch.zeros(3), True, "vanilla").item() == pytest.approx(math.log(2))
    # lsgan: MSE to 1 (real) / 0 (fake) of the raw output
    assert gan_loss(z, True, "lsgan").item() == pytest.approx(((1 + 1 + 4 + 0.25) / 4))  # (z-1)^2: 1,1,4,.25
    assert gan_loss(z, False, "lsgan").item() == pytest.approx((0 + 4 + 1 + 0.25) / 4)
    assert gan_loss(torch.ones(5), True, "lsgan").item() == 0.0
    half = gan_loss(z.half(), True, "lsgan")
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match="vanilla, lsgan"):
        gan_loss(z, True, "wgan")


def test_generator_loss_reaches_input_not_discriminator():
    adv = _adversary()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    adv.generator_loss("main", x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in adv.modules.parameters())
    # same value as the plain discriminator call
    expected = gan_loss(adv.modules["main"](x), True, "vanilla")
    assert adv.generator_loss("main", x).item() == pytest.approx(expected.item())


def test_discriminator_loss_reaches_discriminator_not_input():
    adv = _adversary("lsgan")
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    (adv.discriminator_loss("main", x, True) + adv.discriminator_loss("main", x * 2, False)).backward()
    assert x.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adv.modules.parameters())
    out = adv.modules["main"](x).detach()
    assert adv.verdicts["main_real"].item() == pytest.approx(out.mean().item())  # lsgan: raw mean
    assert set(adv.verdicts) == {"main_real", "main_fake"}


def test_step_is_one_adam_step_then_zero_grad_and_schedule():
    adv = _adversary(lr=1e-2, betas=(0.5, 0.9))
    reference = {k: v.clone() for k, v in adv.modules["main"].state_dict().items()}
    manual = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 3, padding=1))
    manual.load_state_dict(reference)
    x = torch.randn(2, 3, 8, 8)
    adv.discriminator_loss("main", x, False).backward()
    gan_loss(manual(x), False, "vanilla").backward()
    torch.optim.Adam(manual.parameters(), lr=1e-2, betas=(0.5, 0.9)).step()
    adv.step()
    for (name, p), q in zip(adv.modules["main"].named_parameters(), manual.parameters()):
        assert torch.allclose(p, q, atol=1e-7), name
        assert p.grad is None
    # poly 0.9 over 10 iterations: after one step the factor is 0.9^0.9
    assert adv.lrs()["lr_d_main"].item() == pytest.approx(1e-2 * 0.9 ** 0.9)


def test_state_roundtrip_after_prepare():
    adv = _adversary()
    adv.prepare(Accelerator(cpu=True))
    for _ in range(2):
        adv.discriminator_loss("main", torch.randn(1, 3, 8, 8), True).backward()
        adv.step()
    other = _adversary()
    other.prepare(Accelerator(cpu=True))
    other.load_state_dict(adv.state_dict())
    for a, b in zip(adv.modules.parameters(), other.modules.parameters()):
        assert torch.equal(a, b)
    assert other.scheduler.last_epoch == 2
    state_a, state_b = adv.optimizer.state_dict()["state"], other.optimizer.state_dict()["state"]
    assert torch.equal(state_a[0]["exp_avg"], state_b[0]["exp_avg"]) and state_a[0]["step"] == state_b[0]["step"] == 2


def test_errors_and_defaults():
    with pytest.raises(ConfigError, match="GAN objective"):
        _adversary("hinge")
    cfg = AdversaryOptimConfig()
    assert (cfg.lr, cfg.betas, cfg.schedule.name, cfg.schedule.power) == (1e-4, (0.9, 0.99), "poly", 0.9)
    with pytest.raises(ValueError, match="betas"):
        AdversaryOptimConfig(betas=(0.9, 1.5))


def test_output_space_discriminator_shapes_and_layers():
    d = OutputSpaceDiscriminator(num_classes=5, ndf=8)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (5, 8, (4, 4), (2, 2)), (8, 16, (4, 4), (2, 2)), (16, 32, (4, 4), (2, 2)), (32, 64, (4, 4), (2, 2)),
        (64, 1, (4, 4), (2, 2))]
    assert all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in d.modules()
               if isinstance(m, nn.LeakyReLU)) and sum(isinstance(m, nn.LeakyReLU) for m in d.modules()) == 4
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in d.modules())
    out = d(torch.rand(2, 5, 64, 96).softmax(1))
    assert out.shape == (2, 1, 2, 3)  # stride 32, padding 1: 64 -> 32 -> 16 -> 8 -> 4 -> 2


class _ScalerOnly:
    """The part of an Accelerator that ``Adversary`` reads under fp16: its GradScaler (CPU here)."""

    def __init__(self, scale: float) -> None:
        self.scaler = torch.amp.GradScaler("cpu", init_scale=scale)

    def unwrap_model(self, module):
        return module


def test_fp16_step_unscales_with_the_backward_scale_and_skips_non_finite():
    # weight decay makes Adam sensitive to the gradient scale (g + wd p), so a wrong unscale would show
    adv, ref = _adversary(lr=1e-2, weight_decay=0.5), _adversary(lr=1e-2, weight_decay=0.5)
    fake = _ScalerOnly(1024.0)
    adv.accelerator = fake
    x = torch.randn(2, 3, 8, 8)
    fake.scaler.scale(adv.discriminator_loss("main", x, True)).backward()
    fake.scaler.update(new_scale=512.0)  # the main optimizer's update changed the scale before D's step
    adv.step()
    ref.discriminator_loss("main", x, True).backward()
    ref.step()
    for p, q in zip(adv.modules.parameters(), ref.modules.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    before = [p.detach().clone() for p in adv.modules.parameters()]
    fake.scaler.scale(adv.discriminator_loss("main", x * float("inf"), True)).backward()
    adv.step()  # non-finite gradient: no update, gradient cleared, schedule advanced
    assert all(torch.equal(p, b) and p.grad is None for p, b in zip(adv.modules.parameters(), before))
    assert adv.scheduler.last_epoch == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs only exist on an accelerator")
def test_per_step_loss_dict_does_not_sync_with_the_host_on_cuda():
    adv = _adversary("lsgan")
    adv.modules.cuda()
    adv._build_optimizer()
    x = torch.randn(2, 3, 8, 8, device="cuda", requires_grad=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = {"g": adv.generator_loss("main", x), "d": adv.discriminator_loss("main", x, False), **adv.lrs()}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert losses["lr_d_main"].device.type == "cuda" and losses["lr_d_main"].item() == pytest.approx(1e-4)
