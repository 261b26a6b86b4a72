"""DeepLabV2 (multi-level, ASPP-sum quirk, frozen BN, caffe/torchvision ResNets) and directory-based pretrained loading.

The registry-wide contract tests in test_models.py cover deeplabv2_r50/r101 too; this file tests what is specific.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from transformers import SegformerForSemanticSegmentation

from dasuite.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dasuite.errors import ConfigError, DasuiteError
from dasuite.models import create_model, model_options
from dasuite.models.deeplabv2 import convert_deeplabv2_checkpoint
from dasuite.models.pretrained import load_pretrained

K = 5
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)  # AdaptSegNet's IMG_MEAN, written out independently


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _tiny(**options) -> nn.Module:
    return create_model("deeplabv2_r101", K, tiny=True, **options)


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine values, so loading and freezing are observable."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)


# --- architecture ----------------------------------------------------------------------------------------------------
def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_options_and_multi_level_on_off() -> None:
    assert model_options("deeplabv2_r50") == {
        "multi_level": True,
        "classifier_dilations": (6, 12, 18, 24),
        "classifier_quirk": False,
        "freeze_bn": True,
        "resnet_style": "torchvision",
    }
    images = torch.randn(2, 3, 64, 48)
    multi = _tiny().eval()
    with torch.no_grad():
        logits, features = multi(images, return_features=True)
    assert features["aux_logits"].shape == logits.shape == (2, K, 8, 6)
    assert multi.feature_channels["aux_logits"] == K and multi.head_prefixes == ("classifier.", "aux_classifier.")
    torch.testing.assert_close(features["aux_logits"], multi.aux_classifier(features["stage3"]), rtol=0, atol=0)

    single = _tiny(multi_level=False).eval()
    with torch.no_grad():
        _, features = single(images, return_features=True)
    assert "aux_logits" not in features and "aux_logits" not in single.feature_channels
    assert single.aux_classifier is None and single.head_prefixes == ("classifier.",)
    assert not [n for n, _ in single.named_parameters() if "aux" in n]
    aux_params = sum(p.numel() for n, p in multi.named_parameters() if n.startswith("aux_classifier."))
    assert aux_params == 4 * (64 * K * 9 + K)  # four 3x3 convs 64 (tiny layer3) -> K, with bias
    assert _count(multi) - _count(single) == aux_params


def test_quirk_sums_exactly_the_first_two_branches() -> None:
    four = _tiny().eval()
    quirk = _tiny(classifier_quirk=True).eval()
    assert len(four.classifier.branches) == 4 and len(quirk.classifier.branches) == 2
    assert [c.dilation for c in four.classifier.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    shared = {k: v for k, v in four.state_dict().items() if ".branches.2." not in k and ".branches.3." not in k}
    quirk.load_state_dict(shared)  # strict: the quirk model is exactly the four-branch one minus branches 2, 3
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits_q, features = quirk(images, return_features=True)
        logits_4 = four(images)
        decoder, stage3 = features["decoder"], features["stage3"]
        branches = [conv(decoder) for conv in four.classifier.branches]
        aux = [conv(stage3) for conv in four.aux_classifier.branches]
    assert torch.equal(logits_q, branches[0] + branches[1])
    assert torch.equal(features["aux_logits"], aux[0] + aux[1])
    torch.testing.assert_close(logits_4, sum(branches[1:], branches[0]))
    assert (logits_4 - logits_q).abs().max() > 1e-3  # branches 18 and 24 do contribute in the fixed head
    with pytest.raises(ConfigError, match=r"classifier_quirk sums the first two .* got only \[6\]"):
        _tiny(classifier_quirk=True, classifier_dilations=[6])
    custom = _tiny(classifier_dilations=[2, 3])
    assert [c.dilation for c in custom.aux_classifier.branches] == [(2, 2), (3, 3)]


def test_freeze_bn_keeps_statistics_and_affine_through_a_training_step() -> None:
    model = _tiny()
    _randomise_bn(model)
    bn = {n: m for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    assert bn and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[0] in bn]  # BN holds no parameters
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        eval_logits = model.eval()(images)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits, features = model(images, return_features=True)
    torch.testing.assert_close(logits, eval_logits, rtol=0, atol=0)  # train() changes nothing: BN stays frozen
    (logits.square().mean() + features["aux_logits"].square().mean()).backward()
    optimizer.step()
    after = model.state_dict()
    bn_keys = [k for k in before if k.rsplit(".", 1)[0] in bn]
    assert len(bn_keys) == 4 * len(bn) and all(torch.equal(before[k], after[k]) for k in bn_keys)
    assert not torch.equal(before["backbone.conv1.weight"], after["backbone.conv1.weight"])

    plain = _tiny(freeze_bn=False).train()  # contrast: ordinary BN updates its running statistics in train mode
    mean = plain.backbone.bn1.running_mean.clone()
    plain(images)
    assert plain.backbone.bn1.weight.requires_grad and not torch.equal(mean, plain.backbone.bn1.running_mean)


def _conv_layout(backbone: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (m.stride[0], m.dilation[0]) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("style", ["torchvision", "caffe"])
def test_full_size_layout_is_deeplab_v2(style: str) -> None:
    with torch.device("meta"):
        model = create_model("deeplabv2_r101", 19, resnet_style=style)
        reference = torchvision.models.resnet101()
    want = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    want = {k: s for k, s in want.items() if not k.endswith("num_batches_tracked")}  # frozen BN has none
    assert {k: v.shape for k, v in model.backbone.state_dict().items()} == want
    layout = _conv_layout(model.backbone)
    for name, (stride, dilation) in layout.items():
        layer, block = (int(name[5]), int(name.split(".")[1])) if name.startswith("layer") else (0, 0)
        first_of_layer2 = layer == 2 and block == 0
        if name.endswith("conv2"):  # every 3x3 of layer3 is dilated 2 and of layer4 4, the first block included
            assert dilation == {1: 1, 2: 1, 3: 2, 4: 4}[layer], name
            assert stride == (2 if first_of_layer2 and style == "torchvision" else 1), name
        elif name.endswith("conv1") and layer:
            assert stride == (2 if first_of_layer2 and style == "caffe" else 1), name
    assert layout["layer2.0.downsample.0"][0] == 2 and layout["layer3.0.downsample.0"][0] == 1
    assert model.classifier.branches[3].in_channels == 2048 and model.aux_classifier.branches[0].in_channels == 1024


def test_full_size_parameter_counts() -> None:
    """ResNet-101 trunk 42.50M with BN affine (42.40M trainable when frozen); one 4-branch head on 2048 ch with 19
    classes = 4 x (2048 x 19 x 9 + 19) = 1.4009M, on 1024 ch 0.7005M: AdaptSegNet's DeeplabMulti is 44.60M."""
    variants = [(True, False, True), (False, False, True), (True, True, True), (True, False, False)]
    with torch.device("meta"):
        counts = {
            (multi, quirk, freeze): _count(
                create_model("deeplabv2_r101", 19, multi_level=multi, classifier_quirk=quirk, freeze_bn=freeze)
            )
            for multi, quirk, freeze in variants
        }
    head, aux = 4 * (2048 * 19 * 9 + 19), 4 * (1024 * 19 * 9 + 19)
    assert counts[(False, False, True)] == 42_394_816 + head
    assert counts[(True, False, True)] - counts[(False, False, True)] == aux
    assert counts[(True, False, True)] - counts[(True, True, True)] == (head + aux) // 2
    assert counts[(True, False, False)] == 44_601_560  # 42.50M trunk + both heads


@pytest.mark.parametrize("style", ["torchvision", "caffe"])
def test_output_stride_8_on_odd_sizes(style: str) -> None:
    model = _tiny(resnet_style=style).eval()
    with torch.no_grad():
        logits, features = model(torch.randn(1, 3, 90, 61), return_features=True)
    assert model.output_stride == 8 and logits.shape == (1, K, math.ceil(90 / 8), math.ceil(61 / 8))
    assert [tuple(features[f"stage{i}"].shape[-2:]) for i in range(1, 5)] == [(23, 16), (12, 8), (12, 8), (12, 8)]


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="classifier_dilations must be a non-empty list of positive ints, got \\[\\]"):
        _tiny(classifier_dilations=[])
    with pytest.raises(ConfigError, match="resnet_style must be one of torchvision, caffe, got 'caffee'"):
        _tiny(resnet_style="caffee")
    with pytest.raises(ConfigError, match="multi_level must be true or false, got 'yes'"):
        _tiny(multi_level="yes")
    with pytest.raises(ConfigError, match="no option 'classifier_quirks'.*did you mean 'classifier_quirk'"):
        _tiny(classifier_quirks=True)


# --- pretrained: torchvision, caffe / AdaptSegNet -------------------------------------------------------------------
_LOADER = {
    "filenames": ("resnet101-63fe2227.pth",),
    "how_to_get": "",
    "convert": convert_deeplabv2_checkpoint,
    "encoder_prefix": "backbone.",
    "classifier_prefix": ("classifier.", "aux_classifier."),
}


def _backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}


def test_torchvision_imagenet_weights_land(tmp_path, monkeypatch) -> None:
    source = _tiny(freeze_bn=False)  # plain BN: a torchvision file carries num_batches_tracked
    _randomise_bn(source)
    imagenet = {k[len("backbone.") :]: v for k, v in _backbone_state(source).items()}
    imagenet["fc.weight"], imagenet["fc.bias"] = torch.randn(1000, 128), torch.randn(1000)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(imagenet, tmp_path / "hub" / "checkpoints" / "resnet101-63fe2227.pth")
    model = _tiny(pretrained="imagenet")
    got = _backbone_state(model)
    assert got.keys() == {k for k in _backbone_state(source) if not k.endswith("num_batches_tracked")}
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in got.items())
    report = load_pretrained(_tiny(), "imagenet", **_LOADER)
    assert {"fc.weight", "fc.bias"} <= set(report.dropped)
    tracked = [k for k in imagenet if k.endswith("num_batches_tracked")]  # frozen BN has no counters: dropped
    assert len(tracked) == 20 and set(tracked) <= set(report.dropped)
    assert report.missing and all(k.startswith(("classifier.", "aux_classifier.")) for k in report.missing)
    with pytest.raises(DasuiteError, match=r"torchvision-style ResNet checkpoint .*resnet_style=torchvision"):
        _tiny(resnet_style="caffe", pretrained=str(tmp_path / "hub" / "checkpoints" / "resnet101-63fe2227.pth"))


def _caffe_reference(num_classes: int, *, multi_level: bool) -> nn.Module:
    """A tiny caffe-layout DeepLabV2 with ordinary BN and random statistics: stands in for the caffe network."""
    options = {"resnet_style": "caffe", "freeze_bn": False, "multi_level": multi_level}
    ref = create_model("deeplabv2_r101", num_classes, tiny=True, **options).eval()
    _randomise_bn(ref)
    with torch.no_grad():
        ref.backbone.bn1.running_mean.normal_(0, 50.0)  # caffe-scale activations (inputs in 0..255 units)
        ref.backbone.bn1.running_var.uniform_(1e3, 5e3)
    return ref


def _as_adaptsegnet(ref: nn.Module, *, prefix: str, heads: dict[str, str]) -> dict[str, torch.Tensor]:
    """Our names -> the AdaptSegNet / DeepLab-resnet names (``Scale.layer1.0.conv1``, ``layer5.conv2d_list.0``)."""
    out = {}
    for key, value in ref.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        head = key.split(".branches.")[0]
        if head in heads:
            key = key.replace(f"{head}.branches.", f"{heads[head]}.conv2d_list.")
        out[prefix + key.removeprefix("backbone.")] = value
    return out


def _caffe_input(images: torch.Tensor) -> torch.Tensor:
    """Normalised RGB -> AdaptSegNet's input: BGR in 0..255 minus the caffe mean pixel."""
    std, mean = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    rgb255 = 255.0 * (images * std + mean)
    return rgb255.flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)


def test_coco_init_checkpoint_in_caffe_layout(tmp_path, monkeypatch) -> None:
    ref = _caffe_reference(21, multi_level=False)  # DeepLab_resnet_pretrained_init: single head, 21 classes
    coco = _as_adaptsegnet(ref, prefix="Scale.", heads={"classifier": "layer5"})
    assert "Scale.layer1.0.conv1.weight" in coco and "Scale.layer5.conv2d_list.3.weight" in coco
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(coco, tmp_path / "hub" / "checkpoints" / "DeepLab_resnet_pretrained_init-f81d91e8.pth")

    same = _tiny(resnet_style="caffe", multi_level=False, pretrained="coco")  # K=5: the 21-class head is skipped
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = same.backbone.bn1(same.backbone.conv1(images))
        theirs = ref.backbone.bn1(ref.backbone.conv1(_caffe_input(images)))
        # interior (7x7 windows clear of the padding): the stem on normalised RGB equals the caffe stem
        torch.testing.assert_close(ours[..., 2:-2, 2:-2], theirs[..., 2:-2, 2:-2], rtol=1e-5, atol=1e-4)
        _, features = same(images, return_features=True)
        _, expected = ref(_caffe_input(images), return_features=True)
    for name in ("stage1", "stage4"):  # whole trunk: only the ~1 grey level border convention differs
        error = (features[name] - expected[name]).abs().max() / expected[name].abs().max()
        assert error < 0.01, (name, error)

    full = create_model("deeplabv2_r101", 21, tiny=True, resnet_style="caffe", multi_level=False, pretrained="coco")
    with torch.no_grad():  # 21 classes: the COCO head loads too, and the logits match the caffe network's
        got, want = full(images), ref(_caffe_input(images))
    assert (got - want).abs().max() / want.abs().max() < 0.01
    coco_path = tmp_path / "hub" / "checkpoints" / "DeepLab_resnet_pretrained_init-f81d91e8.pth"
    with pytest.raises(DasuiteError, match=r"init-f81d91e8.pth: a caffe-style ResNet checkpoint .*resnet_style=caffe"):
        _tiny(pretrained=str(coco_path))
    with pytest.raises(DasuiteError, match=r"DeepLab_resnet_pretrained_imagenet.pth found in .*hub/checkpoints"):
        _tiny(resnet_style="caffe", pretrained="imagenet")


def test_adaptsegnet_multi_level_checkpoint_into_quirk_model(tmp_path) -> None:
    ref = _caffe_reference(K, multi_level=True)  # a trained ResNetMulti: layer5 = aux (layer3), layer6 = main
    path = tmp_path / "GTA2Cityscapes_multi.pth"
    torch.save(_as_adaptsegnet(ref, prefix="", heads={"aux_classifier": "layer5", "classifier": "layer6"}), path)
    model = _tiny(resnet_style="caffe", classifier_quirk=True, pretrained=str(path))
    got, want = model.state_dict(), ref.state_dict()
    for head in ("classifier", "aux_classifier"):
        for i in (0, 1):
            assert torch.equal(got[f"{head}.branches.{i}.weight"], want[f"{head}.branches.{i}.weight"])
    single = _tiny(resnet_style="caffe", classifier_quirk=True, multi_level=False)
    report = load_pretrained(single, str(path), **_LOADER)
    assert sorted(k for k in report.dropped if "conv2d_list" in k) == sorted(
        [f"layer6.conv2d_list.{i}.{p}" for i in (2, 3) for p in ("weight", "bias")]
        + [f"layer5.conv2d_list.{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    )  # dead quirk branches of the main head, and the whole aux head of a single-level model
    assert not report.missing


# --- pretrained directories ----------------------------------------------------------------------------------------
def test_hugging_face_model_directory(tmp_path) -> None:
    source = create_model("segformer_b0", K, tiny=True)
    hf = SegformerForSemanticSegmentation(source.hf_config)
    hf.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").is_file()
    model = create_model("segformer_b0", K, tiny=True, pretrained=str(tmp_path / "hf"))
    want = hf.state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(v, want[k]) for k, v in got.items())

    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    model = create_model("segformer_b0", K, tiny=True, pretrained=str(tmp_path / "bin"))
    assert torch.equal(model.decode_head.classifier.weight, hf.decode_head.classifier.weight)

    (tmp_path / "sharded").mkdir()  # save_pretrained's sharded layout: an index naming each tensor's shard
    keys = sorted(state)
    weight_map = {k: f"model-0000{1 + (i % 2)}-of-00002.safetensors" for i, k in enumerate(keys)}
    for shard in set(weight_map.values()):
        save_file({k: state[k] for k in keys if weight_map[k] == shard}, str(tmp_path / "sharded" / shard))
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = create_model("segformer_b0", K, tiny=True, pretrained=str(tmp_path / "sharded"))
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


def test_dasuite_run_directory(tmp_path) -> None:
    source = _tiny()
    _randomise_bn(source)
    run = tmp_path / "runs" / "exp" / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    state = source.state_dict()
    last = {"model": state, "optimizer": {"state": {}, "param_groups": []}, "iteration": 6}
    torch.save(last, run / "checkpoints" / "last.pt")
    for spec in (run, run / "checkpoints"):
        model = _tiny(pretrained=str(spec))
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    best = {k: torch.zeros_like(v) if k == "classifier.branches.0.bias" else v for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in best.items()}, str(run / "checkpoints" / "best.safetensors"))
    model = _tiny(pretrained=str(run))  # best.safetensors is preferred over last.pt
    assert not model.classifier.branches[0].bias.any()


def test_directory_errors_are_clear(tmp_path) -> None:
    with pytest.raises(DasuiteError, match=r"holds no known weights file: expected a dasuite run directory .*best"):
        _tiny(pretrained=str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DasuiteError, match=r"has config.json but no weights.*model.safetensors or .*pytorch_model.bin"):
        create_model("segformer_b0", K, tiny=True, pretrained=str(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(DasuiteError, match=r"cannot read the shard index .*weight_map"):
        create_model("segformer_b0", K, tiny=True, pretrained=str(tmp_path))
    segformer_dir = tmp_path / "other"
    config = create_model("segformer_b0", K, tiny=True).hf_config
    SegformerForSemanticSegmentation(config).save_pretrained(segformer_dir)
    with pytest.raises(DasuiteError, match=rf"{segformer_dir}.*keys that this model lacks"):
        _tiny(pretrained=str(segformer_dir))
    torch.save({"iteration": 3, "model": {"note": "no tensors"}}, tmp_path / "last.pt")
    with pytest.raises(DasuiteError, match=r"last.pt hold no state dict"):
        _tiny(pretrained=str(tmp_path / "last.pt"))
    with pytest.raises(DasuiteError, match=r"coco not found .*keywords imagenet"):
        _tiny(pretrained="coco")
