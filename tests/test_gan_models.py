"""CycleGAN networks: generator and PatchGAN shapes, the 70x70 receptive field, init, and the image-pool rule."""

import pytest
import torch
from torch import nn

from dasuite.errors import DasuiteError
from dasuite.models.gan import ImagePool, PatchDiscriminator, ResnetGenerator, init_weights


@pytest.mark.parametrize("size", [(32, 32), (36, 44), (30, 45)])
def test_generator_keeps_the_image_size_and_range(size):
    torch.manual_seed(0)
    g = init_weights(ResnetGenerator(ngf=4, n_blocks=2))
    x = torch.rand(2, 3, *size) * 2 - 1
    y = g(x)
    assert y.shape == x.shape
    assert y.abs().max() <= 1.0 and y.std() > 0


def test_generator_layout_follows_cyclegan():
    g = ResnetGenerator(ngf=8, n_blocks=3)
    convs = [m for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    # c7s1, two downsampling, 2 convs per residual block, two upsampling, c7s1 to RGB
    assert len(convs) == 1 + 2 + 2 * 3 + 2 + 1
    assert [c.out_channels for c in convs[:3]] == [8, 16, 32] and convs[-1].out_channels == 3
    assert convs[0].kernel_size == (7, 7) and isinstance(g.net[-1], nn.Tanh)
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in g.modules()) == 2 + 2 * 3
    norms = [m for m in g.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not n.affine and not n.track_running_stats for n in norms)


@pytest.mark.parametrize("size,out", [(256, 30), (70, 6), (128, 14)])
def test_patch_discriminator_output_size(size, out):
    d = PatchDiscriminator(ndf=4, n_layers=3)
    assert d(torch.randn(1, 3, size, size)).shape == (1, 1, out, out)


def test_patch_discriminator_receptive_field_is_70():
    """Without the (image-wide) instance norm, one output logit depends on exactly a 70x70 input patch."""
    torch.manual_seed(0)
    d = init_weights(PatchDiscriminator(ndf=4, n_layers=3))
    for i, m in enumerate(d.net):
        if isinstance(m, nn.InstanceNorm2d):
            d.net[i] = nn.Identity()
    x = torch.randn(1, 3, 160, 160, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[-2] // 2, out.shape[-1] // 2].backward()
    rows = x.grad.abs().sum((0, 1, 3)).nonzero().flatten()
    cols = x.grad.abs().sum((0, 1, 2)).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_init_weights_is_normal_002():
    torch.manual_seed(0)
    g = init_weights(ResnetGenerator(ngf=16, n_blocks=2))
    w = torch.cat([m.weight.detach().flatten() for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert w.mean().abs() < 2e-3 and w.std().item() == pytest.approx(0.02, rel=0.05)
    assert all((m.bias == 0).all() for m in g.modules() if isinstance(m, nn.Conv2d))
    bn = init_weights(nn.BatchNorm2d(512))
    assert bn.weight.detach().mean().item() == pytest.approx(1.0, abs=0.01) and (bn.bias == 0).all()


def _image(value: float) -> torch.Tensor:
    return torch.full((1, 1, 2, 2), value)


def test_image_pool_fills_then_swaps_half_the_time():
    torch.manual_seed(0)
    pool = ImagePool(size=4)
    for v in range(4):  # filling: every image is stored and returned as is
        assert torch.equal(pool.query(_image(v)), _image(v))
    assert pool.count == 4
    new, returned_old, trials = 1000.0, 0, 2000
    for t in range(trials):
        out = pool.query(_image(new + t))
        assert pool.count == 4 and pool.images.shape == (4, 1, 2, 2)
        if out[0, 0, 0, 0] != new + t:  # an old image came back, and the new one took its slot
            returned_old += 1
            assert (pool.images[:, 0, 0, 0] == new + t).any()
        else:  # the pool did not change, so the new image is not stored
            assert not (pool.images[:, 0, 0, 0] == new + t).any()
    assert abs(returned_old / trials - 0.5) < 0.05  # p = 0.5, 5 standard deviations ~ 0.056
    # every stored image is one of the inputs, each slot holds a distinct one
    values = pool.images[:, 0, 0, 0]
    assert len(set(values.tolist())) == 4


def test_image_pool_walks_a_batch_in_order_and_size_zero_passes_through():
    pool = ImagePool(size=3)
    batch = torch.arange(5.0).view(5, 1, 1, 1)
    torch.manual_seed(1)
    out = pool.query(batch)
    assert torch.equal(out[:3], batch[:3]) and pool.count == 3  # the first three fill the pool
    assert all(v in {0.0, 1.0, 2.0, 3.0, 4.0} for v in out.flatten().tolist())
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    same = ImagePool(size=0).query(x)
    assert torch.equal(same, x) and not same.requires_grad
    with pytest.raises(DasuiteError, match="one size"):
        pool.query(torch.zeros(1, 1, 2, 2))


def test_image_pool_state_roundtrip_continues_identically():
    torch.manual_seed(3)
    a = ImagePool(size=5)
    for v in range(3):
        a.query(_image(v))
    b = ImagePool(size=5)
    b.load_state_dict(a.state_dict())
    assert b.count == 3
    torch.manual_seed(7)
    outs_a = [a.query(_image(10 + v)) for v in range(20)]
    torch.manual_seed(7)
    outs_b = [b.query(_image(10 + v)) for v in range(20)]
    assert all(torch.equal(x, y) for x, y in zip(outs_a, outs_b)) and torch.equal(a.images, b.images)
    with pytest.raises(ValueError, match="pool size"):
        ImagePool(size=4).load_state_dict(a.state_dict())
    empty = ImagePool(size=5)
    empty.load_state_dict(ImagePool(size=5).state_dict())
    assert empty.count == 0 and empty.images is None
