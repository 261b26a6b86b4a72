"""The method contract: what a training method adds on top of the shared engine.

A method owns its models (the segmentation network under ``self.model``, plus any teacher, EMA copy or
discriminator), says which data domains it draws each step (``domains``), and returns named losses from
``training_step``; the engine backpropagates ``losses["loss"]``, steps the optimizer and schedule, logs every
entry, evaluates ``eval_model()`` and checkpoints ``state_dict()`` (extra state such as an EMA teacher).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dasuite.models import create_model
from dasuite.registry import Registry

if TYPE_CHECKING:
    from accelerate import Accelerator

    from dasuite.config.schema import ExperimentConfig

METHODS: Registry[type["Method"]] = Registry("method")

Batch = dict[str, Any]


class Method(abc.ABC):
    """Base class. Subclasses set ``domains`` and implement ``training_step``."""

    #: data roles drawn every step, e.g. ("source",) or ("source", "target"); each needs ``data.<role>`` set.
    domains: tuple[str, ...] = ("source",)
    #: DDP option, for methods whose step leaves some prepared parameters without a gradient.
    find_unused_parameters: bool = False
    #: False for methods that train no segmenter (``cyclegan``): the engine then evaluates nothing and refuses an
    #: experiment that sets ``data.val`` / ``data.test``; ``summary.json`` has ``best``/``final`` None.
    evaluates: bool = True

    def __init__(self, cfg: "ExperimentConfig", num_classes: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.model: nn.Module = create_model(
            cfg.model.arch, num_classes, tiny=cfg.model.tiny, pretrained=cfg.model.pretrained, **cfg.model.options
        )

    def extra_modules(self) -> tuple[str, ...]:
        """Names of attributes holding extra trainable modules (e.g. KD projectors) that train with ``self.model``'s
        optimizer at the head learning rate; the engine prepares them (replacing the attributes) and checkpoints
        them."""
        return ()

    def setup(self, accelerator: "Accelerator") -> None:
        """Called once after the engine prepared ``self.model``: place frozen/extra modules on the device here."""
        self.accelerator = accelerator

    @abc.abstractmethod
    def training_step(self, batches: dict[str, Batch], step: int) -> dict[str, torch.Tensor]:
        """Return named scalar losses for one micro-batch; ``"loss"`` is the total that is backpropagated.

        ``batches[role]`` holds ``image`` (normalised float, augmented per the role's config), ``label`` (int64,
        255 = ignore; absent for unlabelled roles) and ``name``.
        """

    def on_step_end(self, step: int) -> None:
        """Called after every optimizer step (EMA updates, threshold schedules)."""

    def eval_model(self) -> nn.Module:
        """The network that evaluation and checkpoint selection use."""
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """Extra state to checkpoint besides the prepared model/optimizer/schedule (EMA teacher, D, RNG...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
