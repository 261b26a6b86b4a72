"""The fully-convolutional output-space discriminator of AdaptSegNet (Tsai et al., CVPR 2018).

Input: softmax probability maps B x K x H x W. Five 4x4 convolutions with stride 2 and padding 1, channels
``ndf, 2ndf, 4ndf, 8ndf, 1``, LeakyReLU(0.2) after all but the last, no normalisation. Output: a B x 1 x H/32 x W/32
patch map of logits (each conv maps a size s to floor(s/2) for even s). Not a segmentation model: it is built by
the adversarial methods directly, not through ``MODELS``.
"""

from __future__ import annotations

import torch
from torch import nn


class OutputSpaceDiscriminator(nn.Module):
    """``OutputSpaceDiscriminator(num_classes, ndf=64)``: K-channel maps -> 1-channel patch logits (stride 32)."""

    def __init__(self, num_classes: int, ndf: int = 64) -> None:
        super().__init__()
        channels = [num_classes, ndf, ndf * 2, ndf * 4, ndf * 8]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(channels[-1], 1, kernel_size=4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return self.net(probs)
