"""DAFormer's context-aware fusion decoder (Hoyer et al., CVPR'22, Sec. 3.2; ``model.options.decoder: daformer``).

With encoder stages ``s_i`` (Bx{C_i}x{h_i}x{w_i}, strides 4, 8, 16, 32) and decoder width ``E``:

- embedding: ``e_i = upsample(W_i s_i, (h_1, w_1))``, ``W_i`` a linear map C_i -> E per pixel (no norm, no
  activation), bilinear with ``align_corners=False``;
- ``x = concat(e_1, e_2, e_3, e_4)`` (stage order 1..4), Bx4E x h_1 x w_1;
- depthwise-separable ASPP, no image pooling: the dilation-1 branch is ``ReLU(BN(conv1x1(x)))``; each dilation
  ``d`` in 6, 12, 18 is ``ReLU(BN(conv1x1(ReLU(BN(dwconv3x3_d(x))))))`` (depthwise with dilation d, then
  pointwise), each branch Bx E;
- ``decoder = ReLU(BN(conv3x3(concat(branches))))``, the bottleneck, Bx E x h_1 x w_1 (the ``decoder`` feature);
- ``logits = classifier(Dropout2d(decoder))``, ``classifier`` a 1x1 conv with bias.

Convolutions followed by BN have no bias. Initialisation as mmcv's ConvModule: Kaiming-normal (fan-out, ReLU) convs,
BN weight 1 / bias 0; the classifier normal(0, 0.01), bias 0; the embeddings PyTorch's Linear default. Module names
follow the reference (mmseg ``DAFormerHead``: ``embed_layers.<i>.proj``, ``fuse_layer.aspp_modules.<j>``
``[.depthwise_conv|.pointwise_conv].conv|bn``, ``fuse_layer.bottleneck.conv|bn``), so an mmseg DAFormer
checkpoint's head loads with only ``conv_seg`` renamed to ``classifier`` (``segformer.convert_mit_checkpoint``).
Compared with the reference on identical weights and inputs in docs/daformer.md.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBNReLU", "DAFormerHead", "LinearEmbedding", "SeparableASPP", "SeparableConvBNReLU"]

DILATIONS = (1, 6, 12, 18)


class ConvBNReLU(nn.Module):
    """``ReLU(BN(conv(x)))``, the conv without bias; padding keeps the size for odd kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                              dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    """A depthwise 3x3 ``ConvBNReLU`` (dilation ``dilation``) followed by a pointwise 1x1 ``ConvBNReLU``."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvBNReLU(in_channels, in_channels, 3, dilation=dilation, groups=in_channels)
        self.pointwise_conv = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class LinearEmbedding(nn.Module):
    """A per-pixel linear map Bx C x h x w -> Bx E x h x w (``proj``: an ``nn.Linear(C, E)``, the reference's MLP)."""

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.proj.weight[:, :, None, None], self.proj.bias)


class SeparableASPP(nn.Module):
    """Depthwise-separable ASPP without image pooling and its 3x3 bottleneck (the module docstring's fusion)."""

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int] = DILATIONS) -> None:
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvBNReLU(in_channels, channels, 1) if d == 1 else SeparableConvBNReLU(in_channels, channels, d)
            for d in dilations)
        self.bottleneck = ConvBNReLU(len(dilations) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class DAFormerHead(nn.Module):
    """Embeddings + separable-ASPP fusion (``features``), then dropout and the classifier (module docstring)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256, dropout: float = 0.1,
                 dilations: Sequence[int] = DILATIONS) -> None:
        super().__init__()
        self.channels = channels
        self.embed_layers = nn.ModuleList(LinearEmbedding(c, channels) for c in in_channels)
        self.fuse_layer = SeparableASPP(len(in_channels) * channels, channels, dilations)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def features(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encoder stages (stride 4 first) -> the decoder feature Bx E x h_1 x w_1 (the classifier's input)."""
        size = stages[0].shape[-2:]
        embedded = []
        for stage, embed in zip(stages, self.embed_layers):
            e = embed(stage)
            if e.shape[-2:] != size:
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
            embedded.append(e)
        return self.fuse_layer(torch.cat(embedded, dim=1))

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(stages)))
