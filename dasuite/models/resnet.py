"""Dilated ResNet trunks (torchvision Bottleneck blocks, or dilatable BasicBlocks for ResNet-18), shared by
DeepLabV3+, DeepLabV2 and DeepLabV3.

``ResNetBackbone`` keeps torchvision's module names (``conv1``, ``bn1``, ``layer1.0.downsample.1``...) so ImageNet
``.pth`` files load as they are, and offers the layouts the DeepLab family uses:

- dilation rule: ``uniform_dilation=False`` is torchvision's ``replace_stride_with_dilation`` (the first block of a
  dilated stage keeps the previous dilation: layer3 1,2,2..., layer4 2,4,4...); ``True`` is DeepLab-v2's (every 3x3
  conv of a dilated stage uses the stage dilation: layer3 all 2, layer4 all 4; caffe prototxt, AdaptSegNet, ADVENT).
- stride placement: ``stride_in_1x1=False`` puts a block's stride in its 3x3 conv (torchvision, "ResNet v1.5");
  ``True`` in its first 1x1 conv (the original MSRA caffe ResNet the DeepLab-v2 weights come from).
- stem: ``deep_stem=False`` is torchvision's 7x7 conv; ``True`` the "ResNet-v1s" stem of three 3x3 convs
  (``conv1`` stride 2 to stem/2, ``conv2`` stem/2, ``conv3`` to stem; each + BN + ReLU) that CIRKD's and CSAIL's
  ``resnet*-imagenet.pth`` weights have (stem 128).

``caffe_stem_to_normalised_rgb`` adapts caffe-trained weights (BGR input, 0..255 minus the caffe mean pixel) to
dasuite's input (RGB, ImageNet mean/std normalised).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from dasuite.constants import IMAGENET_MEAN, IMAGENET_STD
from dasuite.errors import ConfigError
from dasuite.models.checkpoint import checkpointed, wants_checkpoint

RESNET_BLOCKS = {"r18": (2, 2, 2, 2), "r50": (3, 4, 6, 3), "r101": (3, 4, 23, 3)}
BASIC_BLOCK_RESNETS = ("r18",)  # the others are built of Bottlenecks
TINY_RESNET = {"planes": (4, 8, 16, 32), "stem": 8}  # tiny: stage channels 16/32/64/128, one block per stage
#: torchvision's ImageNet ResNet files, named by deeplabv2's and deeplabv3plus's PRETRAINED_FILES (read by
#: dasuite.models.weight_files without importing this module)
PRETRAINED_FILES = {
    "files": [
        {"name": "resnet50-0676ba61.pth", "sha256": "0676ba61", "size_mb": 97.781,
         "what": "ResNet-50 IMAGENET1K_V1",
         "source": "https://download.pytorch.org/models/resnet50-0676ba61.pth"},
        {"name": "resnet50-11ad3fa6.pth", "sha256": "11ad3fa6", "size_mb": 97.79,
         "what": "ResNet-50 IMAGENET1K_V2",
         "source": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"},
        {"name": "resnet101-63fe2227.pth", "sha256": "63fe2227", "size_mb": 170.511,
         "what": "ResNet-101 IMAGENET1K_V1",
         "source": "https://download.pytorch.org/models/resnet101-63fe2227.pth"},
        {"name": "resnet101-cd907fc2.pth", "sha256": "cd907fc2", "size_mb": 170.53,
         "what": "ResNet-101 IMAGENET1K_V2",
         "source": "https://download.pytorch.org/models/resnet101-cd907fc2.pth"},
    ],
}
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)  # the DeepLab / AdaptSegNet IMG_MEAN, 0..255 units


def dilated_stages(output_stride: int) -> tuple[bool, bool, bool]:
    """Which of stages 2..4 trade their stride 2 for dilation (torchvision ``replace_stride_with_dilation``)."""
    if output_stride not in (8, 16):
        raise ConfigError(f"model option output_stride must be 8 or 16, got {output_stride!r}")
    return (False, output_stride == 8, True)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (same module names: ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample``) whose
    3x3 convs may be dilated, which torchvision's refuses: ``dilation`` for ``conv1`` (the strided one),
    ``second_dilation`` (default: ``dilation``) for ``conv2``, as CIRKD's / gluoncv's ``BasicBlockV1b``."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        second_dilation: int | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        second = dilation if second_dilation is None else second_dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=second, dilation=second, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNetBackbone(nn.Module):
    """ResNet trunk (stem, ``layer1`` .. ``layer4``, no pooling/fc) of Bottleneck or BasicBlocks of any width; returns
    4 stages.

    Full size: ``blocks`` (3, 4, 6, 3) = ResNet-50, (3, 4, 23, 3) = ResNet-101 with ``planes`` (64, 128, 256, 512),
    ``stem`` 64; ``block="basic"`` with (2, 2, 2, 2) = ResNet-18. Stage channels are planes x the block's expansion
    (4 for Bottleneck, 1 for BasicBlock: ``channels``). With the defaults, the same module names, strides and
    dilations as ``torchvision.models.resnet50(replace_stride_with_dilation=...)``; see the module docstring for
    ``uniform_dilation``, ``stride_in_1x1`` and ``deep_stem``. A dilated stage's first BasicBlock gets the previous
    dilation in ``conv1`` and the stage's in ``conv2`` (CIRKD's ResNet-18; with ``uniform_dilation`` both the
    stage's). ``norm_layer`` is e.g. ``nn.BatchNorm2d`` or torchvision's
    ``FrozenBatchNorm2d`` (same state-dict names, minus ``num_batches_tracked``). With ``grad_checkpointing``
    every Bottleneck of ``layer1..layer4`` is checkpointed in training (``dasuite.models.checkpoint``); per block
    rather than per stage, because recomputing a whole stage in the backward pass would rebuild all of ResNet-101's
    23 ``layer3`` blocks at once and lower the peak little.
    """

    grad_checkpointing: bool = False

    def __init__(
        self,
        blocks: Sequence[int],
        planes: Sequence[int] = (64, 128, 256, 512),
        stem: int = 64,
        output_stride: int = 16,
        *,
        uniform_dilation: bool = False,
        stride_in_1x1: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        block: str = "bottleneck",
        deep_stem: bool = False,
    ) -> None:
        super().__init__()
        if block not in ("bottleneck", "basic"):
            raise ConfigError(f"ResNet block must be bottleneck or basic, got {block!r}")
        unit = Bottleneck if block == "bottleneck" else BasicBlock
        self.deep_stem = deep_stem
        if deep_stem:
            self.conv1 = nn.Conv2d(3, stem // 2, kernel_size=3, stride=2, padding=1, bias=False)
            self.bn1 = norm_layer(stem // 2)
            self.conv2 = nn.Conv2d(stem // 2, stem // 2, kernel_size=3, padding=1, bias=False)
            self.bn2 = norm_layer(stem // 2)
            self.conv3 = nn.Conv2d(stem // 2, stem, kernel_size=3, padding=1, bias=False)
            self.bn3 = norm_layer(stem)
        else:
            self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = norm_layer(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        dilate = (False, *dilated_stages(output_stride))
        inplanes, dilation = stem, 1
        for index, (count, width) in enumerate(zip(blocks, planes)):
            stride, previous = (1 if index == 0 else 2), dilation
            if dilate[index]:
                dilation, stride = dilation * stride, 1
            first_dilation = dilation if uniform_dilation else previous
            out = width * unit.expansion
            downsample = None
            if stride != 1 or inplanes != out:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False), norm_layer(out)
                )
            second = {"second_dilation": dilation} if unit is BasicBlock else {}
            first = unit(inplanes, width, stride, downsample, dilation=first_dilation, norm_layer=norm_layer, **second)
            if stride_in_1x1 and stride != 1 and unit is Bottleneck:
                first.conv1.stride, first.conv2.stride = (stride, stride), (1, 1)
            layers = [first]
            layers += [unit(out, width, dilation=dilation, norm_layer=norm_layer) for _ in range(count - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
            inplanes = out
        self.channels = tuple(w * unit.expansion for w in planes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.deep_stem:
            x = self.relu(self.bn3(self.conv3(self.relu(self.bn2(self.conv2(x))))))
        x = self.maxpool(x)
        stages = []
        saving = wants_checkpoint(self, self.grad_checkpointing)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            if saving:
                for block in layer:
                    x = checkpointed(block, x)
            else:
                x = layer(x)
            stages.append(x)
        return stages


def resnet_backbone(
    name: str, *, tiny: bool, output_stride: int, deep_stem: bool = False, **layout: object
) -> ResNetBackbone:
    """``r18`` (BasicBlocks) / ``r50`` / ``r101`` trunk; stem 64, or 128 with ``deep_stem``; ``tiny``: stem 8,
    stage channels 16/32/64/128, blocks 1/1/1/1 (r101: 1/1/2/1). ``layout`` = the other keyword options of
    ``ResNetBackbone`` (``uniform_dilation``, ``stride_in_1x1``, ``norm_layer``)."""
    block = "basic" if name in BASIC_BLOCK_RESNETS else "bottleneck"
    shape = {"block": block, "deep_stem": deep_stem, **layout}
    if tiny:
        blocks = (1, 1, 1 + (name == "r101"), 1)
        planes = tuple(p * (4 if block == "basic" else 1) for p in TINY_RESNET["planes"])
        return ResNetBackbone(blocks, planes, TINY_RESNET["stem"], output_stride, **shape)
    return ResNetBackbone(RESNET_BLOCKS[name], stem=128 if deep_stem else 64, output_stride=output_stride, **shape)


def caffe_stem_to_normalised_rgb(
    conv1: torch.Tensor, bn1_running_mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Caffe ResNet stem weights -> the same function of dasuite's normalised RGB input.

    Caffe input (channel order BGR): x_c = 255 * (std_c * x_c' + mean_c) - caffe_mean_c, with x' the normalised
    RGB image. conv1 is linear without bias, so conv1(x) = W' * x' + b with W'[:, c] = W[:, bgr(c)] * 255 * std_c and
    b_o = sum over c, kernel of W[o, bgr(c)] * (255 * mean_c - caffe_mean_c); b is absorbed by bn1's running mean
    (rm' = rm - b; in train-mode BN the batch mean absorbs it by itself). Exact except for the outputs whose 7x7
    window reaches the zero padding (within 3 px of the border), where the two conventions pad with mean pixels
    that differ by about one grey level.
    """
    rgb = conv1.flip(1)
    std = torch.tensor(IMAGENET_STD, dtype=conv1.dtype).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=conv1.dtype).view(1, 3, 1, 1)
    caffe_mean_rgb = torch.tensor(CAFFE_MEAN_BGR[::-1], dtype=conv1.dtype).view(1, 3, 1, 1)
    offset = (rgb * (255.0 * mean - caffe_mean_rgb)).sum(dim=(1, 2, 3))
    return rgb * (255.0 * std), bn1_running_mean - offset.to(bn1_running_mean.dtype)
