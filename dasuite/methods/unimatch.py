"""``unimatch``: UniMatch (Yang et al., CVPR'23) and UniMatch V2 (Yang et al., 2024) semi-supervised segmentation.

Each step, with labelled ``source`` images ``x`` (labels ``l``) and unlabelled weak ``target`` views ``u`` (B images):

1. pseudo-labels of ``u``: ``teacher: self`` (UniMatch) takes the student's own prediction of ``u`` from the
   batched training forward of step 3, detached; ``teacher: ema`` (UniMatch V2) an EMA teacher's. ``c = max
   softmax``, ``y = argmax``, weights ``w`` as ``mean_teacher`` (``threshold``, ``confidence``, ``pseudo_ignore``,
   ``pseudo_valid``; ``dasuite.methods.mean_teacher.target_pseudo_labels``);
2. two strong views ``s_k = strong(u)`` (own draws), then CutMix: view k pastes a box ``m_k`` (``cutmix``) of its
   partner's view, ``s_k' = m_k s_k[pi_k] + (1 - m_k) s_k`` with labels ``y_k = m_k y[pi_k] + (1 - m_k) y`` and
   weights ``w_k`` likewise; ``partners: distinct`` draws ``pi_k(i) = (i + r_k) mod B`` with distinct shifts
   ``r_1 != r_2`` in ``1..B-1`` (distinct partners per view and image when B >= 3; B = 2: both the other image),
   ``partners: flip`` is UniMatch V2's ``pi(i) = B - 1 - i`` for both views;
3. forwards: one on ``cat(x, u)`` whose encoder features of the ``u`` rows are also decoded after channel dropout
   (``Dropout2d(fp_dropout)`` on every stage, UniMatch's feature perturbation; ``fp_weight > 0``), and one on
   ``cat(s_1', s_2')``; with ``comp_drop`` (UniMatch V2) that forward multiplies the features of image i of the two
   views by complementary channel masks ``2 b`` and ``2 (1 - b)``, ``b ~ Bernoulli(0.5)`` per channel (one mask
   per feature width, so DINOv2's four read-outs share it), except on a random half of the images, kept whole;
4. ``loss = loss_scale * (L_x + strong_weight (L_s1 + L_s2) + fp_weight L_fp)``, ``L_x`` the shared labelled
   terms (``Method.source_terms``), ``L_s_k = sum_p w_k,p CE(s_k', y_k)_p / P`` and ``L_fp`` likewise on the
   perturbed prediction with ``y, w``. Defaults are UniMatch's ``(L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2``;
   UniMatch V2 is ``strong_weight: 0.5, fp_weight: 0, comp_drop: true, teacher: ema``.

Logged: ``loss_seg``, ``loss_strong1``, ``loss_strong2``, ``loss_fp``, ``pseudo_confidence``, ``pseudo_kept`` (and
``ema_momentum``). The EMA teacher (``teacher: ema``) is checkpointed; draws use torch's global RNG, which the
engine checkpoints. See docs/self_training.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field

from dasuite.data.augment import AugmentConfig, DeviceAugment, StrongConfig
from dasuite.errors import ConfigError
from dasuite.lazy import lazy_import
from dasuite.methods.base import FEATURE_DISTANCE_TERM, METHODS, Batch, LossTerm
from dasuite.methods.mean_teacher import (CutMixConfig, PseudoIgnoreConfig, TeacherStudent, jitter_blur,
                                          target_pseudo_labels, weighted_ce)
from dasuite.schema_base import Section

if TYPE_CHECKING:
    from dasuite.config.schema import ExperimentConfig
    from dasuite.models.base import Perturb

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")
data_mix = lazy_import("dasuite.data.mix")


def _unimatch_strong() -> StrongConfig:
    """UniMatch's strong views: colour jitter 0.5/0.5/0.5/0.25 (p 0.8), grayscale p 0.2, blur p 0.5 (sigma 0.1-2)."""
    return jitter_blur(0.5, 0.25, 0.2, (0.1, 2.0))


class UniMatchConfig(Section):
    """``method: {name: unimatch, ...}``; defaults are UniMatch's (Cityscapes: ``threshold: 0``), UniMatch V2:
    ``teacher: ema, momentum: 0.996, strong_weight: 0.5, fp_weight: 0, comp_drop: true, partners: flip``."""

    name: Literal["unimatch"] = "unimatch"
    """Selects this method (``dasuite list methods``)."""
    teacher: Literal["self", "ema"] = "self"
    """Who labels the weak views: ``self`` (the student's detached prediction, UniMatch) or ``ema`` (V2)."""
    momentum: float = Field(0.996, ge=0, lt=1)
    """EMA momentum of the teacher with ``teacher: ema`` (UniMatch V2: 0.996)."""
    momentum_ramp: bool = True
    """Ramp the momentum as ``min(1 - 1/(t+1), momentum)`` (UniMatch V2); false = constant."""
    threshold: float = Field(0.95, ge=0, le=1)
    """Confidence threshold of the pseudo-labels (UniMatch: 0.95; 0 on Cityscapes)."""
    confidence: Literal["ignore", "weight", "both"] = "ignore"
    """Pixel weights: ``ignore`` (0 below ``threshold``, UniMatch), ``weight`` or ``both`` (as ``mean_teacher``)."""
    strong: StrongConfig = Field(default_factory=_unimatch_strong)
    """Photometric augmentation of each strong view, keys as ``augment.strong`` (default: UniMatch's)."""
    cutmix: CutMixConfig = Field(default_factory=lambda: CutMixConfig(p=0.5))
    """Box of each strong view (UniMatch: area 0.02-0.4, aspect 0.3-3.3, p 0.5)."""
    partners: Literal["distinct", "flip"] = "distinct"
    """CutMix partners from the unlabelled batch: ``distinct`` per view (random shifts) or ``flip`` (V2: reversed)."""
    strong_weight: float = Field(0.25, ge=0)
    """Weight of each strong view's loss before ``loss_scale`` (UniMatch: 0.25; V2: 0.5)."""
    fp_weight: float = Field(0.5, ge=0)
    """Weight of the feature-perturbation stream before ``loss_scale`` (UniMatch: 0.5; 0 = no stream, V2)."""
    fp_dropout: float = Field(0.5, gt=0, lt=1)
    """Channel-dropout probability of the feature-perturbation stream (UniMatch: 0.5)."""
    comp_drop: bool = False
    """UniMatch V2's complementary channel dropout on the strong views' encoder features."""
    loss_scale: float = Field(0.5, gt=0)
    """Factor of the whole sum (UniMatch's ``/ 2``)."""
    eval_teacher: bool = False
    """Evaluate (and keep as best) the EMA teacher instead of the student (``teacher: ema`` only)."""
    pseudo_ignore: Optional[PseudoIgnoreConfig] = None
    """Rows of the weak crops whose pseudo-label weight is 0 (``mean_teacher``'s ``pseudo_ignore``); null = none."""


def partner_shifts(batch: int, mode: str) -> tuple[Optional[int], Optional[int]]:
    """Shifts ``r_1, r_2`` of ``partners: distinct`` (module docstring, step 2; drawn on the CPU from torch's
    global RNG: no device sync), or ``(None, None)`` for ``flip``."""
    if mode == "flip":
        return None, None
    if batch < 3:
        return batch - 1, batch - 1
    first = int(torch.randint(1, batch, ()))
    second = int(torch.randint(1, batch - 1, ()))
    return first, second + (second >= first)


def partner_of(x: torch.Tensor, shift: Optional[int]) -> torch.Tensor:
    """``x[pi]`` along the batch: row ``i`` takes row ``(i + shift) mod B``, or row ``B - 1 - i`` for ``None``."""
    return x.flip(0) if shift is None else torch.roll(x, -shift, dims=0)


def channel_dropout(rows: int, p: float) -> "Perturb":
    """UniMatch's feature perturbation: the stages with ``Dropout2d(p)`` copies of their first-after-``rows`` rows
    appended (independent channel masks per stage and image, kept channels scaled by ``1 / (1 - p)``)."""

    def perturb(stages: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat((s, F.dropout2d(s[rows:], p, training=True))) for s in stages]

    return perturb


def complementary_dropout(stages: list[torch.Tensor]) -> list[torch.Tensor]:
    """UniMatch V2's complementary dropout on stages holding two views of B images (rows ``i`` and ``B + i``):
    view 1 times ``2 b``, view 2 times ``2 (1 - b)``, ``b ~ Bernoulli(0.5)`` per image and channel (one draw per
    channel width), both times 1 on ``floor(B / 2)`` random images."""
    half = stages[0].shape[0] // 2
    whole = torch.randperm(half, device=stages[0].device)[: half // 2]
    masks: dict[int, torch.Tensor] = {}
    out = []
    for s in stages:
        c = s.shape[1]
        if c not in masks:
            first = torch.bernoulli(torch.full((half, c), 0.5, device=s.device)) * 2.0
            first[whole] = 1.0
            masks[c] = torch.cat((first, 2.0 - first))
        out.append(s * masks[c].to(s.dtype).view(2 * half, c, *([1] * (s.dim() - 2))))
    return out


@METHODS.register("unimatch", config=UniMatchConfig)
class UniMatch(TeacherStudent):
    """Student ``self.model`` (and the EMA teacher with ``teacher: ema``); losses as in the module docstring."""

    domains = ("source", "target")
    shared_source_losses = True
    loss_terms = (
        FEATURE_DISTANCE_TERM,
        LossTerm("strong", "strong_weight", on=0.25),
        LossTerm("fp", "fp_weight", on=0.5),
    )
    # threshold 0: an untrained model's pseudo-labels all count, so the unlabelled terms carry gradient at once
    toy_overrides = {"method.threshold": 0.0, "method.pseudo_ignore": {"top": 2, "bottom": 6}}

    def __init__(self, cfg: "ExperimentConfig", num_classes: int) -> None:
        if cfg.model.arch == "hrda":
            raise ConfigError("method unimatch: model.arch hrda is not supported (its training output is a "
                              "multi-resolution structure, not one logit map per image); use a plain segmenter")
        self.uses_ema = cfg.method.teacher == "ema"
        super().__init__(cfg, num_classes)
        self.options: UniMatchConfig = cfg.method
        if self.options.eval_teacher and not self.uses_ema:
            raise ConfigError("method.eval_teacher: true needs method.teacher: ema (teacher: self has no EMA copy)")
        self.strong = DeviceAugment(AugmentConfig(strong=self.options.strong))
        self._fp_streams: dict[int, "Perturb"] = {}  # one callable per labelled batch size: stable under torch.compile

    def strong_views(self, images: torch.Tensor, pseudo: torch.Tensor, weights: torch.Tensor,
                     ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The two (image, label, weight) strong views of weak images with their pseudo-labels (step 2)."""
        b, _, h, w = images.shape
        c = self.options.cutmix
        views = []
        for shift in partner_shifts(b, self.options.partners):
            view = self.strong.photometric(images)
            box = data_mix.cutmix_masks(b, h, w, images.device, c.area, c.aspect, c.p)
            views.append(tuple(data_mix.mix(box, partner_of(t, shift), t) for t in (view, pseudo, weights)))
        return views

    def training_step(self, batches: dict[str, Batch], step: int) -> dict[str, torch.Tensor]:
        source, target = batches["source"], batches["target"]
        o, n = self.options, source["image"].shape[0]
        fp = o.fp_weight > 0
        want_features = self.feature_distance is not None
        if fp or not self.uses_ema:  # labelled and weak images in one forward, the fp rows appended
            perturb = self._fp_streams.setdefault(n, channel_dropout(n, o.fp_dropout)) if fp else None
            out = self.model(torch.cat((source["image"], target["image"])), return_features=want_features,
                             perturb=perturb)
        else:
            out = self.model(source["image"], return_features=want_features)
        logits, features = out if want_features else (out, {})
        u = target["image"].shape[0]
        teacher_logits = logits[n:n + u] if not self.uses_ema else self.teacher_logits(target["image"])
        pseudo, weights, log = target_pseudo_labels(teacher_logits, target, o)
        source_terms = self.source_terms(source, logits[:n], {k: v[:n] for k, v in features.items()})
        views = self.strong_views(target["image"], pseudo, weights)
        strong_logits = self.model(torch.cat([v[0] for v in views]),
                                   perturb=complementary_dropout if o.comp_drop else None)
        losses = {f"loss_strong{k + 1}": weighted_ce(part, view[1], view[2])
                  for k, (part, view) in enumerate(zip(strong_logits.chunk(2), views))}
        total = sum(source_terms.values()) + o.strong_weight * (losses["loss_strong1"] + losses["loss_strong2"])
        if fp:
            losses["loss_fp"] = weighted_ce(logits[n + u:], pseudo, weights)
            total = total + o.fp_weight * losses["loss_fp"]
        return {"loss": o.loss_scale * total, **{k: v.detach() for k, v in {**source_terms, **losses}.items()},
                **log, **self.momentum_log(total)}
