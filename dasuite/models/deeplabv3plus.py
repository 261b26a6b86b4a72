"""DeepLabV3+ (Chen et al., ECCV 2018) on torchvision ResNet-50/101 and MobileNetV2 trunks, VainF-style head.

Head (VainF/DeepLabV3Plus-Pytorch ``DeepLabHeadV3Plus``): ASPP on stage4 (256 ch; rates 6/12/18 at output stride
16, 12/24/36 at 8; image pooling branch; projection 1x1 + BN + ReLU + Dropout(0.1)); stage1 projected to 48 ch by
1x1 + BN + ReLU; ASPP output upsampled (bilinear, align_corners=False) to stage1's size; concat [low, aspp]
(304 ch) -> ``fuse`` = 3x3 conv 256 + BN + ReLU -> ``classifier`` = 1x1 conv to K classes.

Named features: ``stage1..stage4`` = ResNet layer1..layer4, or the MobileNetV2 blocks that end nominal strides
4/8/16/32 (24/32/96/320 ch); ``decoder`` = the ``fuse`` output (256 ch, stride 4) that feeds ``classifier``.
Output stride 16 dilates the last stage, 8 the last two (dilation replaces stride, torchvision's convention: the
first block of a dilated stage keeps the previous dilation). Convolutions pad, so any H, W works: logits are
B x K x ceil(H/4) x ceil(W/4). The ASPP pooling branch has a BatchNorm on a 1x1 map: train with batch >= 2.
Backbone parameter names equal torchvision's (``backbone.conv1``, ``backbone.layer1``, ``backbone.features.3``) so
torchvision ImageNet ``.pth`` files load as they are. The ResNet trunk is ``dasuite.models.resnet.ResNetBackbone``.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import MobileNetV2
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.ops.misc import Conv2dNormActivation

from dasuite.models.base import MODELS, ModelOutput, Perturb, SegModel
from dasuite.models.checkpoint import checkpointed, wants_checkpoint
from dasuite.models.pretrained import CheckpointState, Converted, load_pretrained
from dasuite.models.resnet import dilated_stages, resnet_backbone

ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
ASPP_DROPOUT = 0.1  # VainF; torchvision's ASPP defaults to 0.5
# torchvision MobileNetV2 settings (t = expansion, c = channels, n = blocks, s = first stride); tiny: one block each.
MBV2_SETTING = [
    [1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]
]
TINY_MBV2_SETTING = [[t, c, 1, s] for t, c, _, s in MBV2_SETTING]
TINY_MBV2_WIDTH = 0.25


class MobileNetV2Backbone(nn.Module):
    """torchvision MobileNetV2 ``features`` without the final 1x1 conv to 1280 ch, returning 4 stage outputs.

    Stage ends are the last blocks at nominal strides 4/8/16/32 (full size: ``features[3, 6, 13, 17]``, 24/32/96/320
    ch). For the output stride, each stride-2 depthwise conv beyond it gets stride 1 and later 3x3 convs
    dilation 2 (then 4): the same layout as VainF's dilated MobileNetV2. With ``grad_checkpointing`` every block of
    ``features`` is checkpointed in training (``dasuite.models.checkpoint``).
    """

    grad_checkpointing: bool = False

    def __init__(
        self, width_mult: float = 1.0, setting: Sequence[Sequence[int]] = MBV2_SETTING, output_stride: int = 16
    ) -> None:
        super().__init__()
        dilated_stages(output_stride)
        network = MobileNetV2(width_mult=width_mult, inverted_residual_setting=[list(s) for s in setting])
        self.features = network.features[:-1]  # keeps indices 0..n-1, so torchvision keys still match
        nominal, current, dilation = 1, 1, 1
        ends: dict[int, int] = {}
        for index, block in enumerate(self.features):
            convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
            stride = max(conv.stride[0] for conv in convs)
            block_dilation = dilation
            if stride > 1 and current == output_stride:
                for conv in convs:
                    conv.stride = (1, 1)
                dilation *= stride
            elif stride > 1:
                current *= stride
            nominal *= stride
            for conv in convs:
                if conv.kernel_size == (3, 3):
                    conv.dilation = conv.padding = (block_dilation, block_dilation)
            ends[nominal] = index
        self.stage_ends = tuple(ends[s] for s in (4, 8, 16, 32))
        self.channels = tuple(self._out_channels(self.features[i]) for i in self.stage_ends)

    @staticmethod
    def _out_channels(block: nn.Module) -> int:
        return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stages = []
        saving = wants_checkpoint(self, self.grad_checkpointing)
        for index, block in enumerate(self.features):
            x = checkpointed(block, x) if saving else block(x)
            if index in self.stage_ends:
                stages.append(x)
        return stages


class DeepLabV3Plus(SegModel):
    """DeepLabV3+ head on a backbone returning 4 stage features (``backbone.channels`` gives their widths)."""

    output_stride = 4
    head_prefixes = ("aspp.", "low_level_project.", "fuse.", "classifier.")
    encoder_prefix = "backbone."
    classifier_prefix = "classifier."

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        output_stride: int = 16,
        head_channels: int = 256,
        low_level_channels: int = 48,
    ) -> None:
        super().__init__()
        dilated_stages(output_stride)
        self.backbone = backbone
        self.backbone_output_stride = output_stride
        c1, c2, c3, c4 = backbone.channels
        self.aspp = ASPP(c4, list(ASPP_RATES[output_stride]), head_channels)
        self.aspp.project[-1].p = ASPP_DROPOUT
        self.low_level_project = Conv2dNormActivation(c1, low_level_channels, kernel_size=1)
        self.fuse = Conv2dNormActivation(low_level_channels + head_channels, head_channels, kernel_size=3)
        self.classifier = nn.Conv2d(head_channels, num_classes, kernel_size=1)
        for head in (self.aspp, self.low_level_project, self.fuse, self.classifier):
            for module in head.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight)
        self.feature_channels = {"stage1": c1, "stage2": c2, "stage3": c3, "stage4": c4, "decoder": head_channels}

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint the backbone's blocks in training (``train.grad_checkpointing``); the head is not."""
        self.backbone.grad_checkpointing = enabled

    def forward(self, images: torch.Tensor, return_features: bool = False,
                perturb: Optional[Perturb] = None) -> ModelOutput:
        stages = self.backbone(images) if perturb is None else perturb(self.backbone(images))
        low = self.low_level_project(stages[0])
        context = F.interpolate(self.aspp(stages[3]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        decoder = self.fuse(torch.cat([low, context], dim=1))
        logits = self.classifier(decoder)
        if not return_features:
            return logits
        features = {f"stage{i + 1}": stage for i, stage in enumerate(stages)}
        features["decoder"] = decoder
        return logits, features


def convert_torchvision_checkpoint(state: Mapping[str, torch.Tensor], model: DeepLabV3Plus) -> Converted:
    """torchvision ImageNet naming (``conv1.weight``, ``features.3...``) -> ``backbone.*``, dropping the ImageNet
    classifier (``fc.*`` / ``classifier.*``) and MobileNetV2's last 1x1 conv (``features.18``). A checkpoint with
    ``backbone.*`` keys is already in dasuite naming and passes unchanged."""
    if any(key.startswith("backbone.") for key in state):
        return Converted(dict(state), [], {})
    used_features = len(getattr(model.backbone, "features", ()))
    converted: CheckpointState = {}
    dropped: list[str] = []
    for key, value in state.items():
        index = re.match(r"^features\.(\d+)\.", key)
        if key.startswith(("fc.", "classifier.")) or (index is not None and int(index[1]) >= used_features):
            dropped.append(key)
        else:
            converted["backbone." + key] = value
    return Converted(converted, dropped, {"backbone." + key: key for key in state})


#: the pretrained files per arch and keyword: torchvision's ImageNet weights (V1 first; the ResNet records are in
#: dasuite/models/resnet.py); read by dasuite.models.weight_files without importing this module
PRETRAINED_FILES = {
    "files": [
        {"name": "mobilenet_v2-b0353104.pth", "sha256": "b0353104", "size_mb": 13.555,
         "what": "MobileNetV2 IMAGENET1K_V1",
         "source": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"},
        {"name": "mobilenet_v2-7ebf99e0.pth", "sha256": "7ebf99e0", "size_mb": 13.598,
         "what": "MobileNetV2 IMAGENET1K_V2",
         "source": "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth"},
    ],
    "archs": {
        "deeplabv3plus_r50": {"imagenet": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")},
        "deeplabv3plus_r101": {"imagenet": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth")},
        "deeplabv3plus_mobilenetv2": {"imagenet": ("mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth")},
    },
}


def _make_backbone(name: str, tiny: bool, output_stride: int) -> nn.Module:
    if name == "mobilenetv2":
        if tiny:
            return MobileNetV2Backbone(TINY_MBV2_WIDTH, TINY_MBV2_SETTING, output_stride)
        return MobileNetV2Backbone(output_stride=output_stride)
    return resnet_backbone(name, tiny=tiny, output_stride=output_stride)


@MODELS.register("deeplabv3plus_r50", "deeplabv3plus_r101", "deeplabv3plus_mobilenetv2")
def build_deeplabv3plus(
    arch: str, num_classes: int, *, tiny: bool = False, pretrained: str | None = None, output_stride: int = 16
) -> DeepLabV3Plus:
    """DeepLabV3+ on a torchvision ResNet or MobileNetV2 (VainF head; tiny: 8-32 channel backbone, 32-channel head).

    Options:
        output_stride: 16 (dilated last stage) or 8 (last two stages dilated): the encoder's output stride
    """
    name = arch.split("_", 1)[1]
    files = PRETRAINED_FILES["archs"][arch]["imagenet"]
    backbone = _make_backbone(name, tiny, output_stride)
    widths = (32, 8) if tiny else (256, 48)
    model = DeepLabV3Plus(
        backbone, num_classes, output_stride=output_stride, head_channels=widths[0], low_level_channels=widths[1]
    )
    if pretrained is not None:
        load_pretrained(
            model,
            pretrained,
            filenames=files,
            how_to_get=(
                f"get the torchvision ImageNet weights {files[0]} (download.pytorch.org/models/{files[0]}) and "
                f"pass model.pretrained=/path/{files[0]}, or place it in $TORCH_HOME/hub/checkpoints/ and pass "
                f"model.pretrained=imagenet"
            ),
            convert=convert_torchvision_checkpoint,
            encoder_prefix=DeepLabV3Plus.encoder_prefix,
            classifier_prefix=DeepLabV3Plus.classifier_prefix,
        )
    return model
