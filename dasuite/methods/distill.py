"""``distill``: teacher -> student knowledge distillation on labelled ``source`` batches.

Total loss = ``task_weight * CE`` (+ ``seg_weight_aux * CE`` of an auxiliary head, logged unweighted as
``loss_seg_aux``) + the sum of the configured terms, each ``weight * term`` and each logged as
``loss_<term>`` (``loss_seg`` for CE; terms may log raw parts, e.g. ``loss_freq_low``), plus ``loss_fd`` with the
experiment's ``feature_distance`` section (``Method.source_terms``). The terms are the ``DISTILL_TERMS`` registry:
one module each in ``dasuite/methods/kd_terms/`` (``kl``, ``at``, ``sp``, ``cwd``, ``freq``, ``cirkd``), each a
``method.<name>`` key of ``DistillConfig`` (built here from the registry; absent or null = off). A pair names a
model feature (``stage1..4``, ``decoder``) or ``logits`` for each side; teacher tensors are resized (bilinear) to
the student's size where positions are compared; the terms' trained layers (1x1 student -> teacher projectors of
``cwd``/``freq`` pairs whose widths differ, ``cirkd``'s embedding head) live in ``projectors`` and train with the
student (``extra_modules``); a term's state (``cirkd``'s queues) is checkpointed with the method.

The teacher is built in ``__init__`` from ``teacher.run`` (a dasuite run directory: its best checkpoint, else
``last.pt``; arch/tiny/options from its ``config.yaml`` unless given here), ``teacher.checkpoint`` or
``teacher.pretrained`` (both with ``teacher.arch``); ``{work_dir}``, ``{seed}`` and ``{fold}`` in a path become the
run's. It is frozen (``requires_grad_(False)``, ``eval()``), moved to the device in ``setup`` (never prepared, never in
the optimizer) and run under ``torch.no_grad()`` (``dasuite.models.frozen``). See docs/kd.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field, create_model

from dasuite.errors import ConfigError, DasuiteError
from dasuite.lazy import lazy_import
from dasuite.methods.base import FEATURE_DISTANCE_TERM, METHODS, Batch, LossTerm, Method
from dasuite.methods.kd_terms.base import DISTILL_TERMS, DistillTerm, FeaturePair
from dasuite.models.frozen import FrozenModelConfig, build_frozen_model
from dasuite.schema_base import Section

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from dasuite.config.schema import ExperimentConfig

torch = lazy_import("torch")
kd_modules = lazy_import("dasuite.methods.kd_terms.modules")
segmentation = lazy_import("dasuite.losses.segmentation")

__all__ = ["TERMS", "DistillConfig", "Distill", "FeaturePair"]

#: A tiny frozen teacher for the contract test (created there when absent): wider than the tiny B0 student, so
#: feature terms need projectors.
TOY_TEACHER = {"checkpoint": "{work_dir}/toy_frozen_segformer_b2.safetensors", "arch": "segformer_b2", "tiny": True}


class _DistillBase(Section):
    name: Literal["distill"] = "distill"
    """Selects this method (``dasuite list methods``)."""
    teacher: FrozenModelConfig
    """The frozen teacher: exactly one of ``run``, ``checkpoint`` + ``arch`` or ``pretrained`` + ``arch``."""
    task_weight: float = Field(1.0, ge=0)
    """Weight of the student's cross-entropy on ``data.source``."""
    seg_weight_aux: float = Field(0.0, ge=0)
    """Weight of the cross-entropy on the student's ``aux_logits`` (DeepLabV3 with ``aux: true``; CIRKD: 0.4 for its
    ResNet students); 0 = none."""


def _term_classes() -> dict[str, type[DistillTerm]]:
    """Every registered term (``DISTILL_TERMS``) by YAML key, in the order they are added to the loss."""
    terms = {name: DISTILL_TERMS.get(name) for name in DISTILL_TERMS.names()}
    for name in terms:
        if not name.isidentifier() or name in _DistillBase.model_fields:
            raise ConfigError(f"distillation term {name!r} ({DISTILL_TERMS.entry(name).module}): the name must be a "
                              f"Python identifier other than {', '.join(_DistillBase.model_fields)}")
    return dict(sorted(terms.items(), key=lambda item: (item[1].order, item[0])))


TERM_CLASSES = _term_classes()
TERMS = tuple(TERM_CLASSES)

DistillConfig = create_model(
    "DistillConfig", __base__=_DistillBase, __module__=__name__,
    __doc__="``method: {name: distill, teacher: {...}, kl: {...}, freq: {...}}``; an absent term is off.",
    **{name: (Optional[cls.config], Field(None, description=f"{cls.summary()}; null = off."))
       for name, cls in TERM_CLASSES.items()},
)


@METHODS.register("distill", config=DistillConfig)
class Distill(Method):
    """Student = ``self.model`` (trained), teacher = ``self.teacher`` (frozen); losses as in the module docstring."""

    domains = ("source",)
    loss_terms = (
        LossTerm("task", "task_weight", on=1.0),
        LossTerm("seg_aux", "seg_weight_aux", on=0.4, context={"model.arch": "deeplabv3_r18",
                                                               "model.options": {"aux": True}}),
        *(LossTerm(name, name, on=cls.contract_on, off=None, reaches=cls.reaches)
          for name, cls in TERM_CLASSES.items()),
        FEATURE_DISTANCE_TERM,
    )
    toy_overrides = {"method.teacher": TOY_TEACHER,
                     **{f"method.{name}": cls.contract_on for name, cls in TERM_CLASSES.items() if cls.in_toy_run}}
    shared_source_losses = True

    def __init__(self, cfg: "ExperimentConfig", num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.options = cfg.method
        if self.options.seg_weight_aux > 0 and "aux_logits" not in self.model.feature_channels:
            raise ConfigError(f"method.seg_weight_aux={self.options.seg_weight_aux} needs auxiliary logits, which model "
                              f"{cfg.model.arch!r} does not produce: use a DeepLabV3 with model.options.aux=true")
        self.teacher, self.teacher_source = build_frozen_model(self.options.teacher, cfg, num_classes, "method.teacher")
        self.teacher_checksum = float(sum(p.double().abs().sum() for p in self.teacher.state_dict().values()
                                          if p.is_floating_point()))
        self.terms: dict[str, DistillTerm] = {}
        for name, cls in TERM_CLASSES.items():
            options = getattr(self.options, name)
            term = cls(name, options, num_classes) if options is not None else None
            if term is not None and term.active():
                self.terms[name] = term
        self.active = list(self.terms)
        self.projectors = kd_modules.ModuleBank()
        for term in self.terms.values():
            for key, module in term.modules(self._channels).items():
                if key in self.projectors:
                    raise ConfigError(f"method.{term.name}: module key {key!r} is taken by another term")
                self.projectors[key] = module
        self.has_modules = len(self.projectors) > 0  # the prepared bank (DDP under several processes) has no len

    def _channels(self, side: str, name: str) -> int:
        model = self.model if side == "student" else self.teacher
        channels = {**model.feature_channels, "logits": self.num_classes}
        if name not in channels:
            raise ConfigError(f"method: {side} feature {name!r} does not exist; valid: {', '.join(channels)}")
        return channels[name]

    def extra_modules(self) -> tuple[str, ...]:
        return ("projectors",) if self.has_modules else ()

    def setup(self, accelerator: "Accelerator") -> None:
        super().setup(accelerator)
        self.teacher.to(accelerator.device)
        for term in self.terms.values():
            term.setup(accelerator)

    def training_step(self, batches: dict[str, Batch], step: int) -> dict[str, torch.Tensor]:
        batch = batches["source"]
        logits, features = self.source_forward(batch["image"], features=True)
        losses = self.source_terms(batch, logits, features)
        total = self.options.task_weight * losses["loss_seg"] + sum(v for k, v in losses.items() if k != "loss_seg")
        if self.options.seg_weight_aux > 0:
            losses["loss_seg_aux"] = segmentation.seg_loss(features["aux_logits"], batch["label"])
            total = total + self.options.seg_weight_aux * losses["loss_seg_aux"]
        if self.terms:
            with torch.no_grad(), self.accelerator.autocast():
                t_logits, t_features = self.teacher(batch["image"], return_features=True)
            student, teacher = {**features, "logits": logits}, {**t_features, "logits": t_logits}

            def add_terms(modules: "nn.ModuleDict") -> torch.Tensor:
                out = total
                for name, term in self.terms.items():
                    weighted = term.options.weight * term.loss(student, teacher, modules, batch, losses)
                    losses[f"loss_{name}"] = weighted
                    out = out + weighted
                return out

            # inside one call of the bank (when it has layers): under DDP their gradients are then averaged
            total = self.projectors(add_terms) if self.has_modules else add_terms(self.projectors)
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}

    def state_dict(self) -> dict[str, Any]:
        """The teacher is rebuilt from the config on resume; its source and checksum guard against a changed file.
        ``terms``: the state of the terms that have one (e.g. ``cirkd``'s queues)."""
        state: dict[str, Any] = {"teacher_source": self.teacher_source, "teacher_checksum": self.teacher_checksum}
        terms = {name: s for name, term in self.terms.items() if (s := term.state_dict())}
        if terms:
            state["terms"] = terms
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("teacher_checksum")
        if saved is not None and abs(saved - self.teacher_checksum) > 1e-6 * max(1.0, abs(saved)):
            raise DasuiteError(f"--resume: the teacher's weights changed since the checkpoint was written (then "
                               f"{state.get('teacher_source')}, now {self.teacher_source}); resume with the same "
                               f"teacher")
        for name, term in self.terms.items():
            if term.state_dict():
                if name not in state.get("terms", {}):
                    raise DasuiteError(f"--resume: the checkpoint holds no state of method.{name} (was the term "
                                       f"switched on after it was written?)")
                term.load_state_dict(state["terms"][name])
