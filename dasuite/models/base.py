"""The model contract shared by every segmentation network.

``model(images)`` takes float images Bx3xHxW, normalised with ImageNet mean/std, and returns logits
BxKx(H/s)x(W/s) at the model's ``output_stride`` s. ``model(images, return_features=True)`` returns
``(logits, features)`` where ``features`` maps names to tensors:

- ``stage1`` .. ``stage4``: encoder stage outputs (strides 4, 8, 16, 32 for SegFormer; ResNet layer1..4 or the
  matching MobileNetV2 blocks for DeepLabV3+);
- ``decoder``: the decoder feature just before dropout / the final classifier;
- ``aux_logits``: multi-level models only (DeepLabV2), the auxiliary (layer3) classifier's logits.

Logits are at stride 4 for SegFormer, DeepLabV3+ and DINOv2 (DPT head), 8 for DeepLabV2, 16 for DINOv2's linear head.

``feature_channels`` gives each feature's channel count, so KD projectors can be built without a forward pass.
``head_prefixes`` name the parameters that get the head learning-rate multiplier. Models that number their layers
(``num_layers`` and ``layer_id(parameter_name)``: 0 = embeddings, i + 1 = block i, ``num_layers`` + 1 = after the
last block) can be trained with ``optim.layer_decay`` (``dasuite.engine.optim``).
``model(images, perturb=f)`` applies ``f`` to the list of encoder stage features (SegFormer and DeepLab: the 4 stages;
DINOv2: the token grids of its 4 read-out layers) and decodes what it returns, which may hold more rows than the
input (a batch with perturbed copies appended: UniMatch's feature-perturbation stream, ``dasuite.methods.unimatch``).
``set_grad_checkpointing(True)`` makes training forwards checkpoint the encoder's blocks (``train.grad_checkpointing``;
``dasuite.models.checkpoint``): same outputs and gradients, less activation memory, one more forward of the encoder.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import nn

from dasuite.errors import ConfigError
from dasuite.registry import MODELS

ModelOutput = Union[torch.Tensor, tuple[torch.Tensor, dict[str, torch.Tensor]]]
#: ``model(images, perturb=f)``: ``f`` maps the encoder's stage features to the ones the decoder then runs on.
Perturb = Callable[[list[torch.Tensor]], list[torch.Tensor]]

__all__ = ["MODELS", "ModelOutput", "Perturb", "SegModel"]


class SegModel(nn.Module):
    """Base class of segmentation networks; see the module docstring for the contract."""

    output_stride: int = 4
    feature_channels: dict[str, int]
    head_prefixes: tuple[str, ...] = ()

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint the encoder's blocks in training forwards; networks without it raise a ConfigError."""
        if enabled:
            raise ConfigError(f"{type(self).__name__} has no activation checkpointing (train.grad_checkpointing): "
                              f"set train.grad_checkpointing=false, or implement set_grad_checkpointing")
