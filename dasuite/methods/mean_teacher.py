"""``mean_teacher``: self-training with an EMA teacher, cross-domain mixing (DACS) or weak-to-strong (FixMatch).

Each step, with labelled ``source`` and unlabelled ``target`` batches (both already weak-augmented by the engine):

1. the EMA teacher (``dasuite.models.ema``; eval mode, no grad, never prepared) predicts the weak target images:
   confidence ``c = max softmax``, pseudo-label ``y = argmax`` at the crop's resolution;
2. ``variant: mix`` (DACS, Tranheden et al. WACV'21): a ``cutmix`` box or ``classmix`` mask (``dasuite.data.mix``)
   pastes source pixels onto the target image; the mixed label is the source label where pasted and ``y``
   elsewhere. ``variant: fixmatch`` (Sohn et al. 2020): the target image itself, no cross-image mix;
3. the strong photometric augmentation (``strong``, ``DeviceAugment.photometric``) is applied to that image;
4. losses: the shared labelled-source terms (``Method.source_losses``: ``loss_seg = CE(student(source), source
   label)``, plus ``loss_fd`` with ``feature_distance`` on) and the unlabelled loss
   ``loss_unlabelled = sum_p w_p CE_p / P`` over all ``P`` pixels of the mixed batch, where ``w_p = 1`` on pasted
   source pixels and on target pixels ``w_p = [c_p >= threshold]`` (``confidence: ignore``), ``q`` (``weight``:
   DACS's scalar, the fraction of the batch's target pixels with ``c >= threshold``), or ``q [c_p >= threshold]``
   (``both``); pixels labelled 255 count 0. Dividing by all pixels (not the kept ones) follows DACS and UniMatch.
   ``pseudo_ignore: {top, bottom}`` (DAFormer's pseudo-label crop) sets the target weights of the crop's first
   ``top`` and last ``bottom`` rows to 0 (rectification border, ego-car hood) before mixing, so pasted source
   pixels there keep weight 1; ``q`` still counts all target pixels. ``data.target.augment.pseudo_margins``
   (HRDA's margins of the full image) multiplies ``w`` by the batch's ``pseudo_valid`` map the same way.
   ``loss = loss_seg (+ loss_fd) +
   unlabelled_weight * loss_unlabelled``;
5. optional ``adversarial:`` block (one segmenter trained with the source segmentation loss, an adversarial loss
   on its predictions and the CutMix / FixMatch consistency loss):
   AdaptSegNet's single-level output-space term on the student's predictions of the weak target images (one more
   student forward, after the mixing draws) with the source logits of step 4 as D's "real" maps, adding
   ``weight * loss_adv_main + loss_d_main`` (``dasuite.methods.output_adversarial``); D steps in ``on_step_end``;
6. optional ``masking:`` block, MIC (Hoyer et al. CVPR'23, masked image consistency, MIC's "separatetrgaug"): the
   weak target images get their own draw of ``strong`` (``augment: true``), then a random block mask
   (``dasuite.data.masking``); the student's prediction of the masked images is trained against the target's
   pseudo-labels ``y`` and weights ``w`` of step 4 (before mixing, ``pseudo_ignore`` included, as in MIC's code;
   no second teacher forward): ``loss += masking.weight * loss_masked``, ``loss_masked = weighted_ce``. Its draws
   come after all others, so a run without the block is unchanged.

After every optimizer step the teacher moves towards the student (``on_step_end``). Logged besides the losses:
``pseudo_confidence`` (mean ``c``), ``pseudo_kept`` (fraction ``c >= threshold``), ``ema_momentum``; with
``adversarial``: ``loss_adv_main``, ``loss_d_main``, ``d_main_source``, ``d_main_target``, ``lr_d_main``; with
``masking``: ``loss_masked``. Evaluation uses the student unless ``eval_teacher: true`` (DAFormer evaluates the
student). The teacher's weights and update count (and the discriminator, its Adam and schedule) are in
``state_dict``; mixing, masking and augmentation draw from torch's global RNG, which the engine checkpoints.
See docs/self_training.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field, field_validator

from dasuite.constants import IGNORE_INDEX
from dasuite.data.augment import AugmentConfig, ColorJitterConfig, DeviceAugment, StrongConfig
from dasuite.errors import DasuiteError
from dasuite.lazy import lazy_import
from dasuite.methods.base import FEATURE_DISTANCE_TERM, METHODS, Batch, LossTerm, Method
from dasuite.methods.output_adversarial import OutputAdversarialConfig, OutputAdversary
from dasuite.schema_base import Section

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from dasuite.config.schema import ExperimentConfig
    from dasuite.models.ema import EMATeacher

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")
data_masking = lazy_import("dasuite.data.masking")
data_mix = lazy_import("dasuite.data.mix")
ema = lazy_import("dasuite.models.ema")
segmentation = lazy_import("dasuite.losses.segmentation")
multires = lazy_import("dasuite.losses.hrda")


def jitter_blur(strength: float, hue: float, grayscale: float, sigma: tuple[float, float]) -> StrongConfig:
    """A strong view of colour jitter (brightness, contrast, saturation ``strength``; ``hue``; p 0.8), grayscale with
    probability ``grayscale`` and Gaussian blur (p 0.5, ``sigma`` range), no policy."""
    jitter = ColorJitterConfig(brightness=strength, contrast=strength, saturation=strength, hue=hue, p=0.8)
    return StrongConfig(policy=None, color_jitter=jitter, grayscale=grayscale, blur=0.5, blur_sigma=sigma)


def _dacs_strong() -> StrongConfig:
    """DACS / DAFormer's strong augmentation: colour jitter 0.2 (p 0.8) and Gaussian blur (p 0.5, sigma 0.15-1.15)."""
    return jitter_blur(0.2, 0.2, 0.0, (0.15, 1.15))


class CutMixConfig(Section):
    """Box of area fraction ``a ~ U(area)``, aspect ``w/h`` log-uniform in ``aspect``, drawn with probability ``p``
    per image (UniMatch: 0.02-0.4, 0.3-3.3, 0.5)."""

    area: tuple[float, float] = (0.02, 0.4)
    """Box area as a fraction of the image, uniform in [min, max]."""
    aspect: tuple[float, float] = (0.3, 1 / 0.3)
    """Box aspect ratio width / height, log-uniform in [min, max]."""
    p: float = Field(1.0, ge=0, le=1)
    """Probability per image of pasting a box (UniMatch: 0.5)."""

    @field_validator("area", "aspect")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"expected [min, max] with 0 < min <= max, got {list(v)}")
        return v


class MaskingConfig(Section):
    """MIC's masked image consistency (Hoyer et al. CVPR'23; github.com/lhoyer/MIC defaults: weight 1, 64-pixel
    blocks, ratio 0.7, colour-augmented target images)."""

    weight: float = Field(1.0, ge=0)
    """Weight lambda_MIC of ``loss_masked`` in the total loss (MIC: 1)."""
    patch: int = Field(64, gt=0)
    """Side of the square mask blocks in pixels of the crop (MIC: 64 for 512 / 1024 crops)."""
    ratio: float = Field(0.7, ge=0, le=1)
    """Expected fraction of blocks masked: a block is kept where its uniform draw exceeds it (MIC: 0.7)."""
    augment: bool = True
    """Apply ``strong`` (a separate draw from the mixed image's) to the target images before masking (MIC's
    ``separatetrgaug``); false = mask the weak target images (``separatetrg``)."""


class PseudoIgnoreConfig(Section):
    """DAFormer's pseudo-label crop: target pixel weights 0 in the first ``top`` and last ``bottom`` rows of the
    target crop (DAFormer / MIC on 512x512 crops of 1024x512 Cityscapes: 15 and 120)."""

    top: int = Field(0, ge=0)
    """Rows at the top of the target crop whose pseudo-label weight is 0 (DAFormer: 15, the rectification border)."""
    bottom: int = Field(0, ge=0)
    """Rows at the bottom of the target crop whose pseudo-label weight is 0 (DAFormer: 120, the ego-car hood)."""


class MeanTeacherConfig(Section):
    """``method: {name: mean_teacher, ...}``; defaults are DACS's (ClassMix, momentum 0.99, threshold 0.968 with the
    scalar weight). FixMatch-style SSL: ``variant: fixmatch, confidence: ignore, threshold: 0.95``."""

    name: Literal["mean_teacher"] = "mean_teacher"
    """Selects this method (``dasuite list methods``)."""
    variant: Literal["mix", "fixmatch"] = "mix"
    """``mix``: source pixels pasted onto target images (DACS, Tranheden et al. WACV'21); ``fixmatch``: the target image
    itself (Sohn et al. 2020)."""
    mixing: Literal["classmix", "cutmix"] = "classmix"
    """With ``variant: mix``: ``classmix`` (half the classes of each source label) or ``cutmix`` (one random box)."""
    cutmix: CutMixConfig = Field(default_factory=CutMixConfig)
    """Box sampling of ``mixing: cutmix``."""
    momentum: float = Field(0.99, ge=0, lt=1)
    """EMA momentum of the teacher (DAFormer: 0.999 for transformers; 0 = the student itself, as FixMatch)."""
    momentum_ramp: bool = True
    """Ramp the momentum up as ``min(1 - 1/(t+1), momentum)`` (DACS, DAFormer); false = constant."""
    threshold: float = Field(0.968, ge=0, le=1)
    """Confidence threshold of the pseudo-labels (DACS and DAFormer: 0.968; FixMatch: 0.95)."""
    confidence: Literal["ignore", "weight", "both"] = "weight"
    """Target pixel weights: ``ignore`` (0 below ``threshold``), ``weight`` (all = kept fraction, DACS) or ``both``."""
    unlabelled_weight: float = Field(1.0, ge=0)
    """Weight of the loss on the mixed (or strong-view) images."""
    strong: StrongConfig = Field(default_factory=_dacs_strong)
    """Photometric augmentation of those images, keys as ``augment.strong`` (default: DACS's jitter and blur)."""
    eval_teacher: bool = False
    """Evaluate (and keep as best) the EMA teacher instead of the student."""
    adversarial: Optional[OutputAdversarialConfig] = None
    """AdaptSegNet's single-level output-space adversarial term on the student's target predictions; null = off."""
    masking: Optional[MaskingConfig] = None
    """MIC's masked image consistency on the target images (``{weight: 1.0, patch: 64, ratio: 0.7, augment: true}``);
    null = off."""
    pseudo_ignore: Optional[PseudoIgnoreConfig] = None
    """DAFormer's pseudo-label crop ``{top: 15, bottom: 120}``: zero target weights in those rows; null = none."""


def confidence_weights(confidence: torch.Tensor, threshold: float, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel weights BxHxW of target pixels from teacher confidences (module docstring, step 4), and the kept
    fraction ``q`` (0-dim tensor, no host sync)."""
    kept = confidence >= threshold
    q = kept.float().mean()
    if mode == "ignore":
        return kept.float(), q
    if mode == "weight":
        return q.expand_as(confidence), q
    return kept.float() * q, q


def ignore_rows(weights: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """BxHxW ``weights`` with rows ``[0, top)`` and ``[H - bottom, H)`` set to 0 (a new tensor; no host sync)."""
    rows = torch.arange(weights.shape[-2], device=weights.device)
    keep = (rows >= top) & (rows < weights.shape[-2] - bottom)
    return weights * keep.view(-1, 1).to(weights.dtype)


def target_pseudo_labels(logits: torch.Tensor, target: Batch, options: Any,
                         ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(pseudo-labels ``y``, weights ``w``, logged scalars) of the weak target images from a teacher's ``logits``
    of them: ``c = max softmax``, ``y = argmax`` at the images' resolution; ``w`` per ``options.threshold`` and
    ``options.confidence`` (``confidence_weights``), zero in the ``options.pseudo_ignore`` rows and, with
    ``data.target.augment.pseudo_margins``, outside the batch's ``pseudo_valid`` map. No gradient, no host sync."""
    with torch.no_grad():
        probs = segmentation.upsample_to(logits.detach().float(), target["image"].shape[-2:]).softmax(1)
        confidence, pseudo = probs.max(1)
        weights, kept = confidence_weights(confidence, options.threshold, options.confidence)
        rows = options.pseudo_ignore
        if rows is not None and (rows.top or rows.bottom):
            weights = ignore_rows(weights, rows.top, rows.bottom)
        if "pseudo_valid" in target:  # data.target.augment.pseudo_margins, carried through the crop
            weights = weights * target["pseudo_valid"]
    return pseudo, weights, {"pseudo_confidence": confidence.mean(), "pseudo_kept": kept}


def weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_p w_p CE_p / P`` over all pixels P of BxHxW ``labels`` (255 counts 0); logits upsampled to labels."""
    logits = segmentation.upsample_to(logits, labels.shape[-2:]).float()
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    return (ce * weights).mean()


class TeacherStudent(Method):
    """A student ``self.model`` and, when ``options.momentum`` is set up by the subclass, its EMA teacher
    ``self.ema`` (``dasuite.models.ema``): created in ``setup``, moved after every optimizer step, checkpointed,
    and evaluated instead of the student with ``options.eval_teacher``."""

    uses_ema: bool = True

    def __init__(self, cfg: "ExperimentConfig", num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.options = cfg.method
        self.ema: Optional["EMATeacher"] = None

    def setup(self, accelerator: "Accelerator") -> None:
        super().setup(accelerator)
        if self.uses_ema:
            student = accelerator.unwrap_model(self.model)
            self.ema = ema.EMATeacher(student, self.options.momentum, self.options.momentum_ramp)

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The EMA teacher's logits of normalised images (no gradient, the run's autocast)."""
        with torch.no_grad(), self.accelerator.autocast():
            return self.ema.module(images)

    def momentum_log(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"ema_momentum": m}`` as a 0-dim tensor on ``like``'s device (no host-to-device copy), or ``{}``."""
        if self.ema is None:
            return {}
        return {"ema_momentum": torch.full((), self.ema.current_momentum(), device=like.device)}

    def on_step_end(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update(self.accelerator.unwrap_model(self.model))

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None and self.options.eval_teacher else self.model

    def eval_model_name(self) -> str:
        return "teacher" if self.ema is not None and self.options.eval_teacher else "student"

    def state_dict(self) -> dict[str, Any]:
        return {} if self.ema is None else {"teacher": self.ema.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state["teacher"])


@METHODS.register("mean_teacher", config=MeanTeacherConfig)
class MeanTeacher(TeacherStudent):
    """Student ``self.model`` (trained), EMA teacher ``self.ema.module``; losses as in the module docstring."""

    domains = ("source", "target")
    shared_source_losses = True
    loss_terms = (
        FEATURE_DISTANCE_TERM,
        LossTerm("unlabelled", "unlabelled_weight", on=1.0),
        LossTerm("adversarial", "adversarial.weight", on=1.0, context={"method.adversarial": {"ndf": 8}}),
        LossTerm("masked", "masking.weight", on=1.0),
    )
    # threshold 0: an untrained teacher's pseudo-labels all count, so the target terms carry gradient in 2 steps
    toy_overrides = {"method.mixing": "cutmix", "method.threshold": 0.0, "method.masking": {"patch": 8},
                     "method.pseudo_ignore": {"top": 2, "bottom": 6}}

    def __init__(self, cfg: "ExperimentConfig", num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.options: MeanTeacherConfig = cfg.method
        self.strong = DeviceAugment(AugmentConfig(strong=self.options.strong))
        adv = self.options.adversarial
        self.adversary = None if adv is None else OutputAdversary.from_config(adv, num_classes, cfg.train.max_iters)

    def setup(self, accelerator: "Accelerator") -> None:
        super().setup(accelerator)
        if self.adversary is not None:
            self.adversary.prepare(accelerator)

    def target_pseudo_labels(self, target: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(pseudo-labels ``y``, target weights ``w`` with ``pseudo_ignore`` applied, logged scalars) of the weak
        target images: one teacher forward, shared by the unlabelled and the masked loss."""
        return target_pseudo_labels(self.teacher_logits(target["image"]), target, self.options)

    def unlabelled_batch(self, source: Batch, target: Batch,
                         pseudo: Optional[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(strong mixed images, mixed labels, per-pixel weights, logged scalars) per the module docstring;
        ``pseudo``: ``target_pseudo_labels(target)`` when already computed."""
        labels, weights, log = pseudo if pseudo is not None else self.target_pseudo_labels(target)
        images = target["image"]
        if self.options.variant == "mix":
            if source["image"].shape != target["image"].shape:
                raise DasuiteError(f"mean_teacher mixes source and target crops, which must have one size; got "
                                   f"{tuple(source['image'].shape)} and {tuple(target['image'].shape)}: set the same "
                                   f"data.source.augment.crop and data.target.augment.crop (and train.batch_size)")
            b, _, h, w = images.shape
            if self.options.mixing == "classmix":
                mask = data_mix.classmix_masks(source["label"], self.num_classes)
            else:
                c = self.options.cutmix
                mask = data_mix.cutmix_masks(b, h, w, images.device, c.area, c.aspect, c.p)
            images = data_mix.mix(mask, source["image"], images)
            labels = data_mix.mix(mask, source["label"], labels)
            weights = data_mix.mix(mask, torch.ones_like(weights), weights)
        return self.strong.photometric(images), labels, weights, log

    def masked_images(self, images: torch.Tensor) -> torch.Tensor:
        """MIC's input (step 6): ``strong`` (its own draw) when ``masking.augment``, then a block mask."""
        m = self.options.masking
        with torch.no_grad():
            images = self.strong.photometric(images) if m.augment else images
            return data_masking.mask_images(images, m.patch, m.ratio)

    def training_step(self, batches: dict[str, Batch], step: int) -> dict[str, torch.Tensor]:
        source, target = batches["source"], batches["target"]
        source_logits, source_terms = self.source_losses(source)
        loss_seg = sum(source_terms.values())
        pseudo, pseudo_weights, log = self.target_pseudo_labels(target)
        images, labels, weights, log = self.unlabelled_batch(source, target, (pseudo, pseudo_weights, log))
        loss_u = multires.multires_loss(weighted_ce, self.model(images), labels, weights)
        total = loss_seg + self.options.unlabelled_weight * loss_u
        out: dict[str, torch.Tensor] = {}
        if self.adversary is not None:  # step 5: the student on the weak target images, source maps reused
            total, out = self.adversary.add_losses(
                total, {"main": multires.fused_logits(source_logits)},
                {"main": multires.fused_logits(self.model(target["image"]))}, source["image"].shape[-2:],
                target["image"].shape[-2:], {"main": self.options.adversarial.weight})
        if self.options.masking is not None:  # step 6: masked target images, the target's own pseudo-labels
            masked = self.model(self.masked_images(target["image"]))
            loss_masked = multires.multires_loss(weighted_ce, masked, pseudo, pseudo_weights)
            total = total + self.options.masking.weight * loss_masked
            out["loss_masked"] = loss_masked.detach()
        return {"loss": total, **{k: v.detach() for k, v in source_terms.items()}, "loss_unlabelled": loss_u.detach(),
                **{k: v.detach() for k, v in log.items()}, **self.momentum_log(loss_seg), **out}

    def on_step_end(self, step: int) -> None:
        super().on_step_end(step)
        if self.adversary is not None:
            self.adversary.step()

    def trainable_modules(self) -> dict[str, nn.Module]:
        modules = super().trainable_modules()
        return modules if self.adversary is None else {**modules, "discriminators": self.adversary.modules}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.adversary is not None:
            state["adversary"] = self.adversary.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.adversary is not None:
            if "adversary" not in state:
                raise DasuiteError("the checkpoint has no method.adversarial state (it was trained without the "
                                   "adversarial block): resume it without method.adversarial, or start a new run")
            self.adversary.load_state_dict(state["adversary"])
