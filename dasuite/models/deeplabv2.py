"""DeepLab-v2 (Chen et al., TPAMI 2017) ResNet-50/101, multi-level as AdaptSegNet (Tsai et al., CVPR 2018) uses it.

Backbone: ResNet with layer3 dilated 2 and layer4 dilated 4 in every block (DeepLab-v2's rule), output stride 8.
``resnet_style``: ``torchvision`` (stride in the 3x3 conv; torchvision ImageNet weights) or ``caffe`` (stride in the
first 1x1 conv of layer2's first block, as in the MSRA/DeepLab caffe ResNet behind AdaptSegNet's and ADVENT's
``DeepLab_resnet_*.pth`` weights). Both keep torchvision's max pool (``ceil_mode=False``); AdaptSegNet's
``ceil_mode=True`` only adds one row/column for even sizes, so logits stay B x K x ceil(H/8) x ceil(W/8).

Classifier (``classifier`` on layer4, 2048 ch; ``aux_classifier`` on layer3, 1024 ch, when ``multi_level``): the
DeepLab-v2 "ASPP" = sum over dilations d of a 3x3 conv (dilation d, padding d, with bias) straight to K classes;
default dilations 6/12/18/24 (ADVENT, TLlib). ``classifier_quirk`` reproduces AdaptSegNet's ``Classifier_Module``,
whose ``return`` sits inside the loop: only the first TWO branches (6 and 12) are summed (DACS, ProDA and DAFormer's
``dlv2red`` kept it). The quirk model builds just those two convs, so no parameter is left without a gradient;
AdaptSegNet checkpoints' unused branches 2 and 3 are dropped on load (they never touched the output).

Named features: ``stage1..stage4`` = layer1..layer4 (strides 4, 8, 8, 8); ``decoder`` = layer4's output (what
``classifier`` reads: logits = classifier(decoder)); ``aux_logits`` (multi-level only) = aux_classifier(layer3),
B x K at stride 8. Call ``model(x, return_features=True)`` to train the aux head (``model(x)`` does not run it).

``freeze_bn`` (DeepLab-v2 practice): every BatchNorm is torchvision's ``FrozenBatchNorm2d``: running statistics and
affine parameters are fixed buffers (no parameters, no gradients, ``train()`` changes nothing). AdaptSegNet itself
freezes only the affine parameters and lets running statistics update in train mode (its issue #25).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from dasuite.errors import ConfigError, DasuiteError
from dasuite.models.base import MODELS, ModelOutput, Perturb, SegModel
from dasuite.models.pretrained import CheckpointState, Converted, load_pretrained
from dasuite.models.resnet import caffe_stem_to_normalised_rgb, resnet_backbone
from dasuite.models.weight_files import select

RESNET_STYLES = ("torchvision", "caffe")
#: the pretrained files per arch and keyword: torchvision's ImageNet ResNets (records in dasuite/models/resnet.py),
#: or with ``resnet_style: caffe`` the caffe DeepLab weights of AdaptSegNet (coco) and ADVENT (imagenet), ResNet-101
#: only; read by dasuite.models.weight_files without importing this module
PRETRAINED_FILES = {
    "files": [
        {"name": "DeepLab_resnet_pretrained_init-f81d91e8.pth", "sha256": "f81d91e8",
         "what": "caffe DeepLab ResNet-101, ImageNet + MS-COCO (AdaptSegNet's and DACS's init; RESTORE_FROM of "
                 "AdaptSegNet's train_gta2cityscapes_multi.py)",
         "source": "http://vllab.ucmerced.edu/ytsai/CVPR18/DeepLab_resnet_pretrained_init-f81d91e8.pth"},
        {"name": "MS_DeepLab_resnet_pretrained_COCO_init.pth",
         "what": "caffe DeepLab ResNet-101, ImageNet + MS-COCO",
         "source": "the name several DeepLab-v2 PyTorch ports give their conversion of the caffe COCO init (not "
                   "verified to be byte-identical to AdaptSegNet's file)"},
        {"name": "DeepLab_resnet_pretrained_imagenet.pth",
         "what": "caffe DeepLab ResNet-101, ImageNet only (ADVENT's init)",
         "source": "ADVENT's releases (github.com/valeoai/ADVENT, 'Pre-trained models')"},
    ],
    "archs": {
        "deeplabv2_r50": {"imagenet": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")},
        "deeplabv2_r101": {"imagenet": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth")},
    },
    "options": {"resnet_style": {"caffe": {"deeplabv2_r101": {
        "coco": ("DeepLab_resnet_pretrained_init-f81d91e8.pth", "MS_DeepLab_resnet_pretrained_COCO_init.pth"),
        "imagenet": ("DeepLab_resnet_pretrained_imagenet.pth",),
    }}}},
}


class ASPPSumClassifier(nn.Module):
    """DeepLab-v2 classifier: sum over ``dilations`` d of Conv3x3(C -> K, dilation d, padding d, bias); same H x W.

    ``quirk``: only the first two branches exist and are summed (AdaptSegNet's ``Classifier_Module``). Weights are
    N(0, 0.01), biases 0.
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int], quirk: bool = False) -> None:
        super().__init__()
        used = list(dilations[:2] if quirk else dilations)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=d, dilation=d) for d in used
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(SegModel):
    """DeepLab-v2 on a 4-stage backbone with ``channels``; see the module docstring for the heads and features."""

    output_stride = 8
    backbone_output_stride = 8
    encoder_prefix = "backbone."
    classifier_prefix = ("classifier.", "aux_classifier.")

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        dilations: Sequence[int] = (6, 12, 18, 24),
        quirk: bool = False,
        multi_level: bool = True,
        resnet_style: str = "torchvision",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.resnet_style = resnet_style
        c1, c2, c3, c4 = backbone.channels
        self.classifier = ASPPSumClassifier(c4, num_classes, dilations, quirk)
        self.aux_classifier = ASPPSumClassifier(c3, num_classes, dilations, quirk) if multi_level else None
        self.head_prefixes = ("classifier.", "aux_classifier.") if multi_level else ("classifier.",)
        self.feature_channels = {"stage1": c1, "stage2": c2, "stage3": c3, "stage4": c4, "decoder": c4}
        if multi_level:
            self.feature_channels["aux_logits"] = num_classes

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint the ResNet's blocks in training (``train.grad_checkpointing``); the classifiers are not."""
        self.backbone.grad_checkpointing = enabled

    def forward(self, images: torch.Tensor, return_features: bool = False,
                perturb: Optional[Perturb] = None) -> ModelOutput:
        stages = self.backbone(images) if perturb is None else perturb(self.backbone(images))
        logits = self.classifier(stages[3])
        if not return_features:
            return logits
        features = {f"stage{i + 1}": stage for i, stage in enumerate(stages)}
        features["decoder"] = stages[3]
        if self.aux_classifier is not None:
            features["aux_logits"] = self.aux_classifier(stages[2])
        return logits, features


# --- checkpoints ----------------------------------------------------------------------------------------------------
def _deeplab_head_name(key: str, multi: bool) -> str | None:
    """``layer5/layer6.conv2d_list.N.*`` (AdaptSegNet/ADVENT naming) -> dasuite head name; None for other keys.
    Multi-level models: layer5 = aux (on layer3), layer6 = main; single-level DeepLab: layer5 = main."""
    for layer, head in (("layer5", "aux_classifier" if multi else "classifier"), ("layer6", "classifier")):
        if key.startswith(f"{layer}.conv2d_list."):
            return f"{head}.branches." + key[len(f"{layer}.conv2d_list.") :]
    return None


def _rename(state: Mapping[str, torch.Tensor]) -> tuple[str, CheckpointState, dict[str, str], list[str]]:
    """Checkpoint -> (naming, state in dasuite names, origin, dropped). Namings: ``dasuite`` (``backbone.*``, kept
    as is), ``torchvision`` (ResNet ImageNet names; ``fc.*`` dropped) and ``caffe`` (DeepLab names: an optional
    ``Scale.`` prefix, heads as ``layer5``/``layer6.conv2d_list``)."""
    if any(key.startswith("backbone.") for key in state):
        return "dasuite", dict(state), {}, []
    caffe = any(key.startswith("Scale.") or ".conv2d_list." in key for key in state)
    multi = any(key.removeprefix("Scale.").startswith("layer6.conv2d_list.") for key in state)
    renamed: CheckpointState = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in state.items():
        name = key.removeprefix("Scale.")
        if name.startswith("fc."):
            dropped.append(key)
            continue
        new = _deeplab_head_name(name, multi) or "backbone." + name
        renamed[new], origin[new] = value, key
    return ("caffe" if caffe else "torchvision"), renamed, origin, dropped


def convert_deeplabv2_checkpoint(state: Mapping[str, torch.Tensor], model: DeepLabV2) -> Converted:
    """Any supported checkpoint -> ``model``'s naming (see ``_rename``), then:

    - caffe weights: the stem is adapted to normalised RGB input (``caffe_stem_to_normalised_rgb``); the model must
      be ``resnet_style=caffe`` and torchvision weights ``resnet_style=torchvision`` (strides sit in other convs);
    - dropped (reported): classifier branches beyond the model's (AdaptSegNet's dead branches 2-3 into a quirk
      model), the aux head when the model is single-level, ``num_batches_tracked`` when BN is frozen.
    """
    naming, renamed, origin, dropped = _rename(state)
    if naming != "dasuite" and naming != model.resnet_style:
        conv = "first 1x1" if naming == "caffe" else "3x3"
        raise DasuiteError(
            f"a {naming}-style ResNet checkpoint (stride in the {conv} conv of a stage's first block) does not fit "
            f"model.options.resnet_style={model.resnet_style}: set model.options.resnet_style={naming}"
        )
    if naming == "caffe" and "backbone.conv1.weight" in renamed and "backbone.bn1.running_mean" in renamed:
        renamed["backbone.conv1.weight"], renamed["backbone.bn1.running_mean"] = caffe_stem_to_normalised_rgb(
            renamed["backbone.conv1.weight"], renamed["backbone.bn1.running_mean"]
        )
    own = model.state_dict()
    converted: CheckpointState = {}
    for key, value in renamed.items():
        unused_head = key.startswith(("classifier.branches.", "aux_classifier.branches.")) and key not in own
        unused_head |= key.startswith("aux_classifier.") and model.aux_classifier is None
        if unused_head or (key.endswith("num_batches_tracked") and key not in own):
            dropped.append(origin.get(key, key))
        else:
            converted[key] = value
    return Converted(converted, dropped, origin)


def _check_options(dilations: Sequence[int], quirk: bool, flags: dict[str, object], resnet_style: str) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"model option {name} must be true or false, got {value!r}")
    if not isinstance(dilations, (list, tuple)) or not dilations or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dilations
    ):
        raise ConfigError(
            f"model option classifier_dilations must be a non-empty list of positive ints, got {dilations!r}"
        )
    if quirk and len(dilations) < 2:
        raise ConfigError(
            f"model option classifier_quirk sums the first two classifier_dilations, got only {list(dilations)}"
        )
    if resnet_style not in RESNET_STYLES:
        raise ConfigError(f"model option resnet_style must be one of {', '.join(RESNET_STYLES)}, got {resnet_style!r}")


def _how_to_get(files: Mapping[str, Sequence[str]], resnet_style: str) -> str:
    if resnet_style == "caffe":
        return (
            "get AdaptSegNet's COCO-initialised DeepLab_resnet_pretrained_init-f81d91e8.pth or ADVENT's ImageNet "
            "DeepLab_resnet_pretrained_imagenet.pth (links in their READMEs; ResNet-101 only) and pass its path, or "
            "place it in $TORCH_HOME/hub/checkpoints/ and pass model.pretrained=coco or imagenet"
        )
    file = files["imagenet"][0]
    return (
        f"get the torchvision ImageNet weights {file} (download.pytorch.org/models/{file}) and pass "
        f"model.pretrained=/path/{file}, or place it in $TORCH_HOME/hub/checkpoints/ and pass model.pretrained=imagenet"
    )


@MODELS.register("deeplabv2_r50", "deeplabv2_r101")
def build_deeplabv2(
    arch: str,
    num_classes: int,
    *,
    tiny: bool = False,
    pretrained: str | None = None,
    multi_level: bool = True,
    classifier_dilations: Sequence[int] = (6, 12, 18, 24),
    classifier_quirk: bool = False,
    freeze_bn: bool = True,
    resnet_style: str = "torchvision",
) -> DeepLabV2:
    """DeepLab-v2 on a dilated ResNet (output stride 8), AdaptSegNet's multi-level variant by default (tiny: 16-128
    channel ResNet).

    Options:
        multi_level: add the auxiliary classifier on layer3 (AdaptSegNet / ADVENT multi-level); its logits are the
            ``aux_logits`` feature
        classifier_dilations: dilations of the summed 3x3 classifier branches (DeepLab-v2's ASPP-sum)
        classifier_quirk: sum only the first two branches, as AdaptSegNet's released code does (its ``return``
            inside the loop), which DACS and DAFormer's DeepLab-v2 baseline keep
        freeze_bn: frozen BatchNorm (affine and running statistics fixed), as in AdaptSegNet / ADVENT
        resnet_style: ``torchvision`` (stride in the 3x3 conv) or ``caffe`` (stride in the 1x1 conv; the DeepLab
            COCO / ImageNet weights of AdaptSegNet and ADVENT)
    """
    name = arch.split("_", 1)[1]
    flags = {"multi_level": multi_level, "classifier_quirk": classifier_quirk, "freeze_bn": freeze_bn}
    _check_options(classifier_dilations, classifier_quirk, flags, resnet_style)
    backbone = resnet_backbone(
        name,
        tiny=tiny,
        output_stride=8,
        uniform_dilation=True,
        stride_in_1x1=resnet_style == "caffe",
        norm_layer=FrozenBatchNorm2d if freeze_bn else nn.BatchNorm2d,
    )
    model = DeepLabV2(
        backbone,
        num_classes,
        dilations=classifier_dilations,
        quirk=classifier_quirk,
        multi_level=multi_level,
        resnet_style=resnet_style,
    )
    if pretrained is not None:
        files = select(PRETRAINED_FILES, arch, {"resnet_style": resnet_style})
        load_pretrained(
            model,
            pretrained,
            filenames=files,
            how_to_get=_how_to_get(files, resnet_style),
            convert=convert_deeplabv2_checkpoint,
            encoder_prefix=DeepLabV2.encoder_prefix,
            classifier_prefix=DeepLabV2.classifier_prefix,
        )
    return model
