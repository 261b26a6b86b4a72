"""``distill``: teacher -> student knowledge distillation on labelled ``source`` batches.

Total loss = ``task_weight * CE`` + the sum of the configured terms, each ``weight * term`` and each logged as
``loss_<term>`` (``loss_seg`` for CE; ``freq`` also logs its raw ``loss_freq_low``/``loss_freq_high``), plus
``loss_fd`` with the experiment's ``feature_distance`` section (``Method.source_terms``). Terms
(``dasuite.losses.kd`` / ``.frequency``): ``kl`` on logits, ``at``/``sp`` on feature pairs, ``cwd`` on a pair
(default the logits), ``freq`` on one pair (default the decoder feature). A pair names a model feature
(``stage1..4``, ``decoder``) or ``logits`` for each side; teacher tensors are resized (bilinear) to the student's
size where positions are compared; a 1x1 projector (student -> teacher channels) is created for ``cwd``/``freq``
pairs whose channel counts differ and trained with the student (``extra_modules``).

The teacher is built in ``__init__`` from ``teacher.run`` (a dasuite run directory: its best checkpoint, else
``last.pt``; arch/tiny/options from its ``config.yaml`` unless given here), ``teacher.checkpoint`` or
``teacher.pretrained`` (both with ``teacher.arch``); ``{work_dir}``, ``{seed}`` and ``{fold}`` in a path become the
run's. It is frozen (``requires_grad_(False)``, ``eval()``), moved to the device in ``setup`` (never prepared, never in
the optimizer) and run under ``torch.no_grad()`` (``dasuite.models.frozen``). See docs/kd.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field

from dasuite.constants import IGNORE_INDEX
from dasuite.errors import ConfigError, DasuiteError
from dasuite.lazy import lazy_import
from dasuite.losses.frequency import HighMode
from dasuite.methods.base import FEATURE_DISTANCE_TERM, METHODS, Batch, LossTerm, Method
from dasuite.models.frozen import FrozenModelConfig, build_frozen_model
from dasuite.schema_base import Section

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from dasuite.config.schema import ExperimentConfig

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")
kd = lazy_import("dasuite.losses.kd")
frequency = lazy_import("dasuite.losses.frequency")
segmentation = lazy_import("dasuite.losses.segmentation")

#: A tiny frozen teacher for the contract test (created there when absent): wider than the tiny B0 student, so
#: feature terms need projectors.
TOY_TEACHER = {"checkpoint": "{work_dir}/toy_frozen_segformer_b2.safetensors", "arch": "segformer_b2", "tiny": True}


class FeaturePair(Section):
    """A student feature and the teacher feature it is distilled from: ``stage1..4``, ``decoder`` or ``logits``."""

    student: str = "decoder"
    """Student tensor: ``stage1``..``stage4`` (encoder stages), ``decoder`` (the classifier's input) or ``logits``."""
    teacher: str = "decoder"
    """Teacher tensor, named the same way."""


class KLConfig(Section):
    """Pixel-wise KL on logits at the student's logit resolution; ``ignore_mask`` skips pixels labelled 255."""

    weight: float = Field(1.0, ge=0)
    """Weight of the term."""
    temperature: float = Field(1.0, gt=0)
    """Softmax temperature T (the loss keeps the T^2 factor)."""
    ignore_mask: bool = False
    """Average over labelled pixels only instead of all pixels."""


class ATConfig(Section):
    """Attention transfer, summed over ``pairs``."""

    weight: float = Field(1000.0, ge=0)
    """Weight of the term (the attention-transfer paper's 1000)."""
    p: float = Field(2.0, gt=0)
    """Exponent p of the attention map ``mean_c |F_c|^p``."""
    pairs: list[FeaturePair] = Field(default_factory=lambda: [FeaturePair(student=f"stage{i}", teacher=f"stage{i}")
                                                               for i in range(1, 5)], min_length=1)
    """Feature pairs the term is summed over."""


class SPConfig(Section):
    """Similarity-preserving KD, summed over ``pairs``."""

    weight: float = Field(1.0, ge=0)
    """Weight of the term."""
    pairs: list[FeaturePair] = Field(default_factory=lambda: [FeaturePair(student="stage4", teacher="stage4")],
                                     min_length=1)
    """Feature pairs the term is summed over."""


class CWDConfig(Section):
    """Channel-wise distillation, summed over ``pairs`` (default: the logits)."""

    weight: float = Field(3.0, ge=0)
    """Weight of the term."""
    temperature: float = Field(4.0, gt=0)
    """Temperature of the per-channel softmax over positions (the loss keeps the T^2 factor)."""
    pairs: list[FeaturePair] = Field(default_factory=lambda: [FeaturePair(student="logits", teacher="logits")],
                                     min_length=1)
    """Feature pairs the term is summed over."""


class FreqConfig(Section):
    """Frequency KD: ``weight * (L_low + high_weight * L_high)``; ``ratio`` is kept per side (docs/kd.md)."""

    weight: float = Field(0.1, ge=0)
    """Weight of ``L_low + high_weight * L_high``."""
    ratio: float = Field(0.2, gt=0, le=1)
    """Fraction of the frequencies per axis kept in the low band (0.2 keeps about 4% of the area; 1 keeps all)."""
    high: HighMode = "l1"
    """High-band loss: ``kd`` (MSE to the teacher's), ``l1`` (L1 to it), ``sparsity`` (student's L1) or ``none``."""
    high_weight: float = Field(1.0, ge=0)
    """Weight of the high-band loss relative to the low-band one."""
    pair: FeaturePair = Field(default_factory=FeaturePair)
    """The feature pair compared (a 1x1 projector is added when channel counts differ)."""


class DistillConfig(Section):
    """``method: {name: distill, teacher: {...}, kl: {...}, freq: {...}}``; an absent term is off."""

    name: Literal["distill"] = "distill"
    """Selects this method (``dasuite list methods``)."""
    teacher: FrozenModelConfig
    """The frozen teacher: exactly one of ``run``, ``checkpoint`` + ``arch`` or ``pretrained`` + ``arch``."""
    task_weight: float = Field(1.0, ge=0)
    """Weight of the student's cross-entropy on ``data.source``."""
    kl: Optional[KLConfig] = None
    """Pixel-wise KL divergence between softened class distributions (Hinton et al.); null = off."""
    at: Optional[ATConfig] = None
    """Attention transfer (Zagoruyko & Komodakis, ICLR'17); null = off."""
    sp: Optional[SPConfig] = None
    """Similarity-preserving KD (Tung & Mori, ICCV'19); null = off."""
    cwd: Optional[CWDConfig] = None
    """Channel-wise distillation (Shu et al., ICCV'21); null = off."""
    freq: Optional[FreqConfig] = None
    """Frequency KD: separate losses on a feature's low- and high-frequency parts (docs/kd.md); null = off."""


TERMS = ("kl", "at", "sp", "cwd", "freq")


@METHODS.register("distill", config=DistillConfig)
class Distill(Method):
    """Student = ``self.model`` (trained), teacher = ``self.teacher`` (frozen); losses as in the module docstring."""

    domains = ("source",)
    loss_terms = (
        LossTerm("task", "task_weight", on=1.0),
        LossTerm("kl", "kl", on={"weight": 1.0}, off=None),
        LossTerm("at", "at", on={"weight": 1000.0}, off=None),
        LossTerm("sp", "sp", on={"weight": 1.0}, off=None),
        LossTerm("cwd", "cwd", on={"weight": 3.0}, off=None),
        LossTerm("freq", "freq", on={"weight": 1.0}, off=None, reaches=("model", "projectors")),
        FEATURE_DISTANCE_TERM,
    )
    toy_overrides = {"method.teacher": TOY_TEACHER}
    shared_source_losses = True

    def __init__(self, cfg: "ExperimentConfig", num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.options: DistillConfig = cfg.method
        self.teacher, self.teacher_source = build_frozen_model(self.options.teacher, cfg, num_classes, "method.teacher")
        self.teacher_checksum = float(sum(p.double().abs().sum() for p in self.teacher.state_dict().values()
                                          if p.is_floating_point()))
        self.active = [t for t in TERMS if getattr(self.options, t) is not None and getattr(self.options, t).weight > 0]
        self.projectors = torch.nn.ModuleDict()
        for term in self.active:
            for index, pair in enumerate(self._pairs(term)):
                c_s = self._channels(self.model, pair.student, "student")
                c_t = self._channels(self.teacher, pair.teacher, "teacher")
                if term in ("cwd", "freq") and c_s != c_t:
                    self.projectors[f"{term}{index}"] = torch.nn.Conv2d(c_s, c_t, kernel_size=1)

    def _pairs(self, term: str) -> list[FeaturePair]:
        options = getattr(self.options, term)
        if term == "kl":
            return [FeaturePair(student="logits", teacher="logits")]
        return [options.pair] if term == "freq" else list(options.pairs)

    def _channels(self, model: nn.Module, name: str, side: str) -> int:
        channels = {**model.feature_channels, "logits": self.num_classes}
        if name not in channels:
            raise ConfigError(f"method: {side} feature {name!r} does not exist; valid: {', '.join(channels)}")
        return channels[name]

    def extra_modules(self) -> tuple[str, ...]:
        return ("projectors",) if len(self.projectors) else ()

    def setup(self, accelerator: "Accelerator") -> None:
        super().setup(accelerator)
        self.teacher.to(accelerator.device)

    def training_step(self, batches: dict[str, Batch], step: int) -> dict[str, torch.Tensor]:
        batch = batches["source"]
        logits, features = self.source_forward(batch["image"], features=True)
        losses = self.source_terms(batch, logits, features)
        total = self.options.task_weight * losses["loss_seg"] + sum(v for k, v in losses.items() if k != "loss_seg")
        if self.active:
            with torch.no_grad(), self.accelerator.autocast():
                t_logits, t_features = self.teacher(batch["image"], return_features=True)
            student, teacher = {**features, "logits": logits}, {**t_features, "logits": t_logits}
            for term in self.active:
                weighted = getattr(self.options, term).weight * self._term(term, student, teacher, batch, losses)
                losses[f"loss_{term}"] = weighted
                total = total + weighted
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}

    def _term(self, term: str, student: dict, teacher: dict, batch: Batch, log: dict) -> torch.Tensor:
        """The unweighted value of one term, summed over its pairs (``freq`` adds its raw parts to ``log``)."""
        options = getattr(self.options, term)
        total = torch.zeros((), device=student["logits"].device)
        for index, pair in enumerate(self._pairs(term)):
            s, t = student[pair.student], teacher[pair.teacher]
            if f"{term}{index}" in self.projectors:
                s = self.projectors[f"{term}{index}"](s)
            if term in ("kl", "cwd", "freq"):
                t = segmentation.upsample_to(t.float(), s.shape[-2:])
            if term == "kl":
                valid = self._valid(batch, s) if options.ignore_mask else None
                total = total + kd.kl_loss(s, t, options.temperature, valid)
            elif term == "at":
                total = total + kd.at_loss(s, t, options.p)
            elif term == "sp":
                total = total + kd.sp_loss(s, t)
            elif term == "cwd":
                total = total + kd.cwd_loss(s, t, options.temperature)
            else:
                low, high = frequency.freq_loss(s, t, options.ratio, options.high)
                log["loss_freq_low"], log["loss_freq_high"] = low, high
                total = total + low + options.high_weight * high
        return total

    @staticmethod
    def _valid(batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        """BxHxW mask of labelled pixels at the logits' size (labels resampled nearest)."""
        labelled = (batch["label"] != IGNORE_INDEX).float().unsqueeze(1)
        return F.interpolate(labelled, size=logits.shape[-2:], mode="nearest").squeeze(1)

    def state_dict(self) -> dict[str, Any]:
        """The teacher is rebuilt from the config on resume; its source and checksum guard against a changed file."""
        return {"teacher_source": self.teacher_source, "teacher_checksum": self.teacher_checksum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("teacher_checksum")
        if saved is not None and abs(saved - self.teacher_checksum) > 1e-6 * max(1.0, abs(saved)):
            raise DasuiteError(f"--resume: the teacher's weights changed since the checkpoint was written (then "
                               f"{state.get('teacher_source')}, now {self.teacher_source}); resume with the same "
                               f"teacher")
