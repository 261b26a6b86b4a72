"""DeepLabV3 (Chen et al., arXiv:1706.05587) as CIRKD (Yang et al., CVPR 2022; github.com/winycg/CIRKD) trains it
for Cityscapes knowledge distillation: ``deeplabv3_r101`` (the teacher), ``deeplabv3_r18`` and
``deeplabv3_mobilenetv2`` (the students).

Backbones (CIRKD ``models/base_models``), dilated to output stride 8 (16 as an option):

- ResNet "v1s" (``dasuite.models.resnet.ResNetBackbone`` with ``deep_stem``): three 3x3 stem convs (64, 64, 128; the
  first strided) + max pool, then Bottleneck (R101) or BasicBlock (R18) stages with the stride in the 3x3 conv;
  layer3 dilation 2, layer4 4, a stage's first block keeping the previous dilation in its first 3x3 conv;
- MobileNetV2 (``dasuite.models.deeplabv3plus.MobileNetV2Backbone``, torchvision's layout without the last 1x1 conv):
  the stride-2 depthwise convs of blocks 7 and 14 become stride 1, blocks 8-13 use dilation 2 and 15-17 dilation 4,
  exactly CIRKD's ``MobileNetV2Dilated(dilate_scale=8)``.

Head (CIRKD ``_DeepLabHead``): ``aspp`` on stage4 = torchvision's ``ASPP`` (1x1, three 3x3 at rates 12/24/36, or
6/12/18 at output stride 16, and image pooling, each conv + BN + ReLU; concat -> 1x1 + BN + ReLU + Dropout(0.5)) ->
``bottleneck`` = 3x3 conv + BN + ReLU (the ``decoder`` feature) -> Dropout(0.1) -> ``classifier`` = 1x1 conv to K.
Head width (ASPP and bottleneck channels): CIRKD v1's, the code behind the CVPR'22 numbers: 256 for R101, 128 for
R18 and MobileNetV2; CIRKDv2 (2025) widened both ResNet heads to 512 (``head_channels=512`` loads its checkpoints).
``aux`` adds CIRKD's auxiliary FCN head on stage3 (``aux_head`` = 3x3 conv to C3/4 + BN + ReLU + Dropout(0.1) +
1x1 conv to K; CIRKD trains it with weight 0.4 for ResNet backbones); its logits are the ``aux_logits`` feature
(computed with ``return_features=True`` only). Head convolutions keep PyTorch's default init, as in CIRKD.

Named features: ``stage1..stage4`` = ResNet layer1..layer4 or the MobileNetV2 blocks 3/6/13/17 (24/32/96/320 ch), at
strides 4, 8, 8, 8 (output stride 16: 4, 8, 16, 16); ``decoder`` = the ``bottleneck`` output. Logits are at the
backbone's stride (``output_stride``): B x K x ceil(H/8) x ceil(W/8), not upsampled: the loss and evaluation upsample
them (CIRKD's loss with ``align_corners=True``, dasuite's with ``False``). The ASPP pooling branch has a BatchNorm on
a 1x1 map: train with batch >= 2.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Optional

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.ops.misc import Conv2dNormActivation

from dasuite.errors import ConfigError, DasuiteError
from dasuite.models.base import MODELS, ModelOutput, Perturb, SegModel
from dasuite.models.deeplabv3plus import ASPP_RATES, TINY_MBV2_SETTING, TINY_MBV2_WIDTH, MobileNetV2Backbone
from dasuite.models.pretrained import CheckpointState, Converted, load_pretrained
from dasuite.models.resnet import caffe_stem_to_normalised_rgb, dilated_stages, resnet_backbone
from dasuite.models.weight_files import FILES

#: CIRKD v1's head width per backbone (ASPP and bottleneck channels); tiny models use TINY_HEAD
HEAD_CHANNELS = {"r18": 128, "r101": 256, "mobilenetv2": 128}
TINY_HEAD = 16
HEAD_DROPOUT = 0.1  # CIRKD's Dropout before the classifier (the ASPP projection keeps torchvision's 0.5, as CIRKD)
#: the pretrained files per arch and keyword (imagenet: CIRKD's deep-stem ResNets and CSAIL-style MobileNetV2, or
#: torchvision's MobileNetV2, which fits the same network; cityscapes: CIRKD's trained DeepLabV3-R101 teacher); read
#: by dasuite.models.weight_files without importing this module
PRETRAINED_FILES = {
    "files": [
        {"name": "resnet18-imagenet.pth",
         "what": "deep-stem ResNet-18 (v1s), ImageNet: CIRKD's student backbone",
         "source": "https://github.com/winycg/CIRKD/releases/download/backbonev0.1/resnet18-imagenet.pth"},
        {"name": "resnet101-imagenet.pth",
         "what": "deep-stem ResNet-101 (v1s), ImageNet: CIRKD's teacher backbone",
         "source": "https://drive.google.com/file/d/1V8-E4wm2VMsfnNiczSIDoSM7JJBMARkP/view (CIRKD v1 README, "
                   "github.com/winycg/CIRKD commit 91735ef)"},
        {"name": "mobilenetv2-imagenet.pth",
         "what": "MobileNetV2 (CSAIL naming), ImageNet: CIRKD's student backbone",
         "source": "https://drive.google.com/file/d/12EDZjDSCuIpxPv-dkk1vrxA7ka0b0Yjv/view (CIRKD v1 README, "
                   "github.com/winycg/CIRKD commit 91735ef)"},
        {"name": "deeplabv3_resnet101_citys_best_model.pth",
         "what": "CIRKD's DeepLabV3-R101 Cityscapes teacher (78.07 val mIoU; 256-channel head; CIRKDv2's GitHub "
                 "release of the same name: head_channels=512)",
         "source": "https://drive.google.com/file/d/1zUdhYPYCDCclWU3Wo7GbbTlM8ibQ_UC1/view (CIRKD v1 README, "
                   "github.com/winycg/CIRKD commit 91735ef)"},
    ],
    "archs": {
        "deeplabv3_r18": {"imagenet": ("resnet18-imagenet.pth",)},
        "deeplabv3_r101": {"imagenet": ("resnet101-imagenet.pth",),
                           "cityscapes": ("deeplabv3_resnet101_citys_best_model.pth",)},
        "deeplabv3_mobilenetv2": {"imagenet": ("mobilenetv2-imagenet.pth", "mobilenet_v2-b0353104.pth",
                                               "mobilenet_v2-7ebf99e0.pth")},
    },
}


class FCNAuxHead(nn.Sequential):
    """CIRKD's ``_FCNHead`` (as its ``block``): 3x3 conv to C/4 + BN + ReLU + Dropout(0.1) + 1x1 conv to K (bias)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inner = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inner, 3, padding=1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Dropout(HEAD_DROPOUT),
            nn.Conv2d(inner, num_classes, 1),
        )


class DeepLabV3(SegModel):
    """DeepLabV3 head on a backbone returning 4 stage features (``backbone.channels``); see the module docstring."""

    encoder_prefix = "backbone."
    classifier_prefix = ("classifier.", "aux_head.4.")

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        output_stride: int = 8,
        head_channels: int = 256,
        aux: bool = False,
    ) -> None:
        super().__init__()
        dilated_stages(output_stride)
        self.backbone = backbone
        self.output_stride = self.backbone_output_stride = output_stride
        c1, c2, c3, c4 = backbone.channels
        self.aspp = ASPP(c4, list(ASPP_RATES[output_stride]), head_channels)
        self.bottleneck = Conv2dNormActivation(head_channels, head_channels, kernel_size=3)
        self.dropout = nn.Dropout(HEAD_DROPOUT)
        self.classifier = nn.Conv2d(head_channels, num_classes, kernel_size=1)
        self.aux_head = FCNAuxHead(c3, num_classes) if aux else None
        self.head_prefixes = ("aspp.", "bottleneck.", "classifier.") + (("aux_head.",) if aux else ())
        self.feature_channels = {"stage1": c1, "stage2": c2, "stage3": c3, "stage4": c4, "decoder": head_channels}
        if aux:
            self.feature_channels["aux_logits"] = num_classes

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint the backbone's blocks in training (``train.grad_checkpointing``); the head is not."""
        self.backbone.grad_checkpointing = enabled

    def forward(self, images: torch.Tensor, return_features: bool = False,
                perturb: Optional[Perturb] = None) -> ModelOutput:
        stages = self.backbone(images)
        if perturb is not None:
            stages = perturb(stages)
        decoder = self.bottleneck(self.aspp(stages[3]))
        logits = self.classifier(self.dropout(decoder))
        if not return_features:
            return logits
        features = {f"stage{i + 1}": stage for i, stage in enumerate(stages)}
        features["decoder"] = decoder
        if self.aux_head is not None:
            features["aux_logits"] = self.aux_head(stages[2])
        return logits, features


# --- checkpoints ----------------------------------------------------------------------------------------------------
_HEAD_RENAMES = (  # CIRKD segmentation checkpoint prefix -> dasuite prefix
    ("head.aspp.b0.", "aspp.convs.0."),
    *((f"head.aspp.b{i}.block.", f"aspp.convs.{i}.") for i in (1, 2, 3)),
    ("head.aspp.b4.gap.", "aspp.convs.4."),
    ("head.aspp.project.", "aspp.project."),
    ("head.block.0.", "bottleneck.0."),
    ("head.block.1.", "bottleneck.1."),
    ("head.block.4.", "classifier."),
    ("auxlayer.block.", "aux_head."),
    ("pretrained.net.", "backbone."),  # MobileNetV2 (``MobileNetV2Dilated.net``)
    ("pretrained.", "backbone."),
)
# CIRKD/CSAIL InvertedResidual ``conv`` indices -> torchvision's: without expansion (block 1) and with it
_MBV2_PLAIN = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_MBV2_EXPANDED = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_MBV2_CONV = re.compile(r"^(backbone\.features\.(\d+)\.conv\.)(\d+)\.(.*)$")


def _cirkd_name(key: str) -> str:
    for old, new in _HEAD_RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _mobilenetv2_renamer(keys: list[str]) -> Callable[[str], str]:
    """CIRKD/CSAIL MobileNetV2 block names (a flat ``conv`` Sequential: ``conv.0``, ``conv.1``, ``conv.3``...) ->
    torchvision's (``conv.0.0``, ``conv.0.1``, ``conv.1.0``...), for keys already under ``backbone.``; with
    torchvision-named keys (``conv.0.0.weight``) the identity."""
    if any(re.match(r"^backbone\.features\.\d+\.conv\.\d+\.\d+\.", key) for key in keys):
        return lambda key: key
    expanded = {m[2] for m in map(_MBV2_CONV.match, keys) if m is not None and m[3] == "6"}

    def rename(key: str) -> str:
        match = _MBV2_CONV.match(key)
        if match is None:
            return key
        table = _MBV2_EXPANDED if match[2] in expanded else _MBV2_PLAIN
        return f"{match[1]}{table.get(match[3], match[3])}.{match[4]}"

    return rename


def convert_cirkd_checkpoint(state: Mapping[str, torch.Tensor], model: DeepLabV3) -> Converted:
    """CIRKD checkpoints -> dasuite naming: its trained segmenters (``pretrained.*`` backbone, ``head.aspp.b0..b4``
    and ``head.block`` head, ``auxlayer`` aux head), its ImageNet backbone files (ResNet-v1s ``conv1..conv3`` /
    ``layer*`` keys plus ``fc.*``; CSAIL-style MobileNetV2 ``features.*``) and torchvision's MobileNetV2 ImageNet
    file. A checkpoint with ``backbone.*`` keys is already in dasuite naming. Dropped (reported): ImageNet classifiers
    (``fc``, ``classifier``), MobileNetV2's last 1x1 conv (``features.18``), and ``auxlayer`` when the model has no
    ``aux`` head. A head of another width than the model's is refused with the ``head_channels`` value to set.

    CIRKD trains on BGR images in 0..255 minus the caffe mean pixel (its ``dataset/*.py``), so a trained segmenter's
    first conv and BN (``conv1``/``bn1``, MobileNetV2 ``features.0``) are turned into the same function of dasuite's
    normalised RGB input (``resnet.caffe_stem_to_normalised_rgb``; exact except within 1 px of the border). ImageNet
    backbone files are taken as they are: torchvision's, and by name and layout CSAIL's, which CIRKD's are, were
    trained on normalised RGB."""
    if any(key.startswith("backbone.") for key in state):
        return Converted(dict(state), [], {})
    width = state.get("head.aspp.b0.0.weight")
    own_width = model.feature_channels["decoder"]
    if width is not None and width.shape[0] != own_width:
        raise DasuiteError(f"the checkpoint's DeepLabV3 head is {width.shape[0]} channels wide, the model's "
                           f"{own_width}: set model.options.head_channels={width.shape[0]} (CIRKD v1's heads are "
                           f"256 (R101) / 128 (R18, MobileNetV2) wide, CIRKDv2's ResNet heads 512)")
    unused = ("fc.", "classifier.") + (("auxlayer.",) if model.aux_head is None else ())
    kept = [k for k in state if not k.startswith(unused)]
    dropped = [k for k in state if k.startswith(unused)]
    named = {}
    for key in kept:
        new = _cirkd_name(key)
        named[key] = new if new != key else "backbone." + key  # an ImageNet backbone file: bare trunk names
    if isinstance(model.backbone, MobileNetV2Backbone):
        rename = _mobilenetv2_renamer(list(named.values()))
        named = {key: rename(new) for key, new in named.items()}
        used = len(model.backbone.features)
        beyond = [k for k, new in named.items() if re.match(r"^backbone\.features\.(\d+)\.", new)
                  and int(new.split(".")[2]) >= used]
        dropped += beyond
        named = {k: new for k, new in named.items() if k not in beyond}
    converted = {new: state[key] for key, new in named.items()}
    stem = ("backbone.features.0.0.weight", "backbone.features.0.1.running_mean")
    if not isinstance(model.backbone, MobileNetV2Backbone):
        stem = ("backbone.conv1.weight", "backbone.bn1.running_mean")
    if any(key.startswith("head.") for key in state) and all(key in converted for key in stem):
        converted[stem[0]], converted[stem[1]] = caffe_stem_to_normalised_rgb(converted[stem[0]], converted[stem[1]])
    return Converted(converted, dropped, {new: key for key, new in named.items()})


def _how_to_get(arch: str) -> str:
    files = PRETRAINED_FILES["archs"][arch]
    imagenet = files["imagenet"][0]
    text = (f"get CIRKD's ImageNet backbone {imagenet} ({FILES[imagenet].source}), put it in "
            f"$TORCH_HOME/hub/checkpoints/ and pass model.pretrained=imagenet, or pass "
            f"model.pretrained=/path/{imagenet}")
    if len(files["imagenet"]) > 1:
        text += f" (torchvision's {' or '.join(files['imagenet'][1:])} fit the same network)"
    if "cityscapes" in files:
        teacher = files["cityscapes"][0]
        text += (f"; CIRKD's trained Cityscapes model is {teacher} ({FILES[teacher].source}; model.pretrained="
                 f"cityscapes once it is in that folder; CIRKDv2's GitHub release of that name needs "
                 f"head_channels=512)")
    return text + " (docs/models.md, DeepLabV3)"


@MODELS.register("deeplabv3_r18", "deeplabv3_r101", "deeplabv3_mobilenetv2")
def build_deeplabv3(
    arch: str,
    num_classes: int,
    *,
    tiny: bool = False,
    pretrained: str | None = None,
    output_stride: int = 8,
    head_channels: Optional[int] = None,
    aux: bool = False,
) -> DeepLabV3:
    """DeepLabV3 as CIRKD builds it: deep-stem ResNet-18/101 or MobileNetV2, dilated; ASPP + 3x3 bottleneck head
    (tiny: 16-128 channel backbone, 16-channel head).

    Options:
        output_stride: 8 (CIRKD: the last two stages dilated) or 16 (the last stage dilated): the logits' stride
        head_channels: channels of the ASPP and the 3x3 conv after it; null = CIRKD v1's (256 for r101, 128 for r18
            and mobilenetv2; tiny 16); 512 fits CIRKDv2's ResNet checkpoints
        aux: add CIRKD's auxiliary FCN head on stage3 (the ``aux_logits`` feature; CIRKD weighs its loss 0.4 for
            ResNet backbones)
    """
    name = arch.split("_", 1)[1]
    dilated_stages(output_stride)
    if not isinstance(aux, bool):
        raise ConfigError(f"model option aux must be true or false, got {aux!r}")
    if head_channels is not None and (isinstance(head_channels, bool) or not isinstance(head_channels, int)
                                      or head_channels < 1):
        raise ConfigError(f"model option head_channels must be a positive int or null, got {head_channels!r}")
    if name == "mobilenetv2":
        backbone: nn.Module = (MobileNetV2Backbone(TINY_MBV2_WIDTH, TINY_MBV2_SETTING, output_stride) if tiny
                               else MobileNetV2Backbone(output_stride=output_stride))
    else:
        backbone = resnet_backbone(name, tiny=tiny, output_stride=output_stride, deep_stem=True)
    width = head_channels or (TINY_HEAD if tiny else HEAD_CHANNELS[name])
    model = DeepLabV3(backbone, num_classes, output_stride=output_stride, head_channels=width, aux=aux)
    if pretrained is not None:
        load_pretrained(
            model,
            pretrained,
            filenames=PRETRAINED_FILES["archs"][arch],
            how_to_get=_how_to_get(arch),
            convert=convert_cirkd_checkpoint,
            encoder_prefix=DeepLabV3.encoder_prefix,
            classifier_prefix=DeepLabV3.classifier_prefix,
        )
    return model
