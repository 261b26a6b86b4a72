"""DINOv2 (Oquab et al., 2023) ViT-S/B/L/g with patch 14 as segmenters: ``transformers.Dinov2Model`` + a DPT or a
linear head, as UniMatch V2 (Yang et al., 2024), Depth Anything and DINOv2's own linear probe use them.

The encoder is ``transformers.Dinov2Model`` built from a ``Dinov2Config`` with the widths, depths and heads of the
released models (never fetched from the hub). Its blocks are run in turn here, so the four intermediate layers the
head reads (after the final LayerNorm, as DINOv2's ``get_intermediate_layers(norm=True)``) come from one forward.

Input size rule: images are zero-padded at the bottom and right to the next multiple of 14 (zero = the ImageNet
mean after normalisation), so the ViT sees the image at its own resolution; crops that are multiples of 14 (UniMatch
V2: 518, 798) are not padded. The token grid (stride 14) is then mapped onto dasuite's contract grid: every named map
at stride s has ceil(H/s) x ceil(W/s) cells, cell j centred on pixel (j + 0.5) s of the unpadded image, sampled
bilinearly from the stride-14 (or DPT's 3.5/7/28) map at that position (``resample``; border values beyond it).

Heads (``head`` option):

- ``dpt``: DPT's neck and segmentation head (Ranftl et al., ICCV'21; transformers' ``DPTNeck`` and
  ``DPTSemanticSegmentationHead``; Depth Anything / UniMatch V2's ``DPTHead``): per layer a 1x1 projection and a
  learned resize (4x and 2x transposed convs, identity, 3x3 stride-2 conv) give maps at strides 3.5/7/14/28, which
  are resampled to the contract's 4/8/16/32 (``stage1..stage4``); 3x3 convs to ``features`` channels; four
  fusion blocks (pre-activation residual units, bilinear align_corners upsampling to the next stage's size, 1x1
  projection) from stage 4 up to stage 1; ``decoder`` = ReLU(BN(conv3x3(fused))) at stride 4; logits =
  ``classifier(dropout(decoder))`` at stride 4. DPT runs its last fusion and head at twice stage 1's resolution
  (stride 1.75 here); dasuite stops at stride 4, the contract's logit stride.
- ``linear``: DINOv2's linear probe (``BNHead`` of its segmentation evaluation, last layer): ``decoder`` =
  BN(patch tokens of the last layer), resampled to stride 16; logits = ``classifier(dropout(decoder))`` at stride 16
  (``output_stride`` 16). ``stage1..stage4`` are the four intermediate layers' token maps (no parameters; computed
  only with ``return_features=True``).

Layer-wise lr decay (``optim.layer_decay``, ``dasuite.engine.optim``): ``layer_id`` numbers the embeddings 0,
block i i + 1 and everything after the last block ``num_layers`` + 1.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from dasuite.errors import ConfigError
from dasuite.models.base import MODELS, ModelOutput, Perturb, SegModel
from dasuite.models.checkpoint import transformers_checkpointing
from dasuite.models.pretrained import CheckpointState, Converted, hub_checkpoint_dir, load_pretrained

PATCH = 14
STAGE_STRIDES = (4, 8, 16, 32)
HEADS = ("dpt", "linear")
LINEAR_STRIDE = 16

#: the pretrained files per arch for ``model.pretrained: dinov2``: facebookresearch/dinov2's torch-hub file, then a
#: Hugging Face snapshot folder named after the repo facebook/<folder> (read by dasuite.models.weight_files)
PRETRAINED_FILES = {
    "files": [
        {"name": "dinov2_vits14_pretrain.pth",
         "what": "DINOv2 ViT-S/14 encoder (LVD-142M)",
         "source": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth (what "
                   "torch.hub.load('facebookresearch/dinov2', 'dinov2_vits14') downloads), or the Hugging Face model "
                   "facebook/dinov2-small as a folder dinov2-small/ (config.json + model.safetensors)"},
        {"name": "dinov2_vitb14_pretrain.pth",
         "what": "DINOv2 ViT-B/14 encoder (LVD-142M)",
         "source": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth (what "
                   "torch.hub.load('facebookresearch/dinov2', 'dinov2_vitb14') downloads), or the Hugging Face model "
                   "facebook/dinov2-base as a folder dinov2-base/ (config.json + model.safetensors)"},
        {"name": "dinov2_vitl14_pretrain.pth",
         "what": "DINOv2 ViT-L/14 encoder (LVD-142M)",
         "source": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth (what "
                   "torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14') downloads), or the Hugging Face model "
                   "facebook/dinov2-large as a folder dinov2-large/ (config.json + model.safetensors)"},
        {"name": "dinov2_vitg14_pretrain.pth",
         "what": "DINOv2 ViT-g/14 encoder (LVD-142M)",
         "source": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitg14/dinov2_vitg14_pretrain.pth (what "
                   "torch.hub.load('facebookresearch/dinov2', 'dinov2_vitg14') downloads), or the Hugging Face model "
                   "facebook/dinov2-giant as a folder dinov2-giant/ (config.json + model.safetensors)"},
    ],
    "archs": {
        "dinov2_vits14": {"dinov2": ("dinov2_vits14_pretrain.pth", "dinov2-small")},
        "dinov2_vitb14": {"dinov2": ("dinov2_vitb14_pretrain.pth", "dinov2-base")},
        "dinov2_vitl14": {"dinov2": ("dinov2_vitl14_pretrain.pth", "dinov2-large")},
        "dinov2_vitg14": {"dinov2": ("dinov2_vitg14_pretrain.pth", "dinov2-giant")},
    },
}


def dinov2_names(variant: str) -> tuple[str, str]:
    """What ``model.pretrained: dinov2`` looks for in the hub cache for variant ``s``/``b``/``l``/``g``: the torch-hub
    file of facebookresearch/dinov2, then a Hugging Face snapshot folder named after the repo (e.g. ``dinov2-base``)."""
    return PRETRAINED_FILES["archs"][f"dinov2_vit{variant}14"]["dinov2"]


#: DINOv2 variant -> its Hugging Face model (a snapshot folder named after it also serves ``model.pretrained: dinov2``)
DINOV2_REPOS = {arch[len("dinov2_vit")]: "facebook/" + files["dinov2"][1]
                for arch, files in PRETRAINED_FILES["archs"].items()}


@dataclass(frozen=True)
class ViTSpec:
    """One DINOv2 variant: encoder width/depth/heads, SwiGLU MLP (ViT-g), the 4 layers the head reads, DPT widths."""

    hidden: int
    depth: int
    heads: int
    swiglu: bool
    layers: tuple[int, int, int, int]
    dpt_channels: tuple[int, int, int, int]
    dpt_features: int


# Released DINOv2 models (facebookresearch/dinov2 hubconf; Hugging Face facebook/dinov2-*); intermediate layers and
# DPT widths as Depth Anything V2 and UniMatch V2 configure them per encoder size.
SPECS: dict[str, ViTSpec] = {
    "s": ViTSpec(384, 12, 6, False, (2, 5, 8, 11), (48, 96, 192, 384), 64),
    "b": ViTSpec(768, 12, 12, False, (2, 5, 8, 11), (96, 192, 384, 768), 128),
    "l": ViTSpec(1024, 24, 16, False, (4, 11, 17, 23), (256, 512, 1024, 1024), 256),
    "g": ViTSpec(1536, 40, 24, True, (9, 19, 29, 39), (1536, 1536, 1536, 1536), 384),
}
# tiny (tests, CPU runs): 4 blocks, all four read; widths grow from S to g as in the full family.
TINY_SPECS: dict[str, ViTSpec] = {
    "s": replace(SPECS["s"], hidden=24, depth=4, heads=2, layers=(0, 1, 2, 3), dpt_channels=(8, 16, 24, 24),
                 dpt_features=16),
    "b": replace(SPECS["b"], hidden=32, depth=4, heads=2, layers=(0, 1, 2, 3), dpt_channels=(8, 16, 32, 32),
                 dpt_features=16),
    "l": replace(SPECS["l"], hidden=48, depth=4, heads=3, layers=(0, 1, 2, 3), dpt_channels=(16, 32, 48, 48),
                 dpt_features=32),
    "g": replace(SPECS["g"], hidden=48, depth=4, heads=3, layers=(0, 1, 2, 3), dpt_channels=(16, 32, 48, 48),
                 dpt_features=32),
}
IMAGE_SIZE = 518  # the released position embeddings: 37 x 37 patches + CLS
TINY_IMAGE_SIZE = 56


def dinov2_config(spec: ViTSpec, *, tiny: bool = False, drop_path: float = 0.0) -> Dinov2Config:
    """The transformers config of one variant (LayerScale, LayerNorm eps 1e-6, qkv bias, no mask token)."""
    return Dinov2Config(
        hidden_size=spec.hidden,
        num_hidden_layers=spec.depth,
        num_attention_heads=spec.heads,
        mlp_ratio=4,
        use_swiglu_ffn=spec.swiglu,
        image_size=TINY_IMAGE_SIZE if tiny else IMAGE_SIZE,
        patch_size=PATCH,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        drop_path_rate=drop_path,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        qkv_bias=True,
        use_mask_token=False,  # only for masked pre-training; a parameter without gradient otherwise
    )


def resample(x: torch.Tensor, stride: float, origin: float, size: tuple[int, int], out_stride: int) -> torch.Tensor:
    """Bilinear resampling of a map whose cell k is centred on pixel ``origin + k * stride`` onto the grid of
    ``size`` cells of ``out_stride`` pixels (cell j centred on ``(j + 0.5) * out_stride``); border values outside."""
    axes = []
    for out, length in zip(size, x.shape[-2:]):
        centre = (torch.arange(out, device=x.device, dtype=torch.float32) + 0.5) * out_stride
        index = (centre - origin) / stride  # fractional input index
        axes.append((2 * index + 1) / length - 1)  # grid_sample's align_corners=False normalisation
    ys, xs = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack((xs, ys), dim=-1).to(x.dtype).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _contract_size(height: int, width: int, stride: int) -> tuple[int, int]:
    return math.ceil(height / stride), math.ceil(width / stride)


class ResidualUnit(nn.Module):
    """DPT's pre-activation residual conv unit: x + conv(relu(conv(relu(x)))), 3x3 convs with bias, no BN."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convolution1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.convolution2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.convolution2(F.relu(self.convolution1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT's feature fusion: (x + unit1(skip)), unit2, bilinear (align_corners) resize to ``size``, 1x1 projection.
    The deepest block has no skip input and so no ``residual_layer1`` (unused parameters would break DDP)."""

    def __init__(self, channels: int, has_skip: bool) -> None:
        super().__init__()
        self.residual_layer1 = ResidualUnit(channels) if has_skip else None
        self.residual_layer2 = ResidualUnit(channels)
        self.projection = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor], size: Optional[tuple[int, int]]) -> torch.Tensor:
        if self.residual_layer1 is not None and skip is not None:
            x = x + self.residual_layer1(skip)
        x = self.residual_layer2(x)
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.projection(x)


class DPTHead(nn.Module):
    """DPT reassemble + fusion + segmentation head on four token maps (see the module docstring)."""

    def __init__(self, hidden: int, channels: tuple[int, ...], features: int, num_classes: int,
                 dropout: float) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(hidden, c, 1) for c in channels)
        self.resize = nn.ModuleList([
            nn.ConvTranspose2d(channels[0], channels[0], 4, stride=4),
            nn.ConvTranspose2d(channels[1], channels[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(channels[3], channels[3], 3, stride=2, padding=1),
        ])
        self.layer_rn = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in channels)
        self.fusion = nn.ModuleList(FusionBlock(features, has_skip=i < 3) for i in range(4))
        self.conv = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(features)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(features, num_classes, 1)

    def reassemble(self, grids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Token maps (stride 14) -> projected, resized maps at strides 3.5, 7, 14, 28 (DPT's reassemble)."""
        return [resize(project(g)) for g, project, resize in zip(grids, self.projections, self.resize)]

    def fuse(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """Stage maps (any sizes) -> the fused map at stage 1's size: stage 4 up to stage 1, each block resizing its
        output to the next stage's size."""
        maps = [rn(s) for s, rn in zip(stages, self.layer_rn)]
        fused = self.fusion[3](maps[3], None, maps[2].shape[-2:])
        for i in (2, 1, 0):
            fused = self.fusion[i](fused, maps[i], maps[i - 1].shape[-2:] if i else None)
        return fused

    def decode(self, fused: torch.Tensor) -> torch.Tensor:
        """The feature the classifier reads: ReLU(BN(conv3x3(fused)))."""
        return F.relu(self.batch_norm(self.conv(fused)))


class LinearHead(nn.Module):
    """DINOv2's linear probe: BatchNorm over the last layer's patch tokens, dropout, 1x1 conv."""

    def __init__(self, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.batch_norm = nn.BatchNorm2d(hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(hidden, num_classes, 1)


class DINOv2Seg(SegModel):
    """DINOv2 encoder (``dinov2.*``, transformers' names) + ``decode_head.*`` (DPT or linear)."""

    encoder_prefix = "dinov2."
    head_prefixes = ("decode_head.",)
    classifier_prefix = "decode_head.classifier."

    def __init__(self, config: Dinov2Config, spec: ViTSpec, num_classes: int, head: str = "dpt",
                 dropout: float = 0.1) -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"model option head must be one of {', '.join(HEADS)}, got {head!r}")
        self.dinov2 = Dinov2Model(config)
        self.layers = spec.layers
        self.head_kind = head
        self.num_layers = config.num_hidden_layers
        if head == "dpt":
            self.decode_head: nn.Module = DPTHead(config.hidden_size, spec.dpt_channels, spec.dpt_features,
                                                  num_classes, dropout)
            self.output_stride = 4
            self.feature_channels = {f"stage{i + 1}": c for i, c in enumerate(spec.dpt_channels)}
            self.feature_channels["decoder"] = spec.dpt_features
        else:
            self.decode_head = LinearHead(config.hidden_size, num_classes, dropout)
            self.output_stride = LINEAR_STRIDE
            self.feature_channels = {f"stage{i + 1}": config.hidden_size for i in range(4)}
            self.feature_channels["decoder"] = config.hidden_size

    @property
    def classifier(self) -> nn.Conv2d:
        """The final 1x1 conv: logits = classifier(dropout(features['decoder']))."""
        return self.decode_head.classifier

    def layer_id(self, name: str) -> int:
        """Depth of parameter ``name`` for layer-wise lr decay: embeddings 0, block i i + 1, the rest num_layers + 1."""
        if name.startswith("dinov2.embeddings."):
            return 0
        match = re.match(r"^dinov2\.encoder\.layer\.(\d+)\.", name)
        return int(match[1]) + 1 if match else self.num_layers + 1

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint every transformer block in training forwards (transformers' non-reentrant checkpointing)."""
        transformers_checkpointing(self.dinov2, enabled)

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The normed outputs of ``self.layers`` as B x C x h x w token maps (h, w = ceil(H/14), ceil(W/14))."""
        height, width = images.shape[-2:]
        rows, cols = math.ceil(height / PATCH), math.ceil(width / PATCH)
        padded = F.pad(images, (0, cols * PATCH - width, 0, rows * PATCH - height))
        hidden = self.dinov2.embeddings(padded)
        wanted, out = set(self.layers), []
        for index, layer in enumerate(self.dinov2.encoder.layer[: max(self.layers) + 1]):
            hidden = layer(hidden)
            if index in wanted:
                tokens = self.dinov2.layernorm(hidden)[:, 1:]  # drop the CLS token
                out.append(tokens.transpose(1, 2).reshape(images.shape[0], -1, rows, cols))
        return out

    def forward(self, images: torch.Tensor, return_features: bool = False,
                perturb: Optional[Perturb] = None) -> ModelOutput:
        height, width = images.shape[-2:]
        grids = self.encode(images) if perturb is None else perturb(self.encode(images))
        head = self.decode_head
        if self.head_kind == "dpt":
            native = head.reassemble(grids)
            # DPT's maps: 3.5 / 7 / 14 px cells centred as the patches' sub-cells; the stride-2 conv's cell k is
            # centred on patch 2k, i.e. pixel 28k + 7
            strides, origins = (3.5, 7.0, 14.0, 28.0), (1.75, 3.5, 7.0, 7.0)
            stages = [resample(m, s, o, _contract_size(height, width, c), c)
                      for m, s, o, c in zip(native, strides, origins, STAGE_STRIDES)]
            decoder = head.decode(head.fuse(stages))
        else:
            size = _contract_size(height, width, LINEAR_STRIDE)
            decoder = resample(head.batch_norm(grids[-1]), PATCH, PATCH / 2, size, LINEAR_STRIDE)
            stages = [resample(g, PATCH, PATCH / 2, _contract_size(height, width, c), c)
                      for g, c in zip(grids, STAGE_STRIDES)] if return_features else []
        logits = head.classifier(head.dropout(decoder))
        if not return_features:
            return logits
        features = {f"stage{i + 1}": stage for i, stage in enumerate(stages)}
        features["decoder"] = decoder
        return logits, features


# --- checkpoint key conversion -------------------------------------------------------------------------------------
_RENAMES = [  # facebookresearch/dinov2 names and transformers' hub names -> the installed transformers' names
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^blocks\.(\d+)\.", r"encoder.layer.\1."),
    (r"^norm\.", "layernorm."),
    (r"\.attn\.proj\.", ".attention.o_proj."),
    (r"\.ls(\d)\.gamma$", r".layer_scale\1.lambda1"),
    (r"\.mlp\.w3\.", ".mlp.down_proj."),
    (r"\.attention\.attention\.(query|key|value)\.", lambda m: f".attention.{m[1][0]}_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.mlp\.weights_out\.", ".mlp.down_proj."),
]
_FUSED = [  # fused projections split along dim 0: (pattern, the parts' names)
    (r"\.attn\.qkv\.", (".attention.q_proj.", ".attention.k_proj.", ".attention.v_proj.")),
    (r"\.mlp\.w12\.", (".mlp.gate_proj.", ".mlp.up_proj.")),
    (r"\.mlp\.weights_in\.", (".mlp.gate_proj.", ".mlp.up_proj.")),
]
_DROPPED = ("mask_token", "embeddings.mask_token", "classifier.", "head.")


def _rename(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    for pattern, parts in _FUSED:
        if re.search(pattern, key):
            return {k: v for part, v in zip(parts, value.chunk(len(parts), dim=0))
                    for k in _rename(re.sub(pattern, part, key), v)}
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return {key: value}


def convert_dinov2_checkpoint(state: Mapping[str, torch.Tensor], model: nn.Module) -> Converted:
    """A DINOv2 checkpoint -> ``Converted`` in this model's naming (``dinov2.*``; ``decode_head.*`` kept).

    Accepted: facebookresearch/dinov2's ``dinov2_vit*14_pretrain.pth`` (``blocks.N.attn.qkv`` split into q/k/v,
    ``ls1.gamma``, ViT-g's fused SwiGLU ``mlp.w12`` split into gate/up), the Hugging Face ``facebook/dinov2-*``
    ``model.safetensors`` (``encoder.layer.N.attention.attention.query``..., ViT-g's ``mlp.weights_in``), either with
    a ``backbone.`` or ``dinov2.`` prefix, and dasuite's own names. ``mask_token`` and classifier heads are dropped.
    """
    converted: CheckpointState = {}
    dropped: list[str] = []
    origin: dict[str, str] = {}
    for key, value in state.items():
        if key.startswith("decode_head."):
            converted[key] = value
            continue
        name = re.sub(r"^(backbone|dinov2)\.", "", key)
        if name.startswith(_DROPPED):
            dropped.append(key)
            continue
        for new_key, tensor in _rename(name, value).items():
            converted["dinov2." + new_key] = tensor
            origin["dinov2." + new_key] = key
    return Converted(converted, dropped, origin)


def _how_to_get(variant: str) -> str:
    file, folder = dinov2_names(variant)
    return (f"download the Hugging Face model {DINOV2_REPOS[variant]} (config.json + model.safetensors) into "
            f"{hub_checkpoint_dir() / folder}/ and pass model.pretrained=dinov2 (or into any folder and pass its "
            f"path), or put {file} (facebookresearch/dinov2's torch hub file) there")


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"model option {name} must be in [0, 1), got {value!r}")


@MODELS.register("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14")
def build_dinov2(
    arch: str,
    num_classes: int,
    *,
    tiny: bool = False,
    pretrained: str | None = None,
    head: str = "dpt",
    drop_path: float = 0.0,
    dropout: float = 0.1,
) -> DINOv2Seg:
    """DINOv2 ViT-S/B/L/g (patch 14) with a DPT or linear head (tiny: 4 blocks, width 24-48; docs/models.md).

    Options:
        head: ``dpt`` (DPT neck + head as in UniMatch V2 / Depth Anything, logits at stride 4) or ``linear``
            (DINOv2's linear probe: BN + 1x1 conv on the last layer's patch tokens, logits at stride 16)
        drop_path: stochastic-depth rate of every transformer block (transformers applies one rate to all)
        dropout: dropout rate before the classifier (DINOv2's linear probe uses none: 0)
    """
    variant = arch[len("dinov2_vit")]
    _check_rate("drop_path", drop_path)
    _check_rate("dropout", dropout)
    spec = (TINY_SPECS if tiny else SPECS)[variant]
    model = DINOv2Seg(dinov2_config(spec, tiny=tiny, drop_path=drop_path), spec, num_classes, head, dropout)
    if pretrained is not None:
        load_pretrained(
            model,
            pretrained,
            filenames=PRETRAINED_FILES["archs"][arch],
            how_to_get=_how_to_get(variant),
            convert=convert_dinov2_checkpoint,
            encoder_prefix=DINOv2Seg.encoder_prefix,
            classifier_prefix=DINOv2Seg.classifier_prefix,
        )
    return model

