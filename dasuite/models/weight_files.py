"""The pretrained weight files dasuite's keywords (``model.pretrained: imagenet`` / ``coco`` / ``dinov2``) look for:
their public source and checksum, and the one-line message a run without weights stops with.

Torch-free (run planning checks an experiment before anything heavy is imported). ``docs/models.md`` shows the same
table; ``tests/test_weight_files.py`` checks it against the file names the model modules and torchvision use.
Checksums: torchvision's file names end in the first 8 hex digits of the file's SHA-256, which torchvision verifies
on download (``check_hash=True``); no public source states the full digests, so ``sha256`` holds that prefix and
``full_sha256`` is False. Files whose names carry no digest have ``sha256`` None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

TORCHVISION_URL = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file: its name (what the hub cache must hold), where it is published, the SHA-256 (or its
    prefix), and what it is."""

    name: str
    source: str
    what: str
    sha256: Optional[str] = None
    full_sha256: bool = False
    size_mb: Optional[float] = None  # as torchvision's weight metadata states it (``_file_size``, MB)


def _torchvision(name: str, what: str, size_mb: float) -> WeightFile:
    return WeightFile(name, TORCHVISION_URL + name, what, sha256=name.rsplit("-", 1)[1].split(".")[0],
                      size_mb=size_mb)


_MIT_SOURCE = ("the links in github.com/NVlabs/SegFormer's README (ImageNet-1K pretrained MiT weights), or the Hugging "
               "Face model nvidia/mit-{v}")
_DEEPLAB_COCO_URL = "http://vllab.ucmerced.edu/ytsai/CVPR18/DeepLab_resnet_pretrained_init-f81d91e8.pth"
#: DINOv2 variant -> its Hugging Face model (a snapshot folder named after it also serves ``model.pretrained: dinov2``)
DINOV2_REPOS = {"s": "facebook/dinov2-small", "b": "facebook/dinov2-base", "l": "facebook/dinov2-large",
                "g": "facebook/dinov2-giant"}
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{v}14/dinov2_vit{v}14_pretrain.pth"
_CIRKD_DRIVE = "https://drive.google.com/file/d/{}/view (CIRKD v1 README, github.com/winycg/CIRKD commit 91735ef)"
#: DeepLabV3 (CIRKD) variant -> keyword -> hub-cache names (``dasuite.models.deeplabv3.WEIGHT_FILES``)
CIRKD_FILES = {
    "r18": {"imagenet": ("resnet18-imagenet.pth",)},
    "r101": {"imagenet": ("resnet101-imagenet.pth",), "cityscapes": ("deeplabv3_resnet101_citys_best_model.pth",)},
    "mobilenetv2": {"imagenet": ("mobilenetv2-imagenet.pth", "mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth")},
}


def dinov2_names(variant: str) -> tuple[str, str]:
    """What ``model.pretrained: dinov2`` looks for in the hub cache: the torch-hub file of facebookresearch/dinov2,
    then a Hugging Face snapshot folder named after the repo (e.g. ``dinov2-base``)."""
    return f"dinov2_vit{variant}14_pretrain.pth", DINOV2_REPOS[variant].split("/", 1)[1]


#: every file a keyword may resolve to, by file name
FILES: dict[str, WeightFile] = {
    **{f"mit_{v}.pth": WeightFile(f"mit_{v}.pth", _MIT_SOURCE.format(v=v), f"MiT-{v.upper()} encoder, ImageNet-1k")
       for v in ("b0", "b1", "b2", "b3", "b4", "b5")},
    "resnet50-0676ba61.pth": _torchvision("resnet50-0676ba61.pth", "ResNet-50 IMAGENET1K_V1", 97.781),
    "resnet50-11ad3fa6.pth": _torchvision("resnet50-11ad3fa6.pth", "ResNet-50 IMAGENET1K_V2", 97.79),
    "resnet101-63fe2227.pth": _torchvision("resnet101-63fe2227.pth", "ResNet-101 IMAGENET1K_V1", 170.511),
    "resnet101-cd907fc2.pth": _torchvision("resnet101-cd907fc2.pth", "ResNet-101 IMAGENET1K_V2", 170.53),
    "mobilenet_v2-b0353104.pth": _torchvision("mobilenet_v2-b0353104.pth", "MobileNetV2 IMAGENET1K_V1", 13.555),
    "mobilenet_v2-7ebf99e0.pth": _torchvision("mobilenet_v2-7ebf99e0.pth", "MobileNetV2 IMAGENET1K_V2", 13.598),
    "DeepLab_resnet_pretrained_init-f81d91e8.pth": WeightFile(
        "DeepLab_resnet_pretrained_init-f81d91e8.pth", _DEEPLAB_COCO_URL,
        "caffe DeepLab ResNet-101, ImageNet + MS-COCO (AdaptSegNet's and DACS's init; RESTORE_FROM of "
        "AdaptSegNet's train_gta2cityscapes_multi.py)", sha256="f81d91e8"),
    "MS_DeepLab_resnet_pretrained_COCO_init.pth": WeightFile(
        "MS_DeepLab_resnet_pretrained_COCO_init.pth", "the name several DeepLab-v2 PyTorch ports give their "
        "conversion of the caffe COCO init (not verified to be byte-identical to AdaptSegNet's file)",
        "caffe DeepLab ResNet-101, ImageNet + MS-COCO"),
    **{dinov2_names(v)[0]: WeightFile(
        dinov2_names(v)[0], f"{_DINOV2_URL.format(v=v)} (what torch.hub.load('facebookresearch/dinov2', "
        f"'dinov2_vit{v}14') downloads), or the Hugging Face model {repo} as a folder {dinov2_names(v)[1]}/ "
        f"(config.json + model.safetensors)", f"DINOv2 ViT-{v.upper() if v != 'g' else 'g'}/14 encoder (LVD-142M)")
       for v, repo in DINOV2_REPOS.items()},
    "DeepLab_resnet_pretrained_imagenet.pth": WeightFile(
        "DeepLab_resnet_pretrained_imagenet.pth", "ADVENT's releases (github.com/valeoai/ADVENT, 'Pre-trained "
        "models')", "caffe DeepLab ResNet-101, ImageNet only (ADVENT's init)"),
    "resnet18-imagenet.pth": WeightFile(
        "resnet18-imagenet.pth", "https://github.com/winycg/CIRKD/releases/download/backbonev0.1/resnet18-imagenet.pth",
        "deep-stem ResNet-18 (v1s), ImageNet: CIRKD's student backbone"),
    "resnet101-imagenet.pth": WeightFile(
        "resnet101-imagenet.pth", _CIRKD_DRIVE.format("1V8-E4wm2VMsfnNiczSIDoSM7JJBMARkP"),
        "deep-stem ResNet-101 (v1s), ImageNet: CIRKD's teacher backbone"),
    "mobilenetv2-imagenet.pth": WeightFile(
        "mobilenetv2-imagenet.pth", _CIRKD_DRIVE.format("12EDZjDSCuIpxPv-dkk1vrxA7ka0b0Yjv"),
        "MobileNetV2 (CSAIL naming), ImageNet: CIRKD's student backbone"),
    "deeplabv3_resnet101_citys_best_model.pth": WeightFile(
        "deeplabv3_resnet101_citys_best_model.pth", _CIRKD_DRIVE.format("1zUdhYPYCDCclWU3Wo7GbbTlM8ibQ_UC1"),
        "CIRKD's DeepLabV3-R101 Cityscapes teacher (78.07 val mIoU; 256-channel head; CIRKDv2's GitHub release of "
        "the same name: head_channels=512)"),
}


def hub_checkpoint_dir() -> Path:
    """Where ``model.pretrained: imagenet`` looks: ``$TORCH_HOME/hub/checkpoints`` (torch's default:
    ``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``), computed as torch.hub does, without importing torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def weights_target(arch: str, options: Optional[Mapping[str, Any]]) -> tuple[str, Mapping[str, Any]]:
    """(arch, options) whose pretrained file a model loads: a wrapper (``hrda``) loads its base's
    (``options.base``, default ``segformer_b5``; ``options.base_options``)."""
    options = options or {}
    if arch == "hrda":
        return options.get("base") or "segformer_b5", options.get("base_options") or {}
    return arch, options


def recommended(arch: str, options: Optional[Mapping[str, Any]] = None) -> Optional[tuple[str, WeightFile]]:
    """(keyword, file) a full-size ``arch`` is usually initialised from, None for an architecture dasuite knows no
    file for (a plugin model, a caffe-style ResNet-50)."""
    arch, options = weights_target(arch, options)
    family, _, variant = arch.partition("_")
    if family == "segformer":
        return "imagenet", FILES[f"mit_{variant}.pth"]
    if family == "deeplabv3" and variant in CIRKD_FILES:
        return "imagenet", FILES[CIRKD_FILES[variant]["imagenet"][0]]
    if family == "deeplabv3plus":
        return "imagenet", FILES[{"r50": "resnet50-0676ba61.pth", "r101": "resnet101-63fe2227.pth",
                                  "mobilenetv2": "mobilenet_v2-b0353104.pth"}[variant]]
    if family == "dinov2":
        return "dinov2", FILES[dinov2_names(variant[3])[0]]
    if family == "deeplabv2":
        if options.get("resnet_style", "torchvision") == "caffe":
            return ("coco", FILES["DeepLab_resnet_pretrained_init-f81d91e8.pth"]) if variant == "r101" else None
        return "imagenet", FILES[{"r50": "resnet50-0676ba61.pth", "r101": "resnet101-63fe2227.pth"}[variant]]
    return None


def keyword_files(arch: str, options: Optional[Mapping[str, Any]], keyword: str) -> Optional[tuple[str, ...]]:
    """The hub-cache file names ``model.pretrained: <keyword>`` accepts for ``arch`` (the model modules look for the
    same names), None when dasuite knows no file for that combination."""
    arch, options = weights_target(arch, options)
    family, _, variant = arch.partition("_")
    torchvision = {"r50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
                   "r101": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
                   "mobilenetv2": ("mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth")}
    if family == "segformer" and keyword == "imagenet":
        return (f"mit_{variant}.pth",)
    if family == "deeplabv3plus" and keyword == "imagenet":
        return torchvision.get(variant)
    if family == "deeplabv3":
        return CIRKD_FILES.get(variant, {}).get(keyword)
    if family == "dinov2":
        return dinov2_names(variant[3]) if keyword == "dinov2" else None
    if family == "deeplabv2":
        if options.get("resnet_style", "torchvision") != "caffe":
            return torchvision.get(variant) if keyword == "imagenet" else None
        caffe = {"imagenet": ("DeepLab_resnet_pretrained_imagenet.pth",),
                 "coco": ("DeepLab_resnet_pretrained_init-f81d91e8.pth", "MS_DeepLab_resnet_pretrained_COCO_init.pth")}
        return caffe.get(keyword) if variant == "r101" else None
    return None


def missing_keyword_file(experiment: str, arch: str, options: Optional[Mapping[str, Any]], keyword: str
                         ) -> Optional[str]:
    """The one line a run stops with when ``model.pretrained: <keyword>`` names no file in the hub cache (None when
    one is there, or dasuite knows no file for it: the model's own loader then explains)."""
    names = keyword_files(arch, options, keyword)
    folder = hub_checkpoint_dir()
    if not names or any((folder / name).exists() for name in names):  # a file, or a snapshot folder (dinov2)
        return None
    file = FILES[names[0]]
    others = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    return (f"experiment {experiment!r}: model.pretrained={keyword} needs {file.name}{others} in {folder}/: get it "
            f"({file.what}; {file.source}) and put it there, or pass model.pretrained=/path/to/{file.name} "
            f"(docs/models.md, Pretrained weights); to train from scratch on purpose set model.pretrained=null "
            f"model.from_scratch=true")


def missing_weights_message(experiment: str, arch: str, options: Optional[Mapping[str, Any]] = None) -> str:
    """The one line a full-size run on real data without ``model.pretrained`` stops with: which file to get, where
    to put it, and how to opt out."""
    head = (f"experiment {experiment!r}: model.pretrained is not set, so {arch} would start from random weights on "
            f"real data")
    tail = ("; to train from scratch on purpose set model.from_scratch=true (and --init-from CHECKPOINT starts from a "
            "trained run's weights)")
    found = recommended(arch, options)
    if found is None:
        return f"{head}: pass model.pretrained=/path/to/weights (a file, run or Hugging Face directory){tail}"
    keyword, file = found
    return (f"{head}: get {file.name} ({file.what}; {file.source}), put it in {hub_checkpoint_dir()}/ and pass "
            f"model.pretrained={keyword}, or pass model.pretrained=/path/to/{file.name} (docs/models.md, Pretrained "
            f"weights){tail}")
