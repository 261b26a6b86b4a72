"""KD loss functions against direct computations and hand-computed values on tiny tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from dasuite.losses.frequency import freq_loss, frequency_split, lowpass_mask
from dasuite.losses.kd import at_loss, cwd_loss, kl_loss, sp_loss


def _direct_pixel_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per pixel sum_k p_T (log p_T - log p_S), by explicit exp/log and loops over the pixels."""
    b, k, h, w = student.shape
    values = []
    for i in range(b):
        for y in range(h):
            for x in range(w):
                zs, zt = student[i, :, y, x] / temperature, teacher[i, :, y, x] / temperature
                ps, pt = zs.exp() / zs.exp().sum(), zt.exp() / zt.exp().sum()
                values.append((pt * (pt.log() - ps.log())).sum())
    return torch.stack(values).reshape(b, h, w)


def test_kl_t1_equals_direct_per_pixel_mean():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 3, 4, generator=gen), torch.randn(2, 5, 3, 4, generator=gen)
    direct = _direct_pixel_kl(s, t, 1.0)
    assert torch.allclose(kl_loss(s, t, temperature=1.0), direct.mean(), atol=1e-6)
    # batchmean on the 4-D tensor would be the per-image pixel sum: H*W = 12 times larger
    batchmean = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
    assert torch.allclose(batchmean, direct.mean() * 12, atol=1e-5)


def test_kl_temperature_scaling_and_ignore_mask():
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    direct = _direct_pixel_kl(s, t, 4.0)
    assert torch.allclose(kl_loss(s, t, temperature=4.0), 16 * direct.mean(), atol=1e-6)
    valid = torch.zeros(2, 3, 3, dtype=torch.bool)
    valid[0, 1, :] = True
    valid[1, 2, 2] = True
    assert torch.allclose(kl_loss(s, t, 4.0, valid), 16 * direct[valid].mean(), atol=1e-6)
    assert kl_loss(s, t, 1.0, torch.zeros(2, 3, 3)) == 0  # nothing labelled: 0, not NaN
    assert torch.allclose(kl_loss(t, t, 2.0), torch.zeros(()), atol=1e-7)


def test_at_matches_hand_computed_value():
    # student a = mean_c F^2 = [1, 2] -> q = [1, 2]/sqrt5; teacher a = [9, 0] -> q = [1, 0]
    student = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])  # 1 x 2 x 1 x 2
    teacher = torch.tensor([[[[3.0, 0.0]]]])  # 1 x 1 x 1 x 2 (channel counts may differ)
    expected = ((1 / math.sqrt(5) - 1) ** 2 + (2 / math.sqrt(5)) ** 2) / 2  # = 1 - 1/sqrt5
    assert at_loss(student, teacher) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1 - 1 / math.sqrt(5))


def test_at_resizes_teacher_map_and_is_scale_invariant():
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 6, 8, 8, generator=gen)
    assert at_loss(s, t).ndim == 0
    assert at_loss(s, 5 * s) == pytest.approx(0.0, abs=1e-7)


def test_sp_matches_hand_computed_value():
    # student rows [1,0], [0,1] -> G = I; teacher rows [1,1], [1,1] -> normalised rows [1,1]/sqrt2
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 2, 1, 1)
    teacher = torch.tensor([[1.0, 1.0], [1.0, 1.0]]).reshape(2, 1, 2, 1)  # other C and H: only B x B matters
    expected = (2 * (1 - 1 / math.sqrt(2)) ** 2 + 2 * 0.5) / 4  # ||G~_S - G~_T||_F^2 / B^2
    assert sp_loss(student, teacher) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1 - math.sqrt(2) / 2)


def test_cwd_matches_hand_computed_value():
    # channel 0: student [0, 0] -> [1/2, 1/2]; teacher [ln3*T, 0] -> [3/4, 1/4] at any T
    # channel 1: identical maps on both sides -> 0
    kl0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    for temperature in (1.0, 2.0):
        student = torch.tensor([[[[0.0, 0.0]], [[1.0, -1.0]]]])
        teacher = torch.tensor([[[[math.log(3) * temperature, 0.0]], [[1.0, -1.0]]]])
        expected = temperature**2 * (kl0 + 0.0) / 2  # T^2 * mean over the B*C = 2 channels
        assert cwd_loss(student, teacher, temperature) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("size", [(8, 8), (9, 12), (7, 5)])
@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.5, 1.0])
def test_freq_split_is_orthogonal_mse_low_plus_high_equals_full(size, ratio):
    gen = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 3, *size, generator=gen), torch.randn(2, 3, *size, generator=gen)
    low, high = freq_loss(s, t, ratio, high="kd")
    assert (low + high).item() == pytest.approx(F.mse_loss(s, t).item(), rel=1e-5)
    part_low, part_high = frequency_split(s, ratio)
    assert torch.allclose(part_low + part_high, s, atol=1e-6)


def test_freq_ratio_is_per_side():
    x = torch.randn(1, 1, 20, 30, generator=torch.Generator().manual_seed(4))
    low, _ = frequency_split(x, 0.2)
    spectrum = torch.fft.fft2(low)
    kept = spectrum.abs() > 1e-4
    # |k_y| <= floor(0.2*20/2) = 2 -> 5 rows, |k_x| <= floor(0.2*30/2) = 3 -> 7 columns: 35 of 600 coefficients
    assert int(kept.sum()) == 35
    k_y = torch.fft.fftfreq(20, 1 / 20).abs()[:, None].expand(20, 30)
    k_x = torch.fft.fftfreq(30, 1 / 30).abs()[None, :].expand(20, 30)
    assert bool(((k_y <= 2) & (k_x <= 3))[kept[0, 0]].all())
    assert torch.allclose(frequency_split(x, 1.0)[0], x, atol=1e-5)  # ratio 1 keeps everything
    assert torch.allclose(frequency_split(x, 0.01)[0], x.mean((-2, -1), keepdim=True).expand_as(x), atol=1e-5)
    assert lowpass_mask(20, 30, 0.2).shape == (20, 16)
    with pytest.raises(ValueError, match="ratio"):
        lowpass_mask(4, 4, 0.0)


def test_freq_high_modes():
    gen = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 3, 6, 10, generator=gen), torch.randn(2, 3, 6, 10, generator=gen)
    _, high_s = frequency_split(s, 0.3)
    _, high_t = frequency_split(t, 0.3)
    low, kd = freq_loss(s, t, 0.3, "kd")
    assert kd.item() == pytest.approx(F.mse_loss(high_s, high_t).item(), rel=1e-6)
    assert freq_loss(s, t, 0.3, "l1")[1].item() == pytest.approx(F.l1_loss(high_s, high_t).item(), rel=1e-6)
    sparsity = freq_loss(s, t, 0.3, "sparsity")[1]
    assert sparsity.item() == pytest.approx(high_s.abs().mean().item(), rel=1e-6)
    assert freq_loss(s, torch.zeros_like(t), 0.3, "sparsity")[1] == sparsity  # teacher's high part unused
    assert freq_loss(s, t, 0.3, "none")[1] == 0
    assert freq_loss(s, t, 0.3, "none")[0] == low
    with pytest.raises(ValueError, match="equal shapes"):
        freq_loss(s, t[:, :2], 0.3)


def test_freq_runs_in_float32_under_autocast():
    x = torch.randn(2, 4, 18, 24).bfloat16()  # non-power-of-two sizes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, high = frequency_split(x, 0.2)
        loss_low, loss_high = freq_loss(x, x.flip(-1), 0.2, "kd")
    assert low.dtype == high.dtype == loss_low.dtype == loss_high.dtype == torch.float32
    assert torch.allclose(low + high, x.float(), atol=1e-5)
