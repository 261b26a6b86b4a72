"""DeepLabV3 as CIRKD builds it (deeplabv3_r18 / r101 / mobilenetv2): shapes and strides, CIRKD's layout, the
``perturb`` hook, loading checkpoints in CIRKD's naming, clear errors, and a short toy run through the CLI.

The registry-wide contract tests in test_models.py cover these archs too; this file tests what is specific. The
comparison with CIRKD's own code (same weights, same input) is a scratch script recorded in docs/models.md.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from dasuite.constants import IMAGENET_MEAN, IMAGENET_STD
from dasuite.errors import ConfigError, DasuiteError
from dasuite.models import create_model, model_options
from dasuite.models.deeplabv3 import DeepLabV3
from tests.conftest import ROOT

K = 5
ARCHS = ["deeplabv3_r18", "deeplabv3_r101", "deeplabv3_mobilenetv2"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine values: a fresh tiny network in eval mode can be dead (all-zero head)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
    return model


def _down(size: int, stride: int) -> int:
    for _ in range(int(math.log2(stride))):
        size = math.ceil(size / 2)
    return size


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_strides_and_feature_channels(arch: str, output_stride: int) -> None:
    model = create_model(arch, K, tiny=True, output_stride=output_stride).eval()
    height, width = 67, 45  # odd: every stride-2 step rounds up
    with torch.no_grad():
        logits, features = model(torch.randn(2, 3, height, width), return_features=True)
    assert model.output_stride == output_stride
    assert logits.shape == (2, K, _down(height, output_stride), _down(width, output_stride))
    strides = {"stage1": 4, "stage2": 8, "stage3": min(16, output_stride), "stage4": output_stride,
               "decoder": output_stride}
    assert set(features) == set(model.feature_channels) == set(strides)
    for name, tensor in features.items():
        assert tensor.shape == (2, model.feature_channels[name], _down(height, strides[name]),
                                _down(width, strides[name])), name
    rates = {8: (12, 24, 36), 16: (6, 12, 18)}[output_stride]
    assert [conv[0].dilation[0] for conv in list(model.aspp.convs)[1:4]] == list(rates)


def test_full_size_channels_and_parameter_counts_match_cirkd() -> None:
    """CIRKD's paper (Table 1): DeepLabV3-R101 61.1M, R18 13.6M, MobileNetV2 3.2M parameters (ResNets with the aux
    head); counts of CIRKD v1's own modules: 61,118,950 / 13,607,974 / 3,233,171."""
    expected = {"deeplabv3_r101": (61_118_950, (256, 512, 1024, 2048), 256),
                "deeplabv3_r18": (13_607_974, (64, 128, 256, 512), 128),
                "deeplabv3_mobilenetv2": (3_233_171, (24, 32, 96, 320), 128)}
    for arch, (count, stages, head) in expected.items():
        model = create_model(arch, 19, aux=arch != "deeplabv3_mobilenetv2")
        assert sum(p.numel() for p in model.parameters()) == count, arch
        assert [model.feature_channels[f"stage{i}"] for i in range(1, 5)] == list(stages)
        assert model.feature_channels["decoder"] == head and model.head_prefixes[:3] == ("aspp.", "bottleneck.",
                                                                                          "classifier.")
    assert model_options("deeplabv3_r18") == {"output_stride": 8, "head_channels": None, "aux": False}
    assert create_model("deeplabv3_r101", 19, head_channels=512).feature_channels["decoder"] == 512  # CIRKDv2


def _dilations(module: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (m.stride[0], m.dilation[0]) for n, m in module.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}


def test_resnet18_is_cirkds_deep_stem_dilated_layout() -> None:
    """CIRKD ``resnet18_v1s(dilated=True)``: 3x3 stem 64/64/128 (stride 2 first), BasicBlockV1b whose conv1 takes
    ``dilation`` and conv2 ``previous_dilation``: layer3 (1, 2) then (2, 2); layer4 (2, 4) then (4, 4)."""
    trunk = create_model("deeplabv3_r18", 19).backbone
    assert [trunk.conv1.out_channels, trunk.conv2.out_channels, trunk.conv3.out_channels] == [64, 64, 128]
    layout = _dilations(trunk)
    assert layout["conv1"] == (2, 1) and layout["conv2"] == (1, 1) and layout["conv3"] == (1, 1)
    assert layout["layer2.0.conv1"] == (2, 1)
    assert [layout[f"layer3.{b}.conv{c}"] for b in (0, 1) for c in (1, 2)] == [(1, 1), (1, 2), (1, 2), (1, 2)]
    assert [layout[f"layer4.{b}.conv{c}"] for b in (0, 1) for c in (1, 2)] == [(1, 2), (1, 4), (1, 4), (1, 4)]
    assert trunk.layer1[0].downsample is not None  # 128-channel stem -> 64-channel BasicBlocks
    deep = create_model("deeplabv3_r101", 19).backbone
    assert _dilations(deep)["layer3.0.conv2"] == (1, 1) and _dilations(deep)["layer4.0.conv2"] == (1, 2)
    assert len(deep.layer3) == 23 and deep.layer1[0].conv1.in_channels == 128


def test_mobilenetv2_is_cirkds_dilate_scale_8() -> None:
    """CIRKD ``MobileNetV2Dilated(dilate_scale=8)``: blocks 7 and 14 lose their stride (dilation 1 and 2), blocks
    8-13 use dilation 2 and 15-17 dilation 4; no last 1x1 conv."""
    features = create_model("deeplabv3_mobilenetv2", 19).backbone.features
    assert len(features) == 18
    depthwise = {i: [(s, d) for s, d in _dilations(block).values()] for i, block in enumerate(features) if i > 0}
    expected = {i: [(2 if i in (2, 4) else 1, 1)] for i in range(1, 7)}
    expected |= {7: [(1, 1)], **{i: [(1, 2)] for i in range(8, 14)}, 14: [(1, 2)]}
    expected |= {i: [(1, 4)] for i in (15, 16, 17)}
    assert depthwise == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_perturb_is_applied_between_encoder_and_head(arch: str) -> None:
    model = _randomise_bn(create_model(arch, K, tiny=True)).eval()
    images = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        plain, features = model(images, return_features=True)
        same, same_features = model(images, return_features=True, perturb=lambda stages: list(stages))
        zeroed = model(images, perturb=lambda stages: [*stages[:3], torch.zeros_like(stages[3])])
        doubled, doubled_features = model(
            images, return_features=True,
            perturb=lambda stages: [torch.cat([s, nn.functional.dropout(s, 0.5, training=True)]) for s in stages])
    assert torch.equal(plain, same) and all(torch.equal(features[k], same_features[k]) for k in features)
    assert zeroed.shape == plain.shape and not torch.allclose(zeroed, plain)
    assert doubled.shape[0] == 4 and torch.allclose(doubled[:2], plain, atol=1e-6)
    assert all(t.shape[0] == 4 for t in doubled_features.values())  # the features are the perturbed stages'


def test_aux_head_gives_aux_logits_and_trains() -> None:
    model = create_model("deeplabv3_r101", K, tiny=True, aux=True).train()
    logits, features = model(torch.randn(2, 3, 48, 48), return_features=True)
    assert features["aux_logits"].shape == logits.shape and model.feature_channels["aux_logits"] == K
    assert "aux_head." in model.head_prefixes
    (logits.square().mean() + features["aux_logits"].square().mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ConfigError, match="aux must be true or false"):
        create_model("deeplabv3_r18", K, tiny=True, aux="yes")
    with pytest.raises(ConfigError, match="output_stride must be 8 or 16"):
        create_model("deeplabv3_r18", K, tiny=True, output_stride=32)
    with pytest.raises(ConfigError, match="head_channels must be a positive int"):
        create_model("deeplabv3_r18", K, tiny=True, head_channels=0)


@pytest.mark.parametrize("arch", ["deeplabv3_r18", "deeplabv3_mobilenetv2"])
def test_grad_checkpointing_gives_the_same_gradients(arch: str) -> None:
    plain = create_model(arch, K, tiny=True).train()
    saving = copy.deepcopy(plain)
    saving.set_grad_checkpointing(True)
    images = torch.randn(2, 3, 40, 40)
    grads = []
    for model in (plain, saving):
        torch.manual_seed(1)  # the same dropout masks
        model(images).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


# --- checkpoints in CIRKD's naming ---------------------------------------------------------------------------------
_TV_TO_CIRKD_MBV2 = {"plain": {"0.0": "0", "0.1": "1", "1": "3", "2": "4"},
                     "expanded": {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}}


def _cirkd_key(key: str, mobile: bool, expanded: set[str]) -> str:
    """dasuite key -> CIRKD v1's name for it (models/deeplabv3.py, deeplabv3_mobile.py, base_models/*), written out
    independently of the converter."""
    heads = [("aspp.convs.0.", "head.aspp.b0."), ("aspp.convs.1.", "head.aspp.b1.block."),
             ("aspp.convs.2.", "head.aspp.b2.block."), ("aspp.convs.3.", "head.aspp.b3.block."),
             ("aspp.convs.4.", "head.aspp.b4.gap."), ("aspp.project.", "head.aspp.project."),
             ("bottleneck.", "head.block."), ("classifier.", "head.block.4."), ("aux_head.", "auxlayer.block.")]
    for ours, theirs in heads:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    rest = key[len("backbone."):]
    if not mobile:
        return "pretrained." + rest
    parts = rest.split(".")
    if len(parts) > 4 and parts[2] == "conv":  # features.i.conv.<tv index>.<param>
        table = _TV_TO_CIRKD_MBV2["expanded" if parts[1] in expanded else "plain"]
        index = ".".join(parts[3:-1])
        parts = [*parts[:3], table[index], parts[-1]]
    return "pretrained.net." + ".".join(parts)


_STEM = {"resnet": ("backbone.conv1.weight", "backbone.bn1.running_mean"),
         "mobile": ("backbone.features.0.0.weight", "backbone.features.0.1.running_mean")}


def _cirkd_state(model: DeepLabV3) -> dict[str, torch.Tensor]:
    mobile = not hasattr(model.backbone, "layer1")
    expanded = {n.split(".")[2] for n in model.state_dict() if ".conv.1.0." in n and n.startswith("backbone.")}
    return {_cirkd_key(k, mobile, expanded): torch.randn_like(v) if v.is_floating_point() else v + 3
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_cirkd_segmentation_checkpoint_loads_every_tensor(arch: str, tmp_path) -> None:
    model = create_model(arch, K, tiny=True, aux=arch != "deeplabv3_mobilenetv2")
    state = _cirkd_state(model)
    spot = {"deeplabv3_r18": ["pretrained.conv3.weight", "pretrained.layer4.0.conv2.weight",
                              "auxlayer.block.4.bias"],
            "deeplabv3_r101": ["pretrained.bn3.running_var", "pretrained.layer3.1.conv3.weight",
                               "auxlayer.block.1.weight"],
            "deeplabv3_mobilenetv2": ["pretrained.net.features.0.0.weight", "pretrained.net.features.1.conv.3.weight",
                                      "pretrained.net.features.7.conv.7.running_mean"]}[arch]
    common = ["head.aspp.b0.0.weight", "head.aspp.b2.block.1.bias", "head.aspp.b4.gap.2.running_var",
              "head.aspp.project.0.weight", "head.block.0.weight", "head.block.1.weight", "head.block.4.bias"]
    assert set(spot + common) <= set(state)
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "cirkd.pth")  # DDP-saved
    loaded = create_model(arch, K, tiny=True, pretrained=str(tmp_path / "cirkd.pth"),
                          aux=arch != "deeplabv3_mobilenetv2")
    ours = loaded.state_dict()
    mobile = arch.endswith("mobilenetv2")
    expanded = {n.split(".")[2] for n in ours if ".conv.1.0." in n and n.startswith("backbone.")}
    stem = _STEM["mobile" if mobile else "resnet"]
    for key, value in ours.items():
        if key not in stem:  # the stem is adapted to dasuite's input: test_trained_cirkd_model_sees_the_same_image
            assert torch.equal(value, state[_cirkd_key(key, mobile, expanded)]), key
    if not mobile:  # the teacher without its aux head: auxlayer is dropped, the rest loads
        plain = create_model(arch, K, tiny=True, pretrained=str(tmp_path / "cirkd.pth"))
        assert plain.aux_head is None and torch.equal(plain.classifier.weight, state["head.block.4.weight"])


@pytest.mark.parametrize("arch", ["deeplabv3_r18", "deeplabv3_mobilenetv2"])
def test_trained_cirkd_model_sees_the_same_image(arch: str, tmp_path) -> None:
    """CIRKD trains on BGR 0..255 minus the caffe mean pixel (104.008, 116.669, 122.679); loaded into dasuite, whose
    input is normalised RGB, a CIRKD segmenter must compute the same logits from the same picture."""
    model = create_model(arch, K, tiny=True)
    mobile = arch.endswith("mobilenetv2")
    expanded = {n.split(".")[2] for n in model.state_dict() if ".conv.1.0." in n and n.startswith("backbone.")}
    state = {k: v.abs() + 0.5 if k.endswith("running_var") else v * 0.5 for k, v in _cirkd_state(model).items()}
    torch.save(state, tmp_path / "cirkd.pth")
    as_cirkd = create_model(arch, K, tiny=True).eval()  # CIRKD's function: its tensors, its input convention
    as_cirkd.load_state_dict({k: state[_cirkd_key(k, mobile, expanded)] for k in as_cirkd.state_dict()})
    loaded = create_model(arch, K, tiny=True, pretrained=str(tmp_path / "cirkd.pth")).eval()
    picture = torch.rand(2, 3, 50, 70) * 255  # RGB 0..255
    normalised = (picture / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1)
    caffe = picture.flip(1) - torch.tensor([104.00698793, 116.66876762, 122.67891434]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected, ours = as_cirkd(caffe), loaded(normalised)
        unadapted = as_cirkd(normalised)
    scale = expected.abs().max()
    error = (ours - expected).abs().max()
    # the conventions' zero paddings are mean pixels ~1 grey level apart, hence not 0 (relative 4e-5 .. 1.3e-3 here)
    assert scale > 0 and error < 1e-2 * scale
    assert (unadapted - expected).abs().max() > 50 * error  # without the adaptation: another function


@pytest.mark.parametrize("arch", ARCHS)
def test_cirkd_imagenet_backbone_file_from_the_hub_cache(arch: str, tmp_path, monkeypatch) -> None:
    """CIRKD's ImageNet files hold the bare trunk (``conv1.weight``, ``layer1...``, ``features.1.conv.3...``) plus
    the ImageNet classifier (and, for CSAIL's MobileNetV2, the last 1x1 conv ``features.18``)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = create_model(arch, K, tiny=True)
    state = {k[len("pretrained."):].removeprefix("net."): v for k, v in _cirkd_state(model).items()
             if k.startswith("pretrained.")}
    mobile = arch.endswith("mobilenetv2")
    state |= {"classifier.1.weight": torch.randn(1000, 8), "features.18.0.weight": torch.randn(8, 80, 1, 1)} \
        if mobile else {"fc.weight": torch.randn(1000, 128), "fc.bias": torch.randn(1000)}
    name = {"deeplabv3_r18": "resnet18-imagenet.pth", "deeplabv3_r101": "resnet101-imagenet.pth",
            "deeplabv3_mobilenetv2": "mobilenetv2-imagenet.pth"}[arch]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / name)
    loaded = create_model(arch, K, tiny=True, pretrained="imagenet")
    trunk = {k: v for k, v in loaded.state_dict().items() if k.startswith("backbone.")}
    assert len(trunk) == len(state) - 2
    if not mobile:
        assert all(torch.equal(v, state[k[len("backbone."):]]) for k, v in trunk.items())
    else:
        assert torch.equal(trunk["backbone.features.2.conv.1.0.weight"], state["features.2.conv.3.weight"])
        assert torch.equal(trunk["backbone.features.1.conv.2.running_var"], state["features.1.conv.4.running_var"])


def test_torchvision_mobilenetv2_file_also_fits(tmp_path) -> None:
    model = create_model("deeplabv3_mobilenetv2", K, tiny=True)
    state = {k[len("backbone."):]: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in model.state_dict().items() if k.startswith("backbone.")}
    torch.save(state, tmp_path / "mobilenet_v2-b0353104.pth")
    loaded = create_model("deeplabv3_mobilenetv2", K, tiny=True,
                          pretrained=str(tmp_path / "mobilenet_v2-b0353104.pth"))
    assert torch.equal(loaded.backbone.features[5].conv[1][0].weight, state["features.5.conv.1.0.weight"])


def test_missing_weights_and_wrong_head_width_are_clear(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints"
    with pytest.raises(DasuiteError, match=rf"resnet18-imagenet.pth found in {hub}.*get CIRKD's ImageNet backbone "
                                           r"resnet18-imagenet.pth \(https://github.com/winycg/CIRKD/releases/"
                                           r".*put it"):
        create_model("deeplabv3_r18", K, tiny=True, pretrained="imagenet")
    with pytest.raises(DasuiteError, match=r"nowhere.pth not found.*resnet101-imagenet.pth.*"
                                           r"deeplabv3_resnet101_citys_best_model.pth"):
        create_model("deeplabv3_r101", K, tiny=True, pretrained=str(tmp_path / "nowhere.pth"))
    with pytest.raises(DasuiteError, match=r"mobilenetv2-imagenet.pth \(or|none of mobilenetv2-imagenet.pth"):
        create_model("deeplabv3_mobilenetv2", K, tiny=True, pretrained="imagenet")
    wide = _cirkd_state(create_model("deeplabv3_r101", K, tiny=True, head_channels=32))
    torch.save(wide, tmp_path / "v2.pth")
    with pytest.raises(DasuiteError, match=r"head is 32 channels wide, the model's 16: set "
                                           r"model.options.head_channels=32"):
        create_model("deeplabv3_r101", K, tiny=True, pretrained=str(tmp_path / "v2.pth"))
    assert create_model("deeplabv3_r101", K, tiny=True, head_channels=32, pretrained=str(tmp_path / "v2.pth"))


def test_short_toy_training_run_through_the_cli(tmp_path) -> None:
    overrides = [
        f"work_dir={tmp_path}", "model.arch=deeplabv3_mobilenetv2", "model.tiny=true", "train.max_iters=4",
        "train.batch_size=2", "train.eval_interval=4", "train.checkpoint_interval=4", "schedule.warmup_iters=0",
        "data.num_workers=0", "data.source.size=[64,48]", "data.source.num_images=8",
        "data.source.augment.crop=[48,48]",
        "data.val.size=[64,48]", "data.val.num_images=2", "data.test.size=[64,48]", "data.test.num_images=2",
        "log.progress_bar=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "dasuite", "run", str(ROOT / "experiments/toy/source_only.yaml"),
                           *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert summary["final"] is not None


def test_source_only_aux_weight_needs_an_aux_head(tmp_path) -> None:
    from dasuite.methods import METHODS
    from tests.conftest import tiny_toy_config

    cfg = tiny_toy_config(tmp_path, "model.arch=deeplabv3_r18", "method.name=source_only",
                          "method.seg_weight_aux=0.4")
    with pytest.raises(ConfigError, match=r"seg_weight_aux=0.4 needs auxiliary logits.*model.options.aux=true"):
        METHODS.get("source_only")(cfg, K)
    cfg = tiny_toy_config(tmp_path, "model.arch=deeplabv3_r18", "model.options={aux: true}",
                          "method.name=source_only", "method.seg_weight_aux=0.4")
    method = METHODS.get("source_only")(cfg, K)
    images, labels = torch.randn(2, 3, 48, 48), torch.randint(0, K, (2, 48, 48))
    losses = method.training_step({"source": {"image": images, "label": labels}}, 0)
    assert set(losses) == {"loss", "loss_seg", "loss_seg_aux"}
    torch.testing.assert_close(losses["loss"], losses["loss_seg"] + 0.4 * losses["loss_seg_aux"])
