"""Model layer: every registered architecture (tiny) against the SegModel contract, full-size configs, loading."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from dasuite.errors import ConfigError, DasuiteError
from dasuite.models import MODELS, SegModel, create_model, model_options
from dasuite.models.deeplabv3plus import TINY_MBV2_SETTING, TINY_MBV2_WIDTH, MobileNetV2Backbone
from dasuite.models.pretrained import load_pretrained
from dasuite.models.resnet import ResNetBackbone
from dasuite.models.segformer import MIT_SPECS, SegFormer, convert_mit_checkpoint

# hrda fuses two predictions of a base network (no single decoder feeds a classifier; its features are the context
# pass's): tests/test_hrda.py checks its contract
ARCHS = [arch for arch in MODELS.names() if arch != "hrda"]
DEEPLABS = [a for a in ARCHS if a.startswith("deeplabv3plus_")]
FEATURES = {"stage1", "stage2", "stage3", "stage4", "decoder"}
LOGIT_FEATURES = {a: {"aux_logits"} for a in ARCHS if a.startswith("deeplabv2_")}  # extra heads (multi-level)
K = 5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _down(size: int, stride: int) -> int:
    """Spatial size after ``stride`` as a chain of padded stride-2 steps (ceil division each time)."""
    for _ in range(int(math.log2(stride))):
        size = math.ceil(size / 2)
    return size


def _stage_strides(model: SegModel) -> list[int]:
    cap = getattr(model, "backbone_output_stride", 32)
    return [min(4 * 2**i, cap) for i in range(4)]


# --- the contract, over the whole registry ------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_named_features_shapes(arch: str) -> None:
    model = create_model(arch, K, tiny=True).eval()
    height, width = 90, 60  # not multiples of 32 (CamVid-like): sizes are ceil-divided
    with torch.no_grad():
        plain = model(torch.zeros(2, 3, height, width))
        logits, features = model(torch.randn(2, 3, height, width), return_features=True)
    stride = model.output_stride  # 4, DeepLabV2 8
    assert plain.shape == logits.shape == (2, K, _down(height, stride), _down(width, stride))
    assert set(features) == set(model.feature_channels) == FEATURES | LOGIT_FEATURES.get(arch, set())
    strides = dict(zip(["stage1", "stage2", "stage3", "stage4"], _stage_strides(model)), decoder=stride)
    strides["aux_logits"] = stride
    for name, tensor in features.items():
        stride = strides[name]
        assert tensor.shape == (2, model.feature_channels[name], _down(height, stride), _down(width, stride)), name
        assert torch.isfinite(tensor).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_backward_reaches_every_parameter(arch: str) -> None:
    model = create_model(arch, K, tiny=True).train()
    logits, features = model(torch.randn(2, 3, 64, 64), return_features=True)
    sum(t.square().mean() for t in [logits, *(features[n] for n in LOGIT_FEATURES.get(arch, ()))]).backward()
    params = dict(model.named_parameters())
    assert all(p.requires_grad for p in params.values())
    no_grad = [n for n, p in params.items() if p.grad is None]
    assert not no_grad
    assert all(torch.isfinite(p.grad).all() for p in params.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_is_deterministic_copyable_and_decoder_feeds_classifier(arch: str) -> None:
    model = create_model(arch, K, tiny=True).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, features = model(images, return_features=True)
        again = model(images)
        copied = copy.deepcopy(model)(images)  # EMA teachers are deep copies
        from_decoder = model.classifier(features["decoder"])
    assert torch.equal(logits, again) and torch.equal(logits, copied)
    torch.testing.assert_close(from_decoder, logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_head_prefixes_cover_the_decoder_only(arch: str) -> None:
    model = create_model(arch, K, tiny=True)
    names = [n for n, _ in model.named_parameters()]
    head = [n for n in names if n.startswith(model.head_prefixes)]
    assert head and len(head) < len(names)
    assert all(not n.startswith(model.encoder_prefix) for n in head)
    assert all(n.startswith(model.encoder_prefix) for n in names if n not in head)


# --- SegFormer ------------------------------------------------------------------------------------------------------
def test_segformer_matches_transformers_decode_head() -> None:
    model = create_model("segformer_b2", K, tiny=True).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        hidden = model.segformer(images, output_hidden_states=True).hidden_states
        reference = model.decode_head(hidden)  # transformers' own SegformerDecodeHead.forward
        logits, features = model(images, return_features=True)
    # dasuite fuses each stage at its own resolution (the same linear map, summed in another order): float rounding
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-6)
    for i, stage in enumerate(hidden):
        assert torch.equal(features[f"stage{i + 1}"], stage)


def test_segformer_fused_decoder_trains_as_transformers_decode_head() -> None:
    model = create_model("segformer_b0", K, tiny=True, drop_path=0.0, dropout=0.0).train()
    images = torch.randn(2, 3, 64, 96)
    head = list(model.decode_head.parameters())
    ours = torch.autograd.grad(model(images).square().sum(), head)
    hidden = model.segformer(images, output_hidden_states=True).hidden_states
    theirs = torch.autograd.grad(model.decode_head(hidden).square().sum(), head)
    for (name, _), a, b in zip(model.decode_head.named_parameters(), ours, theirs):
        if name.startswith(("linear_c", "linear_projections")) and name.endswith("bias"):
            continue  # a constant before training-mode BatchNorm: its gradient is 0 up to rounding on both sides
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item(), msg=name)


def test_segformer_options_reach_the_network() -> None:
    model = create_model("segformer_b0", K, tiny=True, drop_path=0.2, dropout=0.3)
    assert model.hf_config.drop_path_rate == 0.2
    assert model.decode_head.dropout.p == 0.3
    eps = {n: m.eps for n, m in model.segformer.named_modules() if isinstance(m, nn.LayerNorm)}
    assert {e for n, e in eps.items() if "patch_embeddings" in n or ".attention." in n} == {1e-5}
    assert {e for n, e in eps.items() if "patch_embeddings" not in n and ".attention." not in n} == {1e-6}
    assert model_options("segformer_b0") == {"drop_path": 0.1, "dropout": 0.1, "decoder": "mlp"}


OFFICIAL_MIT = {  # kd_anchors.md section 4.1: depths, decoder dim; widths 32..256 for B0 else 64..512
    "b0": ([2, 2, 2, 2], 256),
    "b1": ([2, 2, 2, 2], 256),
    "b2": ([3, 4, 6, 3], 768),
    "b3": ([3, 4, 18, 3], 768),
    "b4": ([3, 8, 27, 3], 768),
    "b5": ([3, 6, 40, 3], 768),
}


@pytest.mark.parametrize("variant", sorted(OFFICIAL_MIT))
def test_segformer_full_configs_are_official(variant: str) -> None:
    from dasuite.models.segformer import segformer_config

    config = segformer_config(MIT_SPECS[variant], 19, drop_path=0.1, dropout=0.1)
    depths, decoder = OFFICIAL_MIT[variant]
    assert (config.depths, config.decoder_hidden_size) == (depths, decoder)
    assert config.hidden_sizes == ([32, 64, 160, 256] if variant == "b0" else [64, 128, 320, 512])
    assert config.num_attention_heads == [1, 2, 5, 8] and config.sr_ratios == [8, 4, 2, 1]
    assert config.patch_sizes == [7, 3, 3, 3] and config.strides == [4, 2, 2, 2] and config.mlp_ratios == [4] * 4


def _counts(model: SegModel) -> tuple[float, float]:
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(model.head_prefixes))
    return (total - head) / 1e6, head / 1e6


def test_full_size_parameter_counts() -> None:
    b0 = create_model("segformer_b0", 19)
    encoder, decoder = _counts(b0)  # paper: 3.4M / 0.4M; MiT-B0 ImageNet 3.7M with its 1000-class head
    assert 3.2 < encoder < 3.45 and 0.38 < decoder < 0.42 and 3.6 < encoder + decoder < 3.8
    assert b0.feature_channels == {"stage1": 32, "stage2": 64, "stage3": 160, "stage4": 256, "decoder": 256}
    b2 = create_model("segformer_b2", 19)
    encoder, decoder = _counts(b2)  # paper: 24.2M / 3.3M, 27.5M total
    assert 24.0 < encoder < 24.4 and 3.1 < decoder < 3.4
    assert b2.feature_channels["decoder"] == 768 and b2.feature_channels["stage4"] == 512
    mbv2 = create_model("deeplabv3plus_mobilenetv2", 19)
    backbone, head = _counts(mbv2)  # MobileNetV2 trunk up to the 320-ch block: 1.81M; VainF model ~5.2M
    assert 1.7 < backbone < 1.9 and 5.0 < backbone + head < 5.5
    assert mbv2.feature_channels == {"stage1": 24, "stage2": 32, "stage3": 96, "stage4": 320, "decoder": 256}
    assert mbv2.backbone.stage_ends == (3, 6, 13, 17)


# --- DeepLabV3+ -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", DEEPLABS)
def test_deeplab_output_stride_8(arch: str) -> None:
    model = create_model(arch, K, tiny=True, output_stride=8).eval()
    assert [conv[0].dilation for conv in list(model.aspp.convs)[1:4]] == [(12, 12), (24, 24), (36, 36)]
    assert model.aspp.project[-1].p == 0.1
    with torch.no_grad():
        logits, features = model(torch.randn(1, 3, 64, 64), return_features=True)
    assert [features[f"stage{i}"].shape[-1] for i in range(1, 5)] == [16, 8, 8, 8]
    assert logits.shape == (1, K, 16, 16)
    default = create_model(arch, K, tiny=True)
    assert [conv[0].dilation for conv in list(default.aspp.convs)[1:4]] == [(6, 6), (12, 12), (18, 18)]


def _conv_layout(module: nn.Module) -> list[tuple]:
    return [(n, m.stride, m.dilation, m.padding) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_resnet_backbone_matches_torchvision(depth: int, output_stride: int) -> None:
    dilate = [False, output_stride == 8, True]
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    with torch.device("meta"):
        ours = ResNetBackbone(blocks, output_stride=output_stride)
        reference = getattr(torchvision.models, f"resnet{depth}")(replace_stride_with_dilation=dilate)
    reference_shapes = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == reference_shapes
    assert _conv_layout(ours) == _conv_layout(reference)
    assert ours.channels == (256, 512, 1024, 2048)


def test_mobilenetv2_backbone_keys_and_dilation() -> None:
    with torch.device("meta"):
        ours = MobileNetV2Backbone(output_stride=8)
        reference = torchvision.models.mobilenet_v2()
    reference_shapes = {
        k: v.shape for k, v in reference.state_dict().items() if k.startswith("features.") and k.split(".")[1] != "18"
    }
    assert {k: v.shape for k, v in ours.state_dict().items()} == reference_shapes
    depthwise = {  # block index -> (stride, dilation) of its 3x3 depthwise conv
        int(n.split(".")[1]): (m.stride[0], m.dilation[0])
        for n, m in ours.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and n.split(".")[1] != "0"
    }
    assert depthwise[4] == (2, 1) and depthwise[7] == (1, 1) and depthwise[8] == (1, 2)
    assert depthwise[14] == (1, 2) and depthwise[15] == (1, 4) and depthwise[17] == (1, 4)


# --- factory errors -------------------------------------------------------------------------------------------------
def test_factory_rejects_bad_names_and_values() -> None:
    with pytest.raises(ConfigError, match=r"segformer_b0.*did you mean|valid: .*segformer_b0"):
        create_model("segformer_b9", K)
    with pytest.raises(ConfigError, match=r"no option 'drop_paht'.*did you mean 'drop_path'.*dropout=0.1"):
        create_model("segformer_b0", K, tiny=True, drop_paht=0.2)
    with pytest.raises(ConfigError, match=r"deeplabv3plus_r50.*no option 'dropout'.*output_stride=16"):
        create_model("deeplabv3plus_r50", K, tiny=True, dropout=0.1)
    with pytest.raises(ConfigError, match="output_stride must be 8 or 16, got 32"):
        create_model("deeplabv3plus_mobilenetv2", K, tiny=True, output_stride=32)
    with pytest.raises(ConfigError, match=r"drop_path must be in \[0, 1\), got 1.5"):
        create_model("segformer_b1", K, tiny=True, drop_path=1.5)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("segformer_b0", 0, tiny=True)


# --- pretrained weights ---------------------------------------------------------------------------------------------
_HF5_TO_HF4 = [  # inverse renames written independently of the module under test
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"segformer\.stages\.(\d+)\.blocks\.", r"segformer.encoder.block.\1."),
    (r"segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"attention\.q_proj", "attention.self.query"),
    (r"attention\.k_proj", "attention.self.key"),
    (r"attention\.v_proj", "attention.self.value"),
    (r"attention\.o_proj", "attention.output.dense"),
    (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
    (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
    (r"mlp\.fc(\d)", r"mlp.dense\1"),
    (r"layernorm_before", "layer_norm_1"),
    (r"layernorm_after", "layer_norm_2"),
    (r"decode_head\.linear_projections", "decode_head.linear_c"),
]
_HF4_TO_ORIGINAL_IN_BLOCK = [
    ("layer_norm_1.", "norm1."),
    ("layer_norm_2.", "norm2."),
    ("attention.self.query.", "attn.q."),
    ("attention.output.dense.", "attn.proj."),
    ("attention.self.sr.", "attn.sr."),
    ("attention.self.layer_norm.", "attn.norm."),
    ("mlp.dense1.", "mlp.fc1."),
    ("mlp.dense2.", "mlp.fc2."),
    ("mlp.dwconv.", "mlp.dwconv."),
]


def _to_hf4(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in _HF5_TO_HF4:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def _to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Installed-transformers SegFormer state -> NVlabs naming (key and value merged into ``attn.kv``)."""
    renames = [
        (r"^segformer\.encoder\.patch_embeddings\.(\d)\.proj\.", "patch_embed{}.proj."),
        (r"^segformer\.encoder\.patch_embeddings\.(\d)\.layer_norm\.", "patch_embed{}.norm."),
        (r"^segformer\.encoder\.layer_norm\.(\d)\.", "norm{}."),
        (r"^segformer\.encoder\.block\.(\d)\.", "block{}."),
        (r"^decode_head\.linear_c\.(\d)\.", "decode_head.linear_c{}."),
    ]
    heads = {"linear_fuse.": "linear_fuse.conv.", "batch_norm.": "linear_fuse.bn.", "classifier.": "linear_pred."}
    out: dict[str, torch.Tensor] = {}
    kv: dict[str, list[torch.Tensor]] = {}
    for key, value in sorted(_to_hf4(state).items()):  # sorted: ...self.key.* comes before ...self.value.*
        for pattern, template in renames:
            key = re.sub(pattern, lambda m: template.format(int(m[1]) + 1), key)
        for old, new in heads.items():
            key = key.replace("decode_head." + old, "decode_head." + new)
        if match := re.match(r"^(block\d\.\d+\.)(.+)$", key):
            prefix, rest = match[1], match[2]
            if rest.startswith(("attention.self.key.", "attention.self.value.")):
                kv.setdefault(f"{prefix}attn.kv.{rest.split('.')[-1]}", []).append(value)
                continue
            for old, new in _HF4_TO_ORIGINAL_IN_BLOCK:
                if rest.startswith(old):
                    key = prefix + new + rest[len(old) :]
        out[key] = value
    out.update({key: torch.cat(parts, dim=0) for key, parts in kv.items()})
    return out


def _encoder(model: SegModel) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith(model.encoder_prefix)}


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_segformer_loads_original_imagenet_checkpoint(tmp_path, monkeypatch) -> None:
    source = create_model("segformer_b0", K, tiny=True)
    original = _to_original(source.state_dict())
    assert any(k.endswith("attn.kv.weight") for k in original) and "patch_embed1.proj.weight" in original
    imagenet = {k: v for k, v in original.items() if not k.startswith("decode_head.")}
    imagenet["head.weight"], imagenet["head.bias"] = torch.randn(1000, 64), torch.randn(1000)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(imagenet, tmp_path / "hub" / "checkpoints" / "mit_b0.pth")
    for spec in (str(tmp_path / "hub" / "checkpoints" / "mit_b0.pth"), "imagenet"):
        model = create_model("segformer_b0", K, tiny=True, pretrained=spec)
        _assert_same(_encoder(model), _encoder(source))
        assert not torch.equal(model.decode_head.linear_fuse.weight, source.decode_head.linear_fuse.weight)
    prefixes = {"encoder_prefix": SegFormer.encoder_prefix, "classifier_prefix": SegFormer.classifier_prefix}
    how = {"filenames": ("mit_b0.pth",), "how_to_get": "", "convert": convert_mit_checkpoint}
    report = load_pretrained(SegFormer(model.hf_config), "imagenet", **how, **prefixes)
    assert sorted(report.dropped) == ["head.bias", "head.weight"]
    assert all(k.startswith("decode_head.") for k in report.missing) and report.missing


def test_segformer_loads_mmseg_and_hf_checkpoints(tmp_path) -> None:
    source = create_model("segformer_b2", K, tiny=True)
    original = _to_original(source.state_dict())
    seg = {k if k.startswith("decode_head.") else "backbone." + k: v for k, v in original.items()}
    seg["decode_head.conv_seg.weight"] = torch.randn(K, 64, 1, 1)
    torch.save({"meta": {"iter": 160000}, "state_dict": seg}, tmp_path / "segformer_mmseg.pth")
    model = create_model("segformer_b2", K, tiny=True, pretrained=str(tmp_path / "segformer_mmseg.pth"))
    _assert_same(model.state_dict(), source.state_dict())
    other_classes = create_model("segformer_b2", K + 2, tiny=True, pretrained=str(tmp_path / "segformer_mmseg.pth"))
    _assert_same(_encoder(other_classes), _encoder(source))
    assert torch.equal(other_classes.decode_head.linear_fuse.weight, source.decode_head.linear_fuse.weight)

    hub = {k: v.contiguous() for k, v in _to_hf4(_encoder(source)).items()}  # e.g. nvidia/mit-b2 model.safetensors
    hub["classifier.weight"], hub["classifier.bias"] = torch.randn(1000, 128), torch.randn(1000)
    save_file(hub, str(tmp_path / "model.safetensors"))
    model = create_model("segformer_b2", K, tiny=True, pretrained=str(tmp_path / "model.safetensors"))
    _assert_same(_encoder(model), _encoder(source))


def test_pretrained_errors_are_clear(tmp_path, monkeypatch) -> None:
    missing = tmp_path / "nowhere" / "mit_b0.pth"
    with pytest.raises(DasuiteError, match=rf"{re.escape(str(missing))} not found.*mit_b0.pth.*NVlabs SegFormer"):
        create_model("segformer_b0", K, tiny=True, pretrained=str(missing))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(DasuiteError, match=r"resnet101-63fe2227.pth.*hub/checkpoints"):
        create_model("deeplabv3plus_r101", K, tiny=True, pretrained="imagenet")

    original = _to_original(create_model("segformer_b0", K, tiny=True).state_dict())
    path = tmp_path / "ckpt.pth"
    torch.save({**original, "block9.0.attn.q.weight": torch.zeros(8, 8)}, path)
    with pytest.raises(DasuiteError, match=r"keys that this model lacks \(block9.0.attn.q.weight\)"):
        create_model("segformer_b0", K, tiny=True, pretrained=str(path))
    torch.save({"patch_embed1.proj.weight": original["patch_embed1.proj.weight"]}, path)
    with pytest.raises(DasuiteError, match=r"leave \d+ encoder tensors unloaded"):
        create_model("segformer_b0", K, tiny=True, pretrained=str(path))
    encoder_only = {k: v for k, v in original.items() if not k.startswith("decode_head.")}
    torch.save(encoder_only, path)  # tiny-B0 widths (8..64) into tiny-B2 (16..128)
    with pytest.raises(DasuiteError, match=r"\d+ tensors have the wrong shape \(block1.0.* \(8,\) vs model \(16,\)"):
        create_model("segformer_b2", K, tiny=True, pretrained=str(path))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DasuiteError, match="cannot read pretrained weights"):
        create_model("segformer_b0", K, tiny=True, pretrained=str(path))


def test_torchvision_mobilenetv2_weights_land(tmp_path) -> None:
    reference = torchvision.models.MobileNetV2(width_mult=TINY_MBV2_WIDTH, inverted_residual_setting=TINY_MBV2_SETTING)
    path = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("deeplabv3plus_mobilenetv2", K, tiny=True, pretrained=str(path))
    last = len(model.backbone.features)
    want = {"backbone." + k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
    want = {k: v for k, v in want.items() if int(k.split(".")[2]) < last}
    _assert_same(_encoder(model), want)
    images = torch.randn(2, 3, 64, 64)  # undilated up to stride 16: stage3 equals torchvision's own forward
    with torch.no_grad():
        _, features = model.eval()(images, return_features=True)
        expected = reference.eval().features[: model.backbone.stage_ends[2] + 1](images)
    assert torch.equal(features["stage3"], expected)


def test_resnet_imagenet_from_hub_cache_and_dasuite_safetensors(tmp_path, monkeypatch) -> None:
    source = create_model("deeplabv3plus_r50", K, tiny=True)
    backbone = {k[len("backbone.") :]: v for k, v in _encoder(source).items()}
    backbone["fc.weight"], backbone["fc.bias"] = torch.randn(1000, 128), torch.randn(1000)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(backbone, tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth")
    model = create_model("deeplabv3plus_r50", K, tiny=True, pretrained="imagenet")
    _assert_same(_encoder(model), _encoder(source))

    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "whole.safetensors"))
    model = create_model("deeplabv3plus_r50", K, tiny=True, pretrained=str(tmp_path / "whole.safetensors"))
    _assert_same(model.state_dict(), source.state_dict())
