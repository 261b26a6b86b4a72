"""FDA (dasuite/data/fda.py): the window, the kept source phase and high band, the pixel-scale swap, pairing and
probability, autocast, and the engine option (source images translated, target drawn, exact resume)."""

import pytest
import torch

from dasuite.config import load_config
from dasuite.data.augment import denormalize_float, normalize
from dasuite.data.fda import apply_fda, fda_amplitude_swap, fda_roles, fda_swap, low_freq_half_size, low_freq_mask
from dasuite.engine import loop
from dasuite.engine.loop import Trainer, train
from dasuite.errors import ConfigError
from dasuite.fileio import load_torch
from dasuite.methods.source_only import SourceOnly
from dasuite.rundir import RunDir
from tests.conftest import ROOT, tiny_toy_config, train_interrupted

TARGET = ["data.target.size=[64,48]", "data.target.num_images=8", "data.target.augment.crop=[48,48]"]


def fda_config(tmp_path, *overrides, max_iters=6):
    return tiny_toy_config(tmp_path, *TARGET, *overrides, max_iters=max_iters, experiment="fda.yaml")


def _pixels(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 255


def _normalised(*shape, seed=0):
    return normalize(_pixels(*shape, seed=seed))


@pytest.mark.parametrize("h, w, beta, b", [(96, 96, 0.01, 0), (96, 96, 0.06, 5), (512, 1024, 0.01, 5),
                                           (512, 1024, 0.09, 46), (100, 100, 0.29, 29), (31, 40, 0.1, 3)])
def test_window_half_size_and_centred_square(h, w, beta, b):
    assert low_freq_half_size(h, w, beta) == b
    shifted = torch.fft.fftshift(low_freq_mask(h, w, beta))
    rows, cols = shifted.nonzero().unbind(1)
    assert shifted.sum() == (2 * b + 1) ** 2
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (h // 2 - b, h // 2 + b, w // 2 - b, w // 2 + b)
    assert low_freq_mask(8, 8, 0.5).all()  # b = 4 covers the whole 8x8 spectrum


@pytest.mark.parametrize("shape, beta", [((2, 3, 32, 40), 0.1), ((1, 3, 31, 33), 0.2)])
def test_swap_keeps_source_phase_and_high_band_and_takes_target_low_band(shape, beta):
    source, target = _pixels(*shape, seed=1), _pixels(*shape, seed=2)
    out = fda_amplitude_swap(source, target, beta)
    assert out.dtype == torch.float32 and out.shape == source.shape
    f_out, f_src, f_tgt = (torch.fft.fft2(x.double()) for x in (out, source, target))
    window = low_freq_mask(shape[-2], shape[-1], beta)
    scale = f_src.abs().amax()
    assert torch.allclose(f_out.abs()[..., window], f_tgt.abs()[..., window], rtol=1e-5, atol=1e-6 * scale)
    assert torch.allclose(f_out.abs()[..., ~window], f_src.abs()[..., ~window], rtol=1e-5, atol=1e-6 * scale)
    significant = f_out.abs() > 1e-4 * scale
    phase_out, phase_src = f_out / f_out.abs(), f_src / f_src.abs()
    assert (phase_out - phase_src)[significant].abs().max() < 1e-4
    assert not torch.allclose(out, source, atol=1.0)


def test_dc_only_window_shifts_the_pixel_mean_to_the_target():
    """beta with b = 0: the per-channel mean colour moves to the target's, the rest stays. This needs the pixel
    scale: a dark source has a negative normalised mean, whose sign an amplitude swap would keep."""
    source = _pixels(2, 3, 32, 32, seed=3) * 0.2  # dark
    target = _pixels(2, 3, 32, 32, seed=4) * 0.5 + 120  # bright
    out = fda_amplitude_swap(source, target, beta=0.01)
    shift = target.mean(dim=(-2, -1), keepdim=True) - source.mean(dim=(-2, -1), keepdim=True)
    assert torch.allclose(out, source + shift, atol=1e-3)
    assert (normalize(source).mean(dim=(-2, -1)) < 0).all()
    swapped = fda_swap(normalize(source), normalize(target[[0, 0]]), beta=0.01)  # one target image for both
    expected = normalize((source + target[0].mean(dim=(-2, -1), keepdim=True) - source.mean(dim=(-2, -1), keepdim=True))
                         .clamp(0, 255))
    assert torch.allclose(swapped, expected, atol=1e-4)


def test_fda_swap_is_the_clamped_pixel_core_and_p0_is_identity():
    source, target = _normalised(3, 3, 24, 24, seed=5), _normalised(3, 3, 24, 24, seed=6)
    g = torch.Generator().manual_seed(7)
    out = fda_swap(source, target, 0.1, generator=g)
    g.manual_seed(7)
    pairs = torch.randperm(3, generator=g)
    core = fda_amplitude_swap(denormalize_float(source) * 255, denormalize_float(target[pairs]) * 255, 0.1)
    assert core.min() < 0 or core.max() > 255  # the clamp matters for this pair of images
    assert torch.allclose(out, normalize(core.clamp(0, 255)), atol=1e-5)
    assert torch.equal(fda_swap(source, target, 0.1, p=0.0), source)


def test_probability_translates_exactly_the_drawn_images():
    source, target = _normalised(8, 3, 16, 16, seed=8), _normalised(8, 3, 16, 16, seed=9)
    g = torch.Generator().manual_seed(3)
    out = fda_swap(source, target, 0.2, p=0.5, generator=g)
    g.manual_seed(3)
    torch.randperm(8, generator=g)
    apply = torch.rand(8, generator=g) < 0.5
    assert apply.any() and not apply.all()
    changed = (out - source).flatten(1).abs().amax(1) > 1e-3
    assert torch.equal(changed, apply)


def test_target_of_another_batch_size_and_resolution():
    source, target = _normalised(5, 3, 32, 48, seed=10), _normalised(2, 3, 16, 24, seed=11)
    g = torch.Generator().manual_seed(1)
    out = fda_swap(source, target, 0.1, generator=g)
    assert out.shape == source.shape
    g.manual_seed(1)
    order = torch.randperm(2, generator=g)
    resized = torch.nn.functional.interpolate(denormalize_float(target) * 255, size=(32, 48), mode="bilinear")
    core = fda_amplitude_swap(denormalize_float(source) * 255, resized[order[torch.arange(5) % 2]], 0.1)
    assert torch.allclose(out, normalize(core.clamp(0, 255)), atol=1e-5)


def test_autocast_keeps_the_fft_in_float32():
    source, target = _normalised(2, 3, 24, 24, seed=12), _normalised(2, 3, 24, 24, seed=13)
    reference = fda_swap(source, target, 0.1, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fda_swap(source, target, 0.1, generator=torch.Generator().manual_seed(0))
        bf16 = fda_swap(source.bfloat16(), target.bfloat16(), 0.1, generator=torch.Generator().manual_seed(0))
    assert out.dtype == bf16.dtype == torch.float32
    assert torch.equal(out, reference)
    assert torch.allclose(bf16, reference, atol=0.05)  # only the bf16 inputs' rounding differs


def test_apply_fda_roles_and_batches():
    source = {"image": _normalised(2, 3, 16, 16, seed=14), "label": torch.zeros(2, 16, 16, dtype=torch.long),
              "name": ["a", "b"]}
    target = {"image": _normalised(2, 3, 16, 16, seed=15), "label": None, "name": ["c", "d"]}
    batches = {"source": source, "target": target}
    assert fda_roles(("source",), None) == ("source",)
    cfg = load_config(ROOT / "experiments" / "toy" / "fda.yaml").data.fda
    assert fda_roles(("source",), cfg) == ("source", "target") and fda_roles(("source", "target"), cfg) == ("source", "target")
    assert apply_fda(batches, None, ("source",)) is batches
    only = apply_fda(batches, cfg, ("source",))
    assert list(only) == ["source"] and only["source"]["label"] is source["label"] and only["source"]["name"] == ["a", "b"]
    assert not torch.allclose(only["source"]["image"], source["image"])
    both = apply_fda(batches, cfg, ("source", "target"))
    assert both["target"] is target  # a method using the target gets it untouched


def test_config_errors():
    path = ROOT / "experiments" / "toy" / "fda.yaml"
    with pytest.raises(ConfigError, match=r"data\.fda needs target images: set data\.target"):
        load_config(path, ["data.target=null"])
    with pytest.raises(ConfigError, match=r"data\.fda\.beta"):
        load_config(path, ["data.fda.beta=0.6"])
    assert load_config(ROOT / "experiments" / "toy" / "source_only.yaml").data.fda is None


def test_engine_translates_the_source_images_the_method_sees(tmp_path, monkeypatch):
    seen, calls = [], []
    original_apply, original_step = loop.apply_fda, SourceOnly.training_step

    def spy_apply(batches, fda, domains):
        out = original_apply(batches, fda, domains)
        calls.append((batches, out))
        return out

    def spy_step(self, batches, step):
        seen.append(batches)
        return original_step(self, batches, step)

    monkeypatch.setattr(loop, "apply_fda", spy_apply)
    monkeypatch.setattr(SourceOnly, "training_step", spy_step)
    trainer = Trainer(fda_config(tmp_path, "train.eval_interval=10", max_iters=2))
    assert set(trainer.loaders) == {"source", "target"}
    trainer.fit()
    assert len(seen) == len(calls) == 2
    for (drawn, out), batches in zip(calls, seen):
        assert batches is out and list(batches) == ["source"]
        assert drawn["target"]["image"].shape == (2, 3, 48, 48)
        assert batches["source"]["label"] is drawn["source"]["label"]
        assert not torch.allclose(batches["source"]["image"], drawn["source"]["image"], atol=1e-3)


def test_fda_run_resumes_bit_identically(tmp_path, monkeypatch):
    full_cfg = fda_config(tmp_path / "full")
    full = train(full_cfg)
    cfg = fda_config(tmp_path / "cut")
    train_interrupted(cfg, SourceOnly, 4, monkeypatch)
    assert load_torch(RunDir.for_config(cfg).last)["loaders"]["target"]["batches"] == 3
    resumed = train(cfg, resume=True)
    assert resumed["final"]["mIoU"] == full["final"]["mIoU"] and resumed["test"]["iou"] == full["test"]["iou"]
    a, b = (load_torch(RunDir.for_config(c).last) for c in (full_cfg, cfg))
    assert a["loaders"] == b["loaders"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
