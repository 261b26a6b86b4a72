"""The method contract: what a training method adds on top of the shared engine.

A method owns its models (the segmentation network under ``self.model``, plus any teacher, EMA copy or
discriminator), says which data domains it draws each step (``domains``), and returns named losses from
``training_step``; the engine backpropagates ``losses["loss"]``, steps the optimizer and schedule, logs every
entry, evaluates ``eval_model()`` and checkpoints ``state_dict()`` (extra state such as an EMA teacher).

Methods with a labelled source compute its loss with ``source_losses`` (or ``source_forward`` + ``source_terms``)
and set ``shared_source_losses``: the terms every such method shares (the cross-entropy and, when the experiment's
``feature_distance`` section is on, DAFormer's ImageNet feature distance) are then added in one place.

A method is one module: a config class (``name: Literal["<name>"]`` plus its keys) and the method class registered
with ``@METHODS.register("<name>", config=TheConfig)``. The module must import without torch (heavy libraries
through ``dasuite.lazy.lazy_import``), so config checks stay fast. ``loss_terms`` and ``toy_overrides`` declare
what ``tests/test_method_contract.py`` checks for every registered method (docs/extending.md).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from pydantic import Field

from dasuite.errors import ConfigError
from dasuite.lazy import lazy_import
from dasuite.registry import METHODS
from dasuite.schema_base import Section

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch import nn

    from dasuite.config.schema import ExperimentConfig
    from dasuite.methods.feature_distance import FeatureDistance

losses = lazy_import("dasuite.losses")
multires = lazy_import("dasuite.losses.hrda")
segmentation = lazy_import("dasuite.losses.segmentation")

__all__ = ["FEATURE_DISTANCE_TERM", "METHODS", "Batch", "LossTerm", "Method", "OhemConfig"]

Batch = dict[str, Any]


class OhemConfig(Section):
    """``ohem: {thresh: 0.7, min_kept: 200000}``: the shared labelled cross-entropy over hard pixels only
    (``dasuite.losses.segmentation.ohem_seg_loss``; UniMatch's Cityscapes setting)."""

    thresh: float = Field(0.7, gt=0, le=1)
    """Pixels whose label probability is at most this are kept (raised to the ``min_kept``-th smallest)."""
    min_kept: int = Field(100000, ge=0)
    """At least this many pixels per micro-batch and process are kept (UniMatch: 200000 at 2 crops of 801 a GPU)."""


@dataclass(frozen=True)
class LossTerm:
    """A loss term that a config key switches on: ``method.<key>`` set to ``on`` enables it, ``off`` disables it.
    Its gradient must reach the parameters of the trainable modules named in ``reaches`` (keys of
    ``Method.trainable_modules()``) and no other's. ``context``: overrides the term needs besides the method's
    ``toy_overrides`` (e.g. a multi-level model for an ``aux`` term). ``top_level``: ``key`` is a key of the
    experiment itself (a shared section such as ``feature_distance``), not of ``method``."""

    name: str
    key: str
    on: Any
    off: Any = 0.0
    reaches: tuple[str, ...] = ("model",)
    context: dict[str, Any] = field(default_factory=dict)
    top_level: bool = False

    @property
    def config_key(self) -> str:
        """The dotted experiment key the term is switched with."""
        return self.key if self.top_level else f"method.{self.key}"


#: The shared feature-distance term of the contract test (``Method.loss_terms`` of the methods that set
#: ``shared_source_losses``): weight 1, every feature pixel (the toy crops are too small for thing-class blocks),
#: a random tiny frozen network the test creates.
FEATURE_DISTANCE_TERM = LossTerm(
    "feature_distance", "feature_distance", top_level=True, off=None,
    on={"weight": 1.0, "classes": None, "network": {
        "checkpoint": "{work_dir}/toy_frozen_fd_segformer_b0.safetensors", "arch": "segformer_b0", "tiny": True}})


class Method(abc.ABC):
    """Base class. Subclasses set ``domains`` and implement ``training_step``."""

    #: data roles drawn every step, e.g. ("source",) or ("source", "target"); each needs ``data.<role>`` set.
    domains: ClassVar[tuple[str, ...]] = ("source",)
    #: DDP option, for methods whose step leaves some prepared parameters without a gradient.
    find_unused_parameters: ClassVar[bool] = False
    #: False for methods that train no segmenter (``cyclegan``): the engine then evaluates nothing and refuses an
    #: experiment that sets ``data.val`` / ``data.test``; ``summary.json`` has ``best``/``final`` None.
    evaluates: ClassVar[bool] = True
    #: the loss terms the config can switch on (checked by the method contract test).
    loss_terms: ClassVar[tuple[LossTerm, ...]] = ()
    #: config overrides (dotted key -> value) that turn the toy source-only experiment into a small run of this
    #: method; a frozen network it names by ``checkpoint`` is created by the contract test when absent.
    toy_overrides: ClassVar[dict[str, Any]] = {}
    #: True when ``training_step`` computes the labelled-source loss with ``source_losses`` / ``source_terms``, so
    #: the shared source terms (``feature_distance``) apply; an experiment that sets them for another method stops.
    shared_source_losses: ClassVar[bool] = False
    #: the shared feature-distance term of this run (``feature_distance`` section), None when off.
    feature_distance: Optional["FeatureDistance"] = None

    def __init__(self, cfg: "ExperimentConfig", num_classes: int) -> None:
        from dasuite.models import create_model

        self.cfg = cfg
        self.num_classes = num_classes
        self.model: nn.Module = create_model(
            cfg.model.arch, num_classes, tiny=cfg.model.tiny, pretrained=cfg.model.pretrained, **cfg.model.options
        )
        self.refuse_unused_shared_sections(cfg)
        fd = getattr(cfg, "feature_distance", None)
        if fd is not None and fd.weight > 0:
            from dasuite.methods.feature_distance import FeatureDistance

            self.feature_distance = FeatureDistance(fd, cfg, num_classes, self.model)

    def refuse_unused_shared_sections(self, cfg: "ExperimentConfig") -> None:
        """A ConfigError when the experiment sets a section of the shared labelled loss (``ohem``, an active
        ``feature_distance``) that this method would ignore (``shared_source_losses`` false)."""
        if self.shared_source_losses:
            return
        fd = getattr(cfg, "feature_distance", None)
        used = [name for name, on in (("ohem", getattr(cfg, "ohem", None) is not None),
                                      ("feature_distance", fd is not None and fd.weight > 0)) if on]
        if used:
            raise ConfigError(f"{used[0]}: method {type(self).__name__} does not compute the shared labelled-source "
                              f"losses (Method.source_losses), so the setting would be ignored: remove {used[0]} or "
                              f"use a method that does (e.g. source_only, mean_teacher, unimatch, distill)")

    def extra_modules(self) -> tuple[str, ...]:
        """Names of attributes holding extra trainable modules (e.g. KD projectors) that train with ``self.model``'s
        optimizer at the head learning rate; the engine prepares them (replacing the attributes) and checkpoints
        them."""
        return ()

    def trainable_modules(self) -> dict[str, "nn.Module"]:
        """Every module this method trains, by name: ``model``, the extra modules, and what methods add (e.g. the
        discriminators, trained by their own optimizer)."""
        return {"model": self.model, **{name: getattr(self, name) for name in self.extra_modules()}}

    def setup(self, accelerator: "Accelerator") -> None:
        """Called once after the engine prepared ``self.model``: place frozen/extra modules on the device here."""
        self.accelerator = accelerator
        if self.feature_distance is not None:
            self.feature_distance.setup(accelerator)

    def source_forward(self, images: "torch.Tensor",
                       features: bool = False) -> tuple["torch.Tensor", dict[str, "torch.Tensor"]]:
        """``(logits, named features)`` of the trained network on labelled images; the features are computed when
        ``features`` is true or a shared source term needs them, else ``{}``."""
        if features or self.feature_distance is not None:
            return self.model(images, return_features=True)
        return self.model(images), {}

    def source_terms(self, batch: Batch, logits: "torch.Tensor",
                     features: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        """The labelled-source loss terms, each as it enters the loss (their sum is the source loss):
        ``loss_seg = CE(logits, label)`` (over the hard pixels with ``ohem``; of an HRDA training output: its fused
        and detail terms, ``dasuite.losses.hrda``) and, with ``feature_distance`` on, ``loss_fd = weight * FD``
        (``dasuite.methods.feature_distance``); ``features`` from ``source_forward``."""
        ohem = getattr(self.cfg, "ohem", None)
        if ohem is None:
            terms = {"loss_seg": multires.multires_seg_loss(logits, batch["label"])}  # plain logits: seg_loss
        else:
            terms = {"loss_seg": multires.multires_loss(segmentation.ohem_seg_loss, logits, batch["label"],
                                                        thresh=ohem.thresh, min_kept=ohem.min_kept)}
        if self.feature_distance is not None:
            scale = getattr(self.accelerator.unwrap_model(self.model), "feature_input_scale", 1.0)
            terms["loss_fd"] = self.feature_distance.loss(batch["image"], batch["label"], features, scale)
        return terms

    def source_losses(self, batch: Batch) -> tuple["torch.Tensor", dict[str, "torch.Tensor"]]:
        """``(logits, terms)`` of a labelled batch: ``source_forward`` then ``source_terms``; the source loss is
        ``sum(terms.values())``, and each term is logged detached under its name."""
        logits, features = self.source_forward(batch["image"])
        return logits, self.source_terms(batch, logits, features)

    @abc.abstractmethod
    def training_step(self, batches: dict[str, Batch], step: int) -> dict[str, "torch.Tensor"]:
        """Return named scalar losses for one micro-batch; ``"loss"`` is the total that is backpropagated.

        ``batches[role]`` holds ``image`` (normalised float, augmented per the role's config), ``label`` (int64,
        255 = ignore; absent for unlabelled roles) and ``name``.
        """

    def on_step_end(self, step: int) -> None:
        """Called after every optimizer step (EMA updates, threshold schedules)."""

    def eval_model(self) -> "nn.Module":
        """The network that evaluation and checkpoint selection use."""
        return self.model

    def eval_model_name(self) -> str:
        """Which network ``eval_model`` is, as ``summary.json`` records it (``student`` unless overridden)."""
        return "student"

    def state_dict(self) -> dict[str, Any]:
        """Extra state to checkpoint besides the prepared model/optimizer/schedule (EMA teacher, D, RNG...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
