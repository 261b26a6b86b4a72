"""HRDA multi-resolution wrapper (``dasuite/models/hrda.py``) and its loss (``dasuite/losses/hrda.py``): tiny models,
small images. The comparison with HRDA's own code is in docs/hrda.md."""

from __future__ import annotations

import copy
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dasuite.engine.inference import predict
from dasuite.errors import ConfigError
from dasuite.losses.hrda import multires_loss, multires_seg_loss
from dasuite.losses.segmentation import seg_loss, upsample_to
from dasuite.models import create_model
from dasuite.models.hrda import HRDA, ASPPAttention, MLPAttention, MultiResOutput, fuse, sample_detail_box

K = 5
BASES = {"segformer_b0": {"drop_path": 0.0, "dropout": 0.0}, "deeplabv2_r50": {"multi_level": False}}


def _model(base: str = "segformer_b0", **options) -> HRDA:
    torch.manual_seed(0)
    options = {"detail_crop": [32, 32], "attention_dim": 16, **options}
    return create_model("hrda", K, tiny=True, base=base, base_options=BASES[base], **options)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _box_cells(out: MultiResOutput, stride: int) -> tuple[slice, slice]:
    top, left, h, w = out.box
    return slice(top // stride, math.ceil((top + h) / stride)), slice(left // stride, math.ceil((left + w) / stride))


# --- crop geometry ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height, width, crop, divisor", [(128, 128, (64, 64), 8), (130, 90, (64, 32), 8),
                                                          (48, 200, (64, 64), 16), (64, 64, (64, 64), 8)])
def test_detail_box_lies_inside_on_the_divisor_grid(height, width, crop, divisor) -> None:
    torch.manual_seed(0)
    for _ in range(200):
        top, left, h, w = sample_detail_box(height, width, crop, divisor)
        assert (h, w) == (min(crop[0], height), min(crop[1], width))
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        assert top % divisor == 0 and left % divisor == 0


def test_detail_box_offsets_are_uniform_and_reach_both_ends() -> None:
    torch.manual_seed(0)
    n, size, crop, divisor = 9000, 128, 64, 8
    boxes = [sample_detail_box(size, size, (crop, crop), divisor) for _ in range(n)]
    slots = list(range(0, size - crop + 1, divisor))  # 0, 8, ..., 64: nine offsets, both ends included
    for offsets in (Counter(b.top for b in boxes), Counter(b.left for b in boxes)):
        assert sorted(offsets) == slots
        expected = n / len(slots)
        chi2 = sum((offsets[s] - expected) ** 2 / expected for s in slots)
        assert chi2 < 26.1  # chi-square, 8 degrees of freedom, p = 0.001
    covered = torch.zeros(size)
    for b in boxes:
        covered[b.top:b.top + b.height] += 1 / n
    analytic = torch.tensor([sum(o <= r < o + crop for o in slots) / len(slots) for r in range(size)])
    assert (covered - analytic).abs().max() < 0.03
    assert covered.min() > 0.1  # every row (the last ones too) is in some detail crops


# --- fusion ----------------------------------------------------------------------------------------------------------
def test_fusion_matches_a_hand_computation() -> None:
    context = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    att = torch.tensor([[0.2, 0.4], [0.6, 0.8]])
    detail = torch.arange(16.0).reshape(4, 4) / 4
    # bilinear x2, align_corners=False, edges clamped: out[2j] = .75 v[j] + .25 v[j-1],
    # out[2j+1] = .75 v[j] + .25 v[j+1]
    up = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    hand = (up @ att @ up.T) * detail + up @ ((1 - att) * context) @ up.T
    got = fuse(context[None, None], att[None, None], detail[None, None], 2)[0, 0]
    torch.testing.assert_close(got, hand, rtol=0, atol=1e-6)
    cropped = fuse(context[None, None], att[None, None], detail[None, None, :3, :3], 2)[0, 0]  # odd output grid
    torch.testing.assert_close(cropped, hand[:3, :3], rtol=0, atol=1e-6)


@pytest.mark.parametrize("base", sorted(BASES))
def test_training_forward_fuses_its_pieces_inside_the_box_only(base: str) -> None:
    model = _model(base).train()
    out = model(torch.randn(2, 3, 96, 96))
    o, d = model.output_stride, model.divisor
    assert out.fused.shape == (2, K, 96 // o, 96 // o) and out.detail.shape == (2, K, 32 // o, 32 // o)
    assert out.context.shape[-2:] == out.attention.shape[-2:] == (48 // o, 48 // o)
    rows, cols = _box_cells(out, d)
    inside = torch.zeros_like(out.attention, dtype=torch.bool)
    inside[:, :, rows, cols] = True
    assert (out.attention[~inside] == 0).all() and (out.attention[inside] > 0).all()
    pasted = torch.zeros_like(out.fused)
    rows, cols = _box_cells(out, o)
    pasted[:, :, rows, cols] = out.detail
    a = out.attention
    torch.testing.assert_close(out.fused, _up2(a) * pasted + _up2((1 - a) * out.context), rtol=0, atol=1e-6)
    far = torch.ones(96 // o, 96 // o, dtype=torch.bool)  # more than one cell away from the box: the context alone
    far[max(rows.start - 1, 0):rows.stop + 1, max(cols.start - 1, 0):cols.stop + 1] = False
    torch.testing.assert_close(out.fused[..., far], _up2(out.context)[..., far], rtol=0, atol=0)


# --- losses and gradients --------------------------------------------------------------------------------------------
def _grads(loss: torch.Tensor, model: HRDA) -> dict[str, torch.Tensor | None]:
    names, params = zip(*model.named_parameters())
    return dict(zip(names, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)))


@pytest.mark.parametrize("base", sorted(BASES))
def test_fused_and_detail_losses_both_reach_the_gradient(base: str) -> None:
    model = _model(base).train()
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, K, (2, 64, 64))
    labels[:, :5] = 255
    out = model(images)
    top, left, h, w = out.box
    fused_ce = seg_loss(out.fused, labels)
    detail_ce = seg_loss(out.detail, labels[:, top:top + h, left:left + w])
    total = multires_seg_loss(out, labels)
    torch.testing.assert_close(total, 0.9 * fused_ce + 0.1 * detail_ce)
    g_fused, g_detail, g_total = _grads(fused_ce, model), _grads(detail_ce, model), _grads(total, model)
    attention = [n for n in g_total if n.startswith("attention.")]
    assert attention and all(g_fused[n] is not None and g_fused[n].abs().sum() > 0 for n in attention)
    assert all(g_detail[n] is None for n in attention)  # the detail logits do not pass through the attention
    base_params = [n for n in g_total if n.startswith("base.")]
    assert all(g_detail[n] is not None and g_detail[n].abs().sum() > 0 for n in base_params)
    assert all(g_fused[n] is not None for n in base_params)
    for name in g_total:
        assert g_total[name] is not None and torch.isfinite(g_total[name]).all(), name
        expected = 0.9 * g_fused[name] + (0.1 * g_detail[name] if g_detail[name] is not None else 0)
        torch.testing.assert_close(g_total[name], expected, rtol=1e-4, atol=1e-7)


def test_loss_weights_plain_logits_and_pixel_maps() -> None:
    torch.manual_seed(0)
    model = _model(detail_loss_weight=0.0).train()
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, K, (2, 64, 64))
    out = model(images)
    torch.testing.assert_close(multires_seg_loss(out, labels), seg_loss(out.fused, labels))
    logits = torch.randn(2, K, 16, 16)
    assert torch.equal(multires_seg_loss(logits, labels), seg_loss(logits, labels))

    def weighted(lg, lb, wt):  # the mean teacher's pixel-weighted CE: sum w CE / P
        lg = F.interpolate(lg, size=lb.shape[-2:], mode="bilinear", align_corners=False)
        return (F.cross_entropy(lg, lb, reduction="none") * wt).mean()

    out = out._replace(detail_weight=0.25)
    weights = torch.rand(2, 64, 64)
    top, left, h, w = out.box
    crop = (slice(None), slice(top, top + h), slice(left, left + w))
    expected = 0.75 * weighted(out.fused, labels, weights) + 0.25 * weighted(out.detail, labels[crop], weights[crop])
    torch.testing.assert_close(multires_loss(weighted, out, labels, weights), expected)
    with pytest.raises(ValueError, match="must match"):
        multires_seg_loss(out, labels[:, :32])


# --- evaluation ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("size", [(64, 64), (66, 70)])
def test_eval_with_one_window_is_the_direct_fusion(base: str, size: tuple[int, int]) -> None:
    model = _model(base, detail_crop=[80, 80]).eval()
    images = torch.randn(2, 3, *size)
    grid = model.grid(*size)
    with torch.no_grad():
        got = model(images)
        small = F.interpolate(images, size=(math.ceil(size[0] / 2), math.ceil(size[1] / 2)), mode="bilinear",
                              align_corners=False)
        context, features = model.base(small, return_features=True)
        a = torch.sigmoid(model.attention(features))
        rows, cols = slice(0, grid[0]), slice(0, grid[1])
        direct = _up2(a)[..., rows, cols] * model.base(images) + _up2((1 - a) * context)[..., rows, cols]
    assert got.shape == (2, K, *grid)
    torch.testing.assert_close(got, direct, rtol=0, atol=1e-6)


def test_eval_windows_are_batched_and_averaged() -> None:
    model = _model().eval()
    images = torch.randn(2, 3, 64, 96)
    o = model.output_stride
    with torch.no_grad():
        total, count = torch.zeros(2, K, 16, 24), torch.zeros(1, 1, 16, 24)
        for y in (0, 16, 32):  # 32-pixel windows every 16 pixels
            for x in (0, 16, 32, 48, 64):
                total[..., y // o:y // o + 8, x // o:x // o + 8] += model.base(images[..., y:y + 32, x:x + 32])
                count[..., y // o:y // o + 8, x // o:x // o + 8] += 1
        batched = model.detail_windows(images)
        model.window_batch = 4
        chunked = model.detail_windows(images)
    torch.testing.assert_close(batched, total / count, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked, batched, rtol=0, atol=1e-5)


@pytest.mark.parametrize("base, sizes", [("segformer_b0", [(90, 66), (130, 70), (66, 94), (64, 100)]),
                                         ("deeplabv2_r50", [(90, 60), (130, 70), (33, 47), (17, 100)])])
def test_shapes_at_sizes_that_are_not_multiples_of_the_stride(base: str, sizes: list[tuple[int, int]]) -> None:
    # SegFormer's first attention reduces 8x8 cells of stride 4: its context images need 32+ pixels a side
    model = _model(base)
    for size in sizes:
        with torch.no_grad():
            out = model.eval()(torch.randn(1, 3, *size))
        assert out.shape == (1, K, *model.grid(*size)) and torch.isfinite(out).all()
    model.train()
    images, labels = torch.randn(2, 3, 90, 66), torch.randint(0, K, (2, 90, 66))
    for _ in range(5):
        out = model(images)
        top, left, h, w = out.box
        assert top + h <= 90 and left + w <= 66 and out.fused.shape[-2:] == model.grid(90, 66)
        loss = multires_seg_loss(out, labels)
        assert torch.isfinite(loss)
    loss.backward()


def test_predict_whole_and_slide_take_the_eval_forward() -> None:
    model = _model().eval()
    images = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        whole = predict(model, images, (96, 80))
        expected = F.interpolate(model(images), size=(96, 80), mode="bilinear", align_corners=False)
        slide = predict(model, images, (96, 80), SimpleNamespace(mode="slide", crop=(64, 64), stride=(32, 32),
                                                                 window_batch=2, scales=[1.0], flip=False))
    torch.testing.assert_close(whole, expected, rtol=0, atol=0)
    assert slide.shape == (1, K, 96, 80) and torch.isfinite(slide).all()


# --- the model contract (tests/test_models.py covers single-path models) ----------------------------------------------
@pytest.mark.parametrize("base", sorted(BASES))
def test_parameters_heads_features_and_copies(base: str) -> None:
    model = _model(base)
    assert isinstance(model.attention, ASPPAttention if base.startswith("deeplabv2") else MLPAttention)
    names = [n for n, _ in model.named_parameters()]
    head = [n for n in names if n.startswith(model.head_prefixes)]
    assert any(n.startswith("attention.") for n in head) and any(n.startswith("base.") for n in head)
    assert all(n.startswith(model.encoder_prefix) for n in names if n not in head)
    images = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        logits, features = model.eval()(images, return_features=True)
        again, copied = model(images), copy.deepcopy(model)(images)
    assert torch.equal(logits, again) and torch.equal(logits, copied)
    assert set(features) == set(model.feature_channels)
    context_stage1 = (math.ceil(32 / 4), math.ceil(36 / 4))  # the context pass: the image at half size
    assert features["stage1"].shape == (2, model.feature_channels["stage1"], *context_stage1)
    out, train_features = model.train()(images, return_features=True)
    assert isinstance(out, MultiResOutput) and set(train_features) == set(model.feature_channels)


def test_grad_checkpointing_goes_to_the_base_and_changes_nothing() -> None:
    plain = _model()
    saving = copy.deepcopy(plain)
    saving.set_grad_checkpointing(True)
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, K, (2, 64, 64))
    results = []
    for model in (plain, saving):
        torch.manual_seed(1)
        loss = multires_seg_loss(model.train()(images), labels)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=1e-6)
    assert all(torch.allclose(g1[n], g2[n], rtol=1e-5, atol=1e-6) for n in g1)


def test_fixed_and_single_channel_attention() -> None:
    model = _model(fixed_attention=1.0, detail_crop=[64, 64]).eval()
    assert model.attention is None and model.head_prefixes == ("base.decode_head.",)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # attention 1 inside one window: the detail prediction alone
        torch.testing.assert_close(model(images), model.base(images), rtol=0, atol=1e-6)
    model = _model(attention_classwise=False).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.attention.shape[1] == 1 and out.fused.shape[1] == K


def test_options_are_checked() -> None:
    for options, message in [({"detail_crop": [60, 60]}, "multiples of 8"), ({"base": "hrda"}, "another"),
                             ({"context_scale": 0.3}, "1/n"), ({"attention_head": "conv"}, "one of"),
                             ({"fixed_attention": 2.0}, "fixed_attention"), ({"detal_crop": [32, 32]}, "detail_crop")]:
        with pytest.raises(ConfigError, match=message):
            create_model("hrda", K, tiny=True, **{"base": "segformer_b0", **options})
    with pytest.raises(ConfigError, match="multiples of 16"):  # DeepLab-v2: output stride 8 at half resolution
        create_model("hrda", K, tiny=True, base="deeplabv2_r50", detail_crop=[24, 24])


def test_teacher_pseudo_labels_with_a_covering_detail_window_are_the_whole_image_ones() -> None:
    """The mean teacher's pseudo-labels of an HRDA teacher (eval forward: context + sliding detail windows) equal
    the whole-image fusion's when one detail window covers the image, and follow the windows' average otherwise."""
    import contextlib

    from dasuite.methods.mean_teacher import MeanTeacher

    def labels_of(teacher: HRDA, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        method = SimpleNamespace(ema=SimpleNamespace(module=teacher),
                                 accelerator=SimpleNamespace(autocast=contextlib.nullcontext))
        logits = MeanTeacher.teacher_logits(method, images)
        return upsample_to(logits.float(), images.shape[-2:]).softmax(1).max(1)

    covering = _model(detail_crop=[64, 64]).eval()
    sliding = copy.deepcopy(covering)
    sliding.detail_crop = (32, 32)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        small = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
        context, features = covering.base(small, return_features=True)
        a = torch.sigmoid(covering.attention(features))
        whole = _up2(a) * covering.base(images) + _up2((1 - a) * context)
        windows = _up2(a) * sliding.detail_windows(images) + _up2((1 - a) * context)
    for teacher, logits in ((covering, whole), (sliding, windows)):
        probs = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False).softmax(1)
        confidence, labels = labels_of(teacher, images)
        torch.testing.assert_close(confidence, probs.max(1).values, rtol=0, atol=1e-6)
        assert torch.equal(labels, probs.argmax(1))
    assert not torch.allclose(whole, windows, atol=1e-4)  # the windows matter when they do not cover the image
