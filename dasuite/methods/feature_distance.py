"""The shared ``feature_distance`` section: DAFormer's thing-class ImageNet feature distance for any method with a
labelled source (Hoyer et al., CVPR'22, Sec. 3.3; docs/daformer.md).

On every labelled source batch, ``loss_fd = weight * FD(F, G, M)`` (``dasuite.losses.feature_distance``): ``F`` the
trained network's ``feature`` (default ``stage4``, the last encoder stage) of the source images, ``G`` the same
feature of a frozen ImageNet-initialised network (eval mode, no gradient, never prepared or optimised), ``M`` the
feature pixels whose block of the source label has a majority class (share >= ``ratio``) in ``classes``. Methods
add it through ``Method.source_losses`` / ``source_terms`` (``dasuite.methods.base``); the frozen network comes from
``network`` (``dasuite.models.frozen``), by default ``model.arch`` with the ``model.pretrained`` weights. A frozen
network with ``encoder_features`` (SegFormer) runs its encoder only. ``weight: 0`` is the same as null (off).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pydantic import Field, field_validator

from dasuite.errors import ConfigError, DasuiteError
from dasuite.lazy import lazy_import
from dasuite.models.frozen import FrozenModelConfig, build_frozen_model, frozen_weights_path
from dasuite.schema_base import Section

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch import nn

    from dasuite.config.schema import ExperimentConfig

torch = lazy_import("torch")
fd_losses = lazy_import("dasuite.losses.feature_distance")

#: Cityscapes train ids of DAFormer's FD "thing" classes: 6 traffic light, 7 traffic sign, 11 person, 12 rider,
#: 13 car, 14 truck, 15 bus, 16 train, 17 motorcycle, 18 bicycle.
CITYSCAPES_THINGS = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


class FeatureDistanceConfig(Section):
    """``feature_distance: {weight: 0.005}`` gives DAFormer's setting (thing classes, ratio 0.75, last encoder
    stage, the frozen copy loaded from ``model.pretrained``)."""

    weight: float = Field(0.005, ge=0)
    """Weight of the distance in the loss (DAFormer: 0.005); 0 = off."""
    classes: Optional[list[int]] = Field(default_factory=lambda: list(CITYSCAPES_THINGS))
    """Train ids whose feature pixels count (default: the Cityscapes thing classes 6, 7, 11-18); null = every
    feature pixel (DAFormer's plain FD)."""
    ratio: float = Field(0.75, ge=0, le=1)
    """Minimum share of a label block's majority class for its feature pixel to count (DAFormer: 0.75)."""
    feature: str = "stage4"
    """The named feature compared (``stage1``..``stage4``; DAFormer: the last encoder stage)."""
    network: Optional[FrozenModelConfig] = None
    """The frozen ImageNet network, given like ``distill``'s ``teacher``; null = ``model.arch`` / ``tiny`` /
    ``options`` with the ``model.pretrained`` weights (the trained network's own ImageNet initialisation)."""

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is not None and (not v or min(v) < 0):
            raise ValueError(f"expected a non-empty list of train ids >= 0 (or null for every pixel), got {v}")
        return v


class FeatureDistance:
    """The frozen network and ``loss`` of one run's ``feature_distance`` section (module docstring)."""

    def __init__(self, options: FeatureDistanceConfig, cfg: "ExperimentConfig", num_classes: int,
                 model: "nn.Module") -> None:
        self.options = options
        self.num_classes = num_classes
        if options.classes is not None and max(options.classes) >= num_classes:
            raise ConfigError(f"feature_distance.classes {options.classes}: train ids must be below the dataset's "
                              f"{num_classes} classes")
        channels = getattr(model, "feature_channels", {})
        if options.feature not in channels or not options.feature.startswith("stage"):
            stages = [name for name in channels if name.startswith("stage")]
            raise ConfigError(f"feature_distance.feature={options.feature!r}: model {cfg.model.arch!r} has the "
                              f"encoder features {', '.join(stages) or 'none'}")
        try:  # the random initialisation the weights replace draws from a forked RNG: other draws stay the same
            with torch.random.fork_rng(devices=[]):
                self.network, self.weights = build_frozen_model(self._spec(cfg), cfg, num_classes,
                                                                "feature_distance.network")
        except DasuiteError as err:  # e.g. pretrained weights not in the hub cache: say which key wanted them
            text = str(err)
            raise type(err)(text if text.startswith("feature_distance") else f"feature_distance: {text}") from None
        frozen = getattr(self.network, "feature_channels", {}).get(options.feature)
        if frozen != channels[options.feature]:
            raise ConfigError(f"feature_distance.network: its {options.feature} has {frozen} channels, the trained "
                              f"network's {channels[options.feature]}: use the same architecture")
        self.accelerator: Optional["Accelerator"] = None

    def _spec(self, cfg: "ExperimentConfig") -> FrozenModelConfig:
        """``network``, or the trained model with its ``model.pretrained`` weights; absent files are named."""
        spec = self.options.network
        if spec is None:
            if cfg.model.pretrained is None:
                raise ConfigError("feature_distance needs the ImageNet weights of the frozen network, but "
                                  "model.pretrained is null: set model.pretrained (e.g. imagenet, with the file "
                                  "docs/models.md names in ~/.cache/torch/hub/checkpoints/) or "
                                  "feature_distance.network.checkpoint (+ arch)")
            return FrozenModelConfig(pretrained=cfg.model.pretrained, arch=cfg.model.arch, tiny=cfg.model.tiny,
                                     options=cfg.model.options)
        path = frozen_weights_path(spec, cfg, "feature_distance.network")
        if spec.checkpoint and not Path(path).is_file():
            raise DasuiteError(f"feature_distance.network.checkpoint: {path} does not exist: put the frozen "
                               f"ImageNet-initialised {spec.arch} weights (.safetensors or .pt state dict) there, "
                               f"or set feature_distance.network: null to load model.pretrained")
        return spec

    def setup(self, accelerator: "Accelerator") -> None:
        """Move the frozen network to the device; its forward runs under the accelerator's autocast."""
        self.accelerator = accelerator
        self.network.to(accelerator.device)

    def frozen_feature(self, images: "torch.Tensor") -> "torch.Tensor":
        """The frozen network's ``feature`` of ``images`` (no gradient; encoder only when it has
        ``encoder_features``)."""
        autocast = self.accelerator.autocast() if self.accelerator is not None else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            encoder = getattr(self.network, "encoder_features", None)
            features = encoder(images) if encoder is not None else self.network(images, return_features=True)[1]
        return features[self.options.feature]

    def loss(self, images: "torch.Tensor", labels: "torch.Tensor", features: dict[str, "torch.Tensor"],
             input_scale: float = 1.0) -> "torch.Tensor":
        """``weight * FD`` of a labelled batch, given the trained network's named ``features`` of ``images``
        computed at ``input_scale`` (HRDA's context view: 0.5), at which the frozen network sees them too."""
        student = features[self.options.feature]
        if input_scale != 1.0:
            size = [math.ceil(n * input_scale) for n in images.shape[-2:]]  # as HRDA's context view
            images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)
        mask = fd_losses.class_mask(labels, tuple(student.shape[-2:]), self.options.classes, self.options.ratio,
                                    self.num_classes)
        distance = fd_losses.masked_feature_distance(student, self.frozen_feature(images), mask)
        return self.options.weight * distance
