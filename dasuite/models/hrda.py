"""HRDA (Hoyer et al., ECCV 2022): multi-resolution training and inference around a registered segmenter.

``model.arch: hrda`` wraps ``base`` (any registered arch, e.g. ``segformer_b5``; built with ``base_options``) and
adds a scale-attention head. With s = ``context_scale`` (0.5), r = 1/s, o = the base's output stride and
d = o * r (the context logits' stride in input pixels), on images B x 3 x H x W:

- context: the whole image resized to ceil(sH) x ceil(sW) (bilinear) -> base -> context logits ``c`` and features;
  attention ``a = sigmoid(attention_head(context features))`` (class-wise: K channels; else 1), on c's grid;
- detail, training: ONE box per batch (``sample_detail_box``), ``detail_crop`` pixels at full resolution, offsets
  multiples of d -> base -> detail logits, pasted into zeros at cell (top/o, left/o) of the output grid
  G = ceil(H/o) x ceil(W/o); ``a`` is multiplied by the box's mask on c's grid (0 outside);
- detail, eval: windows of ``detail_crop`` every half crop over the full image (batched, ``window_batch`` at a
  time), logits averaged where windows overlap (the axis is zero-padded to a multiple of o when it needs several
  windows, so every window sits on whole cells; a single window is the image itself);
- fusion (``fuse``; the reference's order, computed where the context lives):
  ``fused = up(a) * detail + up((1 - a) * c)``, ``up`` = bilinear x r cropped to G.

Training forwards return a ``MultiResOutput`` (fused logits on G, the detail logits and their box, ...) scored by
``dasuite.losses.hrda.multires_seg_loss``: ``(1 - w) CE(fused) + w CE(detail, labels in the box)``,
w = ``detail_loss_weight``. Eval forwards return fused logits B x K x G (the ``SegModel`` contract).
``return_features=True`` gives the context pass's features (what HRDA's feature distance uses). See docs/hrda.md.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dasuite.errors import ConfigError
from dasuite.models.base import MODELS, SegModel
from dasuite.models.deeplabv2 import ASPPSumClassifier, DeepLabV2
from dasuite.models.factory import create_model

ATTENTION_HEADS = ("auto", "mlp", "aspp")
#: HRDA loads its base's pretrained file: the arch in option ``base`` (``default`` when unset), built with
#: ``base_options`` (read by dasuite.models.weight_files without importing this module)
PRETRAINED_FILES = {"wraps": {"hrda": {"arch": "base", "default": "segformer_b5", "options": "base_options"}}}


class DetailBox(NamedTuple):
    """The detail crop in input pixels: rows ``top:top + height``, columns ``left:left + width``."""

    top: int
    left: int
    height: int
    width: int


class MultiResOutput(NamedTuple):
    """A training forward of ``HRDA``; tensors are logits (or attention) B x {K or 1} x cells."""

    fused: torch.Tensor
    """Fused logits on the output grid ceil(H/o) x ceil(W/o) of the whole input."""
    detail: torch.Tensor
    """Logits of the detail crop alone (height/o x width/o)."""
    box: DetailBox
    """Where the detail crop is, in input pixels."""
    detail_weight: float
    """The detail loss weight w."""
    context: torch.Tensor
    """Context logits, as the base predicts them on the downscaled image."""
    attention: torch.Tensor
    """Scale attention on the context grid, already zero outside the detail box."""
    image_size: tuple[int, int]
    """Input H, W (labels for the loss must have this size)."""


def sample_detail_box(height: int, width: int, crop: Sequence[int], divisor: int,
                      generator: Optional[torch.Generator] = None) -> DetailBox:
    """A random ``crop`` = (h, w) box inside a ``height`` x ``width`` image; along an axis longer than the crop the
    offset is uniform over {0, divisor, ..., floor((L - c) / divisor) * divisor} (both ends included); an axis no
    longer than the crop is taken whole. Draws from torch's CPU generator (no device synchronisation)."""

    def axis(length: int, size: int) -> tuple[int, int]:
        if length <= size:
            return 0, length
        slots = (length - size) // divisor + 1
        return int(torch.randint(slots, (1,), generator=generator)) * divisor, size

    top, h = axis(height, crop[0])
    left, w = axis(width, crop[1])
    return DetailBox(top, left, h, w)


def window_offsets(length: int, window: int, stride: int) -> list[int]:
    """Window starts ``i * stride`` covering ``length``, the last moved back to end at ``length`` (mmseg's slide)."""
    count = max(length - window + stride - 1, 0) // stride + 1
    return [max(min(i * stride + window, length) - window, 0) for i in range(count)]


def upsample_cells(x: torch.Tensor, ratio: int, grid: Sequence[int]) -> torch.Tensor:
    """Bilinear (align_corners=False) x ``ratio`` then cropped to ``grid``: context cell j covers output cells
    j*ratio .. j*ratio + ratio - 1. Falls back to resizing to ``grid`` when x ``ratio`` would be smaller."""
    h, w = x.shape[-2:]
    if h * ratio < grid[0] or w * ratio < grid[1]:
        return F.interpolate(x, size=tuple(grid), mode="bilinear", align_corners=False)
    up = x if ratio == 1 else F.interpolate(x, size=(h * ratio, w * ratio), mode="bilinear", align_corners=False)
    return up[..., : grid[0], : grid[1]]


def fuse(context: torch.Tensor, attention: torch.Tensor, detail: torch.Tensor, ratio: int) -> torch.Tensor:
    """``up(a) * detail + up((1 - a) * context)`` with ``up = upsample_cells(., ratio, detail grid)``; ``detail``
    is already on the output grid (zeros outside the detail box in training), ``attention`` a on the context grid
    (masked to the box in training). The context is attenuated before upsampling, as in HRDA's head."""
    grid = detail.shape[-2:]
    return upsample_cells(attention, ratio, grid) * detail + upsample_cells((1 - attention) * context, ratio, grid)


class MLPAttention(nn.Module):
    """DAFormer-style attention decoder (HRDA's, with a 1x1 fusion): each of stage1..stage4 -> 1x1 conv to ``dim``,
    upsampled to stage1's size, concatenated -> 1x1 conv (no bias) + BN + ReLU -> dropout -> 1x1 conv to ``out``."""

    def __init__(self, in_channels: Sequence[int], dim: int, out: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.fuse = nn.Sequential(nn.Conv2d(dim * len(in_channels), dim, 1, bias=False), nn.BatchNorm2d(dim),
                                  nn.ReLU(inplace=True))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(dim, out, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        stages = [features[f"stage{i + 1}"] for i in range(len(self.embed))]
        size = stages[0].shape[-2:]
        embedded = [F.interpolate(e(x), size=size, mode="bilinear", align_corners=False) if x.shape[-2:] != size
                    else e(x) for e, x in zip(self.embed, stages)]
        return self.classifier(self.dropout(self.fuse(torch.cat(embedded, dim=1))))


class ASPPAttention(nn.Module):
    """DeepLab-v2 attention head (HRDA's for DeepLab-v2): an ASPP-sum classifier on stage4, to ``out`` channels."""

    def __init__(self, in_channels: int, out: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.head = ASPPSumClassifier(in_channels, out, dilations)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(features["stage4"])


class HRDA(SegModel):
    """HRDA around ``base`` (parameters ``base.*``) with the attention head ``attention.*``; module docstring."""

    def __init__(self, base: SegModel, num_classes: int, *, context_scale: float, detail_crop: Sequence[int],
                 detail_loss_weight: float, attention: Optional[nn.Module], fixed_attention: Optional[float],
                 window_batch: int) -> None:
        super().__init__()
        self.base = base
        self.attention = attention
        self.fixed_attention = fixed_attention
        self.num_classes = num_classes
        self.context_scale = context_scale
        self.ratio = round(1 / context_scale)
        self.output_stride = base.output_stride
        self.divisor = base.output_stride * self.ratio
        self.detail_crop = (int(detail_crop[0]), int(detail_crop[1]))
        self.detail_loss_weight = float(detail_loss_weight)
        self.window_batch = window_batch
        self.feature_channels = dict(base.feature_channels)
        self.encoder_prefix = "base." + getattr(base, "encoder_prefix", "")
        self.head_prefixes = tuple("base." + p for p in base.head_prefixes) + (
            ("attention.",) if attention is not None else ())

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """The base's encoder blocks are checkpointed in both passes (``train.grad_checkpointing``)."""
        self.base.set_grad_checkpointing(enabled)

    @property
    def feature_input_scale(self) -> float:
        """The features of ``return_features`` come from the input downscaled by this (the context view)."""
        return self.context_scale

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The output grid ceil(H/o) x ceil(W/o) of an H x W input."""
        return math.ceil(height / self.output_stride), math.ceil(width / self.output_stride)

    def context_pass(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(context logits, context features, attention a) of the whole image downscaled by ``context_scale``."""
        h, w = images.shape[-2:]
        size = (math.ceil(h * self.context_scale), math.ceil(w * self.context_scale))
        small = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        logits, features = self.base(small, return_features=True)
        if self.attention is None:
            att = logits.new_full((logits.shape[0], 1, *logits.shape[-2:]), float(self.fixed_attention))
        else:
            att = torch.sigmoid(self.attention(features))
            if att.shape[-2:] != logits.shape[-2:]:
                att = F.interpolate(att, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        return logits, features, att

    def detail_windows(self, images: torch.Tensor) -> torch.Tensor:
        """Detail logits of the whole image on its output grid: ``detail_crop`` windows every half crop, batched,
        averaged where they overlap (module docstring); several windows are summed in float32."""
        b, _, h, w = images.shape
        o = self.output_stride
        grid = self.grid(h, w)
        (dh, dw) = self.detail_crop
        pad_h = (-h) % o if h > dh else 0
        pad_w = (-w) % o if w > dw else 0
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        wh, ww = min(dh, hp), min(dw, wp)
        windows = [(y, x) for y in window_offsets(hp, wh, max(wh // 2, 1))
                   for x in window_offsets(wp, ww, max(ww // 2, 1))]
        chunk = len(windows) if self.window_batch <= 0 else self.window_batch
        total: Optional[torch.Tensor] = None
        count: Optional[torch.Tensor] = None
        for first in range(0, len(windows), chunk):
            part = windows[first:first + chunk]
            logits = self.base(torch.cat([images[:, :, y:y + wh, x:x + ww] for y, x in part]))
            if len(windows) == 1:
                return logits
            if total is None:
                cells = (max(grid[0], hp // o), max(grid[1], wp // o))
                total = logits.new_zeros((b, logits.shape[1], *cells), dtype=torch.float32)
                count = logits.new_zeros((1, 1, *cells), dtype=torch.float32)
            lh, lw = logits.shape[-2:]
            for i, (y, x) in enumerate(part):
                total[:, :, y // o:y // o + lh, x // o:x // o + lw] += logits[i * b:(i + 1) * b].float()
                count[:, :, y // o:y // o + lh, x // o:x // o + lw] += 1
        return (total / count)[..., : grid[0], : grid[1]]

    def forward(self, images: torch.Tensor, return_features: bool = False) -> Any:
        """Training: a ``MultiResOutput``; eval: fused logits B x K x ceil(H/o) x ceil(W/o); with
        ``return_features``, ``(that, context features)``."""
        context, features, att = self.context_pass(images)
        h, w = images.shape[-2:]
        grid = self.grid(h, w)
        if not self.training:
            out = fuse(context, att, self.detail_windows(images), self.ratio)
            return (out, features) if return_features else out
        box = sample_detail_box(h, w, self.detail_crop, self.divisor)
        detail = self.base(images[:, :, box.top:box.top + box.height, box.left:box.left + box.width])
        d, o = self.divisor, self.output_stride
        mask = att.new_zeros((1, 1, *att.shape[-2:]))
        mask[:, :, box.top // d:-(-(box.top + box.height) // d), box.left // d:-(-(box.left + box.width) // d)] = 1
        att = att * mask
        y, x = box.top // o, box.left // o
        pasted = F.pad(detail, (x, grid[1] - x - detail.shape[-1], y, grid[0] - y - detail.shape[-2]))
        out = MultiResOutput(fuse(context, att, pasted, self.ratio), detail, box, self.detail_loss_weight, context,
                             att, (h, w))
        return (out, features) if return_features else out


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@MODELS.register("hrda")
def build_hrda(
    arch: str,
    num_classes: int,
    *,
    tiny: bool = False,
    pretrained: str | None = None,
    base: str = PRETRAINED_FILES["wraps"]["hrda"]["default"],
    base_options: Optional[dict[str, Any]] = None,
    context_scale: float = 0.5,
    detail_crop: Sequence[int] = (512, 512),
    detail_loss_weight: float = 0.1,
    attention_head: str = "auto",
    attention_dim: int = 256,
    attention_classwise: bool = True,
    fixed_attention: Optional[float] = None,
    window_batch: int = 0,
) -> HRDA:
    """HRDA multi-resolution wrapper (context at ``context_scale`` + detail crops fused by a learned scale
    attention) around another registered arch; ``tiny`` and ``pretrained`` go to the base (docs/hrda.md).

    Options:
        base: the wrapped architecture (any registered one but ``hrda``)
        base_options: that architecture's own options
        context_scale: resize factor of the context image, 1/n for an integer n (HRDA: 0.5)
        detail_crop: [height, width] of the full-resolution detail crop in pixels, multiples of the base's output
            stride / context_scale (HRDA: [512, 512] in 1024 x 1024 training crops); also the eval window size
            (stride: half of it)
        detail_loss_weight: w in (1 - w) CE(fused) + w CE(detail) (HRDA: 0.1)
        attention_head: ``mlp`` (DAFormer-style decoder on stage1..stage4), ``aspp`` (DeepLab-v2 ASPP-sum on
            stage4) or ``auto`` (aspp for DeepLab-v2 bases, else mlp)
        attention_dim: channels of the mlp attention head (HRDA: 256)
        attention_classwise: one attention map per class (HRDA) instead of one for all classes
        fixed_attention: a constant attention in [0, 1] instead of the learned head (HRDA's ablation); null = learned
        window_batch: detail windows per base forward at evaluation (0 = all windows of the batch at once)
    """
    _check(base != arch, "model option base must name another architecture than hrda")
    _check(isinstance(context_scale, (int, float)) and 0 < context_scale < 1
           and abs(1 / context_scale - round(1 / context_scale)) < 1e-6,
           f"model option context_scale must be 1/n for an integer n >= 2 (e.g. 0.5), got {context_scale!r}")
    _check(0 <= detail_loss_weight <= 1,
           f"model option detail_loss_weight must be in [0, 1], got {detail_loss_weight!r}")
    _check(attention_head in ATTENTION_HEADS,
           f"model option attention_head must be one of {', '.join(ATTENTION_HEADS)}, got {attention_head!r}")
    _check(fixed_attention is None or 0 <= fixed_attention <= 1,
           f"model option fixed_attention must be null or in [0, 1], got {fixed_attention!r}")
    _check(isinstance(window_batch, int) and window_batch >= 0,
           f"model option window_batch must be an integer >= 0, got {window_batch!r}")
    _check(isinstance(attention_dim, int) and attention_dim > 0,
           f"model option attention_dim must be a positive integer, got {attention_dim!r}")
    network = create_model(base, num_classes, tiny=tiny, pretrained=pretrained, **(base_options or {}))
    divisor = network.output_stride * round(1 / context_scale)
    _check(isinstance(detail_crop, (list, tuple)) and len(detail_crop) == 2
           and all(isinstance(v, int) and v > 0 and v % divisor == 0 for v in detail_crop),
           f"model option detail_crop must be [height, width], positive multiples of {divisor} (output stride "
           f"{network.output_stride} of {base} / context_scale {context_scale}), got {detail_crop!r}")
    attention: Optional[nn.Module] = None
    if fixed_attention is None:
        out = num_classes if attention_classwise else 1
        kind = attention_head
        if kind == "auto":
            kind = "aspp" if isinstance(network, DeepLabV2) else "mlp"
        if kind == "aspp":
            _check("stage4" in network.feature_channels, f"attention_head aspp needs a stage4 feature; {base} has none")
            classifier = getattr(network, "classifier", None)
            dilations = ([conv.dilation[0] for conv in classifier.branches]
                         if isinstance(classifier, ASPPSumClassifier) else (6, 12, 18, 24))
            attention = ASPPAttention(network.feature_channels["stage4"], out, dilations)
        else:
            stages = [f"stage{i}" for i in range(1, 5)]
            _check(all(s in network.feature_channels for s in stages),
                   f"attention_head mlp needs the features stage1..stage4; {base} lacks some")
            attention = MLPAttention([network.feature_channels[s] for s in stages], attention_dim, out)
    return HRDA(network, num_classes, context_scale=float(context_scale), detail_crop=detail_crop,
                detail_loss_weight=detail_loss_weight, attention=attention, fixed_attention=fixed_attention,
                window_batch=window_batch)
