"""SegFormer with DAFormer's context-aware fusion decoder (``model.options.decoder: daformer``): the architecture of
the reference (layer shapes, dilations, parameter count), the model contract (features, prefixes, checkpointing,
pretrained encoder loading, mmseg head checkpoints) on tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from dasuite.errors import ConfigError
from dasuite.models import create_model
from dasuite.models.daformer_head import DAFormerHead, SeparableConvBNReLU
from dasuite.models.factory import option_help

K = 19


def _tiny(arch: str = "segformer_b0", **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model(arch, K, tiny=True, decoder="daformer", **options)


def test_full_size_head_has_the_reference_layers_and_parameter_count() -> None:
    """MiT-B5 widths, E = 256: the numbers DAFormer's config builds (embeddings, 1x1 + 3 separable branches,
    3x3 bottleneck), counted by hand."""
    head = DAFormerHead((64, 128, 320, 512), K, 256)
    assert [tuple(e.proj.weight.shape) for e in head.embed_layers] == [(256, c) for c in (64, 128, 320, 512)]
    first, *separable = head.fuse_layer.aspp_modules
    assert first.conv.kernel_size == (1, 1) and first.conv.in_channels == 1024 and first.conv.bias is None
    assert [b.depthwise_conv.conv.dilation for b in separable] == [(6, 6), (12, 12), (18, 18)]
    for branch in separable:
        assert isinstance(branch, SeparableConvBNReLU)
        dw, pw = branch.depthwise_conv.conv, branch.pointwise_conv.conv
        assert dw.groups == 1024 and dw.kernel_size == (3, 3) and dw.padding == dw.dilation
        assert pw.kernel_size == (1, 1) and (pw.in_channels, pw.out_channels) == (1024, 256)
    bottleneck = head.fuse_layer.bottleneck.conv
    assert bottleneck.kernel_size == (3, 3) and (bottleneck.in_channels, bottleneck.out_channels) == (1024, 256)
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    embed = 1024 * 256 + 4 * 256
    branch1 = 1024 * 256 + 2 * 256
    separable_branch = (1024 * 9 + 2 * 1024) + (1024 * 256 + 2 * 256)
    fusion = 4 * 256 * 256 * 9 + 2 * 256
    classifier = 256 * K + K
    assert sum(p.numel() for p in head.parameters()) == embed + branch1 + 3 * separable_branch + fusion + classifier
    assert embed + branch1 + 3 * separable_branch + fusion + classifier == 3_712_275


def test_head_computes_the_documented_fusion() -> None:
    """The decoder feature equals the module docstring's formula written out with functional ops (eval-mode BN)."""
    torch.manual_seed(1)
    head = DAFormerHead((4, 6), 3, channels=5, dilations=(1, 2)).eval()
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    stages = [torch.randn(2, 4, 8, 6), torch.randn(2, 6, 4, 3)]

    def cbr(module, x, **kw):
        bn = module.bn
        y = F.conv2d(x, module.conv.weight, **kw)
        y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        return torch.relu(y * bn.weight[:, None, None] + bn.bias[:, None, None])

    e = [torch.einsum("bchw,ec->behw", s, l.proj.weight) + l.proj.bias[:, None, None]
         for s, l in zip(stages, head.embed_layers)]
    x = torch.cat([e[0], F.interpolate(e[1], size=(8, 6), mode="bilinear", align_corners=False)], 1)
    b0 = cbr(head.fuse_layer.aspp_modules[0], x)
    sep = head.fuse_layer.aspp_modules[1]
    b1 = cbr(sep.pointwise_conv, cbr(sep.depthwise_conv, x, padding=2, dilation=2, groups=10))
    want = cbr(head.fuse_layer.bottleneck, torch.cat([b0, b1], 1), padding=1)
    with torch.no_grad():
        got = head.features(stages)
        logits = head(stages)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, F.conv2d(want, head.classifier.weight, head.classifier.bias), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize(("arch", "width"), [("segformer_b0", 32), ("segformer_b2", 64)])
def test_tiny_model_features_prefixes_and_classifier(arch: str, width: int) -> None:
    model = _tiny(arch).eval()
    images = torch.randn(2, 3, 90, 60)
    with torch.no_grad():
        logits, features = model(images, return_features=True)
        encoder_only = model.encoder_features(images)
    assert logits.shape == (2, K, 23, 15)
    assert model.feature_channels["decoder"] == width and features["decoder"].shape == (2, width, 23, 15)
    assert [features[f"stage{i}"].shape[-2:] for i in range(1, 5)] == [(23, 15), (12, 8), (6, 4), (3, 2)]
    assert all(torch.equal(encoder_only[k], features[k]) for k in encoder_only) and len(encoder_only) == 4
    torch.testing.assert_close(model.classifier(features["decoder"]), logits, rtol=0, atol=1e-6)
    names = [n for n, _ in model.named_parameters()]
    head = [n for n in names if n.startswith(model.head_prefixes)]
    assert head and all(n.startswith("decode_head.") for n in head)
    assert all(n.startswith(model.encoder_prefix) for n in names if n not in head)
    assert not any("linear_fuse" in n for n in names)  # the MLP decoder is gone
    model.train()
    out, feats = model(torch.randn(2, 3, 64, 64), return_features=True)
    (out.square().mean() + feats["decoder"].mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_full_size_decoder_width_is_256() -> None:
    model = create_model("segformer_b0", K, decoder="daformer")
    assert model.feature_channels["decoder"] == 256 and model.decode_head.classifier.in_channels == 256
    assert model.decode_head.embed_layers[3].proj.in_features == 256  # MiT-B0 stage 4


def test_grad_checkpointing_keeps_loss_and_gradients() -> None:
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, K, (2, 16, 16))
    grads = []
    for checkpointing in (False, True):
        model = _tiny(drop_path=0.0, dropout=0.0).train()
        model.set_grad_checkpointing(checkpointing)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert torch.equal(grads[0][0], grads[1][0])
    for name, grad in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_pretrained_mit_loads_the_encoder_only(tmp_path) -> None:
    torch.manual_seed(7)
    source = create_model("segformer_b0", K, tiny=True)  # the MLP-decoder model: an encoder in transformers naming
    save_file({k: v.contiguous() for k, v in source.state_dict().items() if k.startswith("segformer.")},
              str(tmp_path / "mit.safetensors"))
    fresh = _tiny()
    torch.manual_seed(0)  # as _tiny: the same initialisation before loading
    model = create_model("segformer_b0", K, tiny=True, decoder="daformer", pretrained=str(tmp_path / "mit.safetensors"))
    for key, value in model.state_dict().items():
        want = source.state_dict()[key] if key.startswith("segformer.") else fresh.state_dict()[key]
        assert torch.equal(value, want), key  # encoder from the file, decoder at its initialisation
    first = next(k for k in fresh.state_dict() if k.startswith("segformer.") and k.endswith("proj.weight"))
    assert not torch.equal(fresh.state_dict()[first], model.state_dict()[first])  # the file changed the encoder


def test_mmseg_daformer_head_checkpoint_loads(tmp_path) -> None:
    """An mmseg DAFormer checkpoint (``backbone.*`` MiT + ``decode_head.*`` with ``conv_seg``): every head tensor
    lands under the reference's names, ``conv_seg`` as the classifier."""
    source = _tiny()
    state = {k: v for k, v in source.state_dict().items() if k.startswith("segformer.")}
    head = {("decode_head.conv_seg." + k.split(".")[-1] if k.startswith("decode_head.classifier.") else k): v
            for k, v in source.state_dict().items() if k.startswith("decode_head.")}
    assert "decode_head.conv_seg.weight" in head and "decode_head.fuse_layer.aspp_modules.1.depthwise_conv.conv.weight" \
        in head and "decode_head.embed_layers.0.proj.weight" in head
    torch.save({"state_dict": {**state, **head}}, tmp_path / "daformer.pth")
    torch.manual_seed(5)
    model = create_model("segformer_b0", K, tiny=True, decoder="daformer", pretrained=str(tmp_path / "daformer.pth"))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_decoder_option_is_checked_and_documented() -> None:
    with pytest.raises(ConfigError, match="decoder must be one of mlp, daformer"):
        create_model("segformer_b0", K, tiny=True, decoder="aspp")
    kind, default, meaning = option_help("segformer_b0")["decoder"]
    assert default == "mlp" and "daformer" in meaning and "ASPP" in meaning
    mlp = create_model("segformer_b0", K, tiny=True)
    assert mlp.decoder_kind == "mlp" and hasattr(mlp.decode_head, "linear_fuse")
