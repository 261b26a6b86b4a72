"""``cirkd``: cross-image relational KD (Yang et al., CVPR'22): mini-batch pixel relations and memory-based
pixel-to-pixel / pixel-to-region contrast against queues of teacher embeddings (math: ``dasuite.losses.cirkd``).

The queues (per class, on the accelerator device) and their pointers are the term's checkpointed state; under
several processes every process gathers all processes' keys before enqueueing, so the queues stay identical. They
start as unit-norm Gaussian vectors drawn from a fixed seed (the same on every process and every run).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from dasuite.errors import DasuiteError
from dasuite.lazy import lazy_import
from dasuite.methods.kd_terms.base import DISTILL_TERMS, Channels, DistillTerm, FeaturePair
from dasuite.schema_base import Section

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")
cirkd = lazy_import("dasuite.losses.cirkd")
segmentation = lazy_import("dasuite.losses.segmentation")

QUEUE_SEED = 0  # initial queue contents, identical on every process
EMBED = "cirkd_embed"


class CIRKDConfig(Section):
    """CIRKD: ``weight * (minibatch_weight * L_mb + pixel_weight * L_pixel + region_weight * L_region)`` on one
    feature pair; defaults are CIRKD's (``train_cirkd.py``); its SegFormer script: ``pixel_queue: 2000,
    minibatch_pool: 2``."""

    weight: float = Field(1.0, ge=0)
    """Factor of the three parts' weighted sum."""
    minibatch_weight: float = Field(1.0, ge=0)
    """Weight of the mini-batch pixel-to-pixel relation loss ``L_mb`` (CIRKD: 1)."""
    pixel_weight: float = Field(0.1, ge=0)
    """Weight of the memory-based pixel-to-pixel contrastive loss ``L_pixel`` (CIRKD: 0.1)."""
    region_weight: float = Field(0.1, ge=0)
    """Weight of the memory-based pixel-to-region contrastive loss ``L_region`` (CIRKD: 0.1)."""
    temperature: float = Field(0.1, gt=0)
    """Temperature of the similarity softmaxes of all three parts (CIRKD's contrast temperature 0.1)."""
    kd_temperature: float = Field(1.0, gt=0)
    """Temperature of the memory-based parts' KL between the softened similarity distributions (T^2 kept; CIRKD:
    1)."""
    pixel_queue: int = Field(20000, ge=1)
    """Teacher pixel embeddings kept per class (CIRKD: 20000; its SegFormer script: 2000)."""
    region_queue: int = Field(2000, ge=1)
    """Teacher region embeddings (one image's class mean) kept per class (CIRKD: 2000)."""
    pixel_samples: int = Field(4096, ge=1)
    """Pixel keys contrasted per step: ``pixel_samples // classes + 1`` random slots, the same for every class."""
    region_samples: int = Field(1024, ge=1)
    """Region keys contrasted per step: ``region_samples // classes + 1`` random slots per class."""
    pixels_per_image: int = Field(16, ge=1)
    """Teacher pixels enqueued per class and image, at most (CIRKD: 16)."""
    pixels_from: Literal["cirkd_code", "class"] = "cirkd_code"
    """Which pixels of an image a class's pixel queue receives: ``cirkd_code`` (CIRKD's code: random ones among the
    image's first n in raster order, n = the class's pixel count, any class) or ``class`` (the class's own pixels,
    as the paper describes); docs/kd.md."""
    minibatch_pool: int = Field(1, ge=1)
    """Average-pool kernel (= stride) applied to both features before ``L_mb`` (CIRKD: 1; SegFormer script: 2)."""
    pair: FeaturePair = Field(default_factory=FeaturePair)
    """The features compared: CIRKD's last feature before the classifier (``decoder``; DeepLabV3: after the head's
    3x3 conv, SegFormer: the fused decoder feature)."""

    @model_validator(mode="after")
    def _queue_fits_one_image(self) -> "CIRKDConfig":
        if self.pixel_queue < self.pixels_per_image:
            raise ValueError(f"pixel_queue ({self.pixel_queue}) must hold at least pixels_per_image "
                             f"({self.pixels_per_image}) keys")
        return self


@DISTILL_TERMS.register("cirkd")
class CIRKD(DistillTerm):
    """Cross-image relational KD (Yang et al., CVPR'22): mini-batch and memory-based pixel relations (docs/kd.md)."""

    config = CIRKDConfig
    order = 60
    contract_on = {"weight": 1.0, "pixel_queue": 40, "region_queue": 8, "pixel_samples": 64, "region_samples": 32}
    reaches = ("model", "projectors")
    in_toy_run = True  # the contract test's resume check then covers the queues

    def active(self) -> bool:
        o = self.options
        return o.weight > 0 and max(o.minibatch_weight, o.pixel_weight, o.region_weight) > 0

    @property
    def memory(self) -> bool:
        """Whether the memory-based parts (embedding head, queues) are on."""
        return max(self.options.pixel_weight, self.options.region_weight) > 0

    def pairs(self) -> list[FeaturePair]:
        return [self.options.pair]

    def modules(self, channels: Channels) -> dict[str, Any]:
        """The embedding head (student -> teacher width) when the memory parts are on; allocates the queues."""
        o, pair = self.options, self.options.pair
        c_s, self.dim = channels("student", pair.student), channels("teacher", pair.teacher)
        if not self.memory:
            return {}
        k = self.num_classes
        gen = torch.Generator().manual_seed(QUEUE_SEED)
        # flat (K * size + 1) x D: the extra last row takes the writes of absent classes (cirkd.enqueue)
        self.pixel_queue = F.normalize(torch.randn(k * o.pixel_queue + 1, self.dim, generator=gen), dim=1)
        self.region_queue = F.normalize(torch.randn(k * o.region_queue + 1, self.dim, generator=gen), dim=1)
        self.pixel_ptr = torch.zeros(k, dtype=torch.long)
        self.region_ptr = torch.zeros(k, dtype=torch.long)
        return {EMBED: cirkd.embedding_head(c_s, self.dim)}

    def setup(self, accelerator) -> None:
        super().setup(accelerator)
        if self.memory:
            for name in ("pixel_queue", "region_queue", "pixel_ptr", "region_ptr"):
                setattr(self, name, getattr(self, name).to(accelerator.device))

    def loss(self, student, teacher, modules, batch, log):
        """``minibatch_weight * L_mb + pixel_weight * L_pixel + region_weight * L_region``, raw parts logged as
        ``loss_cirkd_minibatch`` / ``_pixel`` / ``_region``; the memory parts enqueue this batch's teacher keys
        (gathered over processes) first, as CIRKD does."""
        o = self.options
        s, t = student[o.pair.student], teacher[o.pair.teacher]
        t = segmentation.upsample_to(t.float(), s.shape[-2:])
        total = torch.zeros((), device=s.device)
        if o.minibatch_weight > 0:
            log["loss_cirkd_minibatch"] = cirkd.minibatch_loss(s, t, o.temperature, o.minibatch_pool)
            total = total + o.minibatch_weight * log["loss_cirkd_minibatch"]
        if self.memory:
            labels = F.interpolate(batch["label"][:, None].float(), size=s.shape[-2:], mode="nearest")[:, 0].long()
            t = F.normalize(t, dim=1)
            with torch.no_grad():
                self.enqueue(cirkd.select_keys(t, labels, self.num_classes, o.pixels_per_image, o.pixels_from))
            pixel_keys = self._sample(self.pixel_queue, o.pixel_queue, o.pixel_samples)
            region_keys = self._sample(self.region_queue, o.region_queue, o.region_samples)
            pixel, region = cirkd.memory_losses(modules[EMBED](s), t, labels, pixel_keys, region_keys,
                                                o.temperature, o.kd_temperature)
            log["loss_cirkd_pixel"], log["loss_cirkd_region"] = pixel, region
            total = total + o.pixel_weight * pixel + o.region_weight * region
        return total

    def enqueue(self, keys: dict[str, Any]) -> None:
        """Gather every process's keys (process order, then batch order), then write them into the queues."""
        if getattr(self, "accelerator", None) is not None and self.accelerator.num_processes > 1:
            keys = {name: self.accelerator.gather(value.contiguous()) for name, value in keys.items()}
        cirkd.enqueue(self.pixel_queue, self.pixel_ptr, self.region_queue, self.region_ptr, keys)

    def _sample(self, queue, size: int, samples: int):
        """The same ``samples // K + 1`` random slots (at most ``size``) of every class queue: (K * k) x D."""
        index = torch.randperm(size, device=queue.device)[:samples // self.num_classes + 1]
        return queue[:-1].view(self.num_classes, size, -1)[:, index].flatten(0, 1)

    def state_dict(self) -> dict[str, Any]:
        if not self.memory:
            return {}
        k = self.num_classes
        return {"pixel_queue": self.pixel_queue[:-1].view(k, -1, self.dim), "pixel_ptr": self.pixel_ptr,
                "region_queue": self.region_queue[:-1].view(k, -1, self.dim), "region_ptr": self.region_ptr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, target in self.state_dict().items():  # views of the buffers: copy_ writes through
            if tuple(target.shape) != tuple(state[name].shape):
                raise DasuiteError(f"--resume: method.cirkd's checkpointed {name} has shape "
                                   f"{tuple(state[name].shape)}, this run's {tuple(target.shape)} (queue sizes and "
                                   f"widths must match)")
            target.copy_(state[name])
