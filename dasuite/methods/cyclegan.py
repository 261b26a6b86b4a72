"""``cyclegan``: unpaired image translation source <-> target (Zhu et al. ICCV'17), optionally with CyCADA's
semantic consistency (Hoffman et al. ICML'18). It trains no segmenter: ``dasuite translate`` then writes the
translated source set ("cycleGTA") that segmentation experiments train on (docs/cyclegan.md, docs/translate.md).

Networks (``dasuite.models.gan``): ``G_st`` / ``G_ts`` = ``self.model["source_to_target"|"target_to_source"]``
(``build_generators``; trained by the engine's optimizer, saved as ``last.pt["model"]``), PatchGAN ``D_t``
(target: real target vs ``G_st(x_s)``) and ``D_s`` (source: real source vs ``G_ts(x_t)``) in a shared
``Adversary`` (own Adam + schedule). Images: the engine's ImageNet-normalised batches become ``x`` in [-1, 1].
Per step, with ``L_gan`` the ``objective`` (LSGAN: ``mean((D(x) - 1)^2)`` real, ``mean(D(x)^2)`` fake), one
backward of::

    loss = L_gan(D_t(G_st(x_s)), real) + L_gan(D_s(G_ts(x_t)), real)                        loss_adv (D frozen)
         + cycle_weight * (|G_ts(G_st(x_s)) - x_s|_1 + |G_st(G_ts(x_t)) - x_t|_1)           loss_cycle
         + cycle_weight * identity_weight * (|G_st(x_t) - x_t|_1 + |G_ts(x_s) - x_s|_1)     loss_identity
         + semantic.weight * loss_semantic                                                   (optional)
         + 0.5 (L_gan(D_t(x_t), real) + L_gan(D_t(pool_t(G_st(x_s))), fake))               loss_d_target (D only)
         + 0.5 (L_gan(D_s(x_s), real) + L_gan(D_s(pool_s(G_ts(x_t))), fake))               loss_d_source (D only)

(``|.|_1`` = mean absolute error); ``on_step_end`` steps the discriminators. ``loss_cycle``, ``loss_identity`` and
``loss_semantic`` are logged unweighted. Semantic consistency with a frozen source-trained segmenter ``f`` (loaded
like the KD teacher, ``dasuite.models.frozen.build_frozen_model``): ``CE(f(G_st(x_s)), y_s)`` with ``y_s = argmax
f(x_s)`` (``labels: segmenter``, CyCADA's formulation) or the source ground truth (``labels: ground_truth``, as
TLlib's CyCADA), plus with ``target_direction`` ``CE(f(G_ts(x_t)), argmax f(x_t))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field

from dasuite.data.augment import denormalize_float, normalize
from dasuite.errors import DasuiteError
from dasuite.lazy import lazy_import
from dasuite.losses.gan import GANObjective
from dasuite.methods.adversary import Adversary, AdversaryOptimConfig
from dasuite.methods.base import METHODS, Batch, LossTerm, Method
from dasuite.models.frozen import FrozenModelConfig, build_frozen_model
from dasuite.schedule import ScheduleConfig
from dasuite.schema_base import Section

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from dasuite.config.schema import ExperimentConfig
    from dasuite.models.gan import CycleGenerators

torch = lazy_import("torch")
gan = lazy_import("dasuite.models.gan")
segmentation = lazy_import("dasuite.losses.segmentation")

#: A tiny frozen segmenter for the semantic term in the contract test (created there when absent).
TOY_SEGMENTER = {"checkpoint": "{work_dir}/toy_frozen_segformer_b0.safetensors", "arch": "segformer_b0", "tiny": True}


def _cyclegan_d_optim() -> AdversaryOptimConfig:
    return AdversaryOptimConfig(lr=2e-4, betas=(0.5, 0.999), schedule=ScheduleConfig(name="linear", decay_start=0.5))


class SemanticConfig(Section):
    """CyCADA's semantic consistency: a frozen source-trained segmenter must give a translated image the labels of
    the original; ``segmenter`` is given like ``distill``'s ``teacher`` (``run`` directory, ``checkpoint`` +
    ``arch``, or ``pretrained`` + ``arch``)."""

    segmenter: FrozenModelConfig
    """The frozen source-trained segmenter, given like ``distill``'s ``teacher``."""
    weight: float = Field(1.0, ge=0)
    """Weight of the semantic-consistency loss (TLlib's CyCADA: 1)."""
    labels: Literal["segmenter", "ground_truth"] = "segmenter"
    """Source labels to keep: ``segmenter`` (its argmax on the original, CyCADA) or ``ground_truth`` (as TLlib)."""
    target_direction: bool = True
    """Also keep the segmenter's labels of target images translated to the source style."""


class CycleGANConfig(Section):
    """``method: {name: cyclegan, ...}``; defaults are CycleGAN's (docs/cyclegan.md lists every key).
    ``identity_weight`` is relative to ``cycle_weight`` (CycleGAN's ``lambda_identity``); ``discriminator`` is
    both discriminators' Adam and schedule; ``vis_interval`` (iterations, 0 = off) logs image grids."""

    name: Literal["cyclegan"] = "cyclegan"
    """Selects this method (``dasuite list methods``)."""
    ngf: int = Field(64, gt=0)
    """Generator width (channels of its first layer)."""
    n_blocks: int = Field(9, ge=0)
    """Residual blocks per generator (CycleGAN: 9 for 256x256 crops, 6 for 128x128)."""
    ndf: int = Field(64, gt=0)
    """Discriminator width (channels of its first layer)."""
    n_layers: int = Field(3, ge=1)
    """PatchGAN depth (3 = each output judges a 70x70 patch)."""
    objective: GANObjective = "lsgan"
    """GAN loss: ``lsgan`` (least squares, CycleGAN's) or ``vanilla`` (BCE with logits)."""
    cycle_weight: float = Field(10.0, ge=0)
    """Weight of the cycle-consistency L1 loss (CycleGAN's lambda_A = lambda_B)."""
    identity_weight: float = Field(0.5, ge=0)
    """Weight of the identity L1 loss relative to ``cycle_weight`` (CycleGAN's lambda_identity); 0 = off."""
    pool_size: int = Field(50, ge=0)
    """Translated images in each discriminator's history pool; 0 = no pool."""
    discriminator: AdversaryOptimConfig = Field(default_factory=_cyclegan_d_optim)
    """Both discriminators' Adam and schedule (CycleGAN's: lr 2e-4, betas 0.5 / 0.999, linear decay from half-way)."""
    vis_interval: int = Field(500, ge=0)
    """Iterations between TensorBoard grids of real / translated / reconstructed images; 0 = off."""
    semantic: Optional[SemanticConfig] = None
    """CyCADA's semantic consistency (Hoffman et al., ICML'18); null = off."""


def build_generators(cfg: CycleGANConfig) -> "CycleGenerators":
    """The two ResNet generators (CycleGAN init) as an ``nn.ModuleDict`` keyed ``source_to_target`` and
    ``target_to_source``; ``last.pt["model"]`` of a cyclegan run loads into it."""
    return gan.CycleGenerators({name: gan.init_weights(gan.ResnetGenerator(3, 3, cfg.ngf, cfg.n_blocks))
                                for name in ("source_to_target", "target_to_source")})


def to_tanh_range(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised Bx3xHxW -> [-1, 1] (the generators' range): ``2 x - 1`` of the [0, 1] image."""
    return denormalize_float(images) * 2 - 1


def from_tanh_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] Bx3xHxW -> ImageNet-normalised (differentiable, for a segmenter)."""
    return normalize((images + 1) * 127.5)


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in float32."""
    return (a.float() - b.float()).abs().mean()


@METHODS.register("cyclegan", config=CycleGANConfig)
class CycleGAN(Method):
    """Generators ``self.model`` (engine-trained), discriminators ``self.adversary``, pools per discriminator."""

    domains = ("source", "target")
    evaluates = False
    loss_terms = (
        LossTerm("cycle", "cycle_weight", on=10.0),
        LossTerm("identity", "identity_weight", on=0.5),
        LossTerm("semantic", "semantic", on={"segmenter": TOY_SEGMENTER, "weight": 1.0}, off=None),
    )
    toy_overrides = {"method.ngf": 4, "method.n_blocks": 1, "method.ndf": 4, "method.pool_size": 0,
                     "method.vis_interval": 0}

    def __init__(self, cfg: "ExperimentConfig", num_classes: int) -> None:  # no segmenter: Method.__init__ not used
        self.cfg = cfg
        self.num_classes = num_classes
        self.refuse_unused_shared_sections(cfg)
        self.options: CycleGANConfig = cfg.method
        o = self.options
        self.model: nn.Module = build_generators(o)
        discriminators = {name: gan.init_weights(gan.PatchDiscriminator(3, o.ndf, o.n_layers))
                          for name in ("target", "source")}
        self.adversary = Adversary(discriminators, o.objective, o.discriminator, cfg.train.max_iters)
        self.pools = {name: gan.ImagePool(o.pool_size) for name in ("target", "source")}
        self.segmenter: Optional[nn.Module] = None
        self.segmenter_source: Optional[str] = None
        if o.semantic is not None and o.semantic.weight > 0:
            self.segmenter, self.segmenter_source = build_frozen_model(o.semantic.segmenter, cfg, num_classes,
                                                                                 "method.semantic.segmenter")
        self._last_vis = -1

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "discriminators": self.adversary.modules}

    def setup(self, accelerator: "Accelerator") -> None:
        super().setup(accelerator)
        self.adversary.prepare(accelerator)
        if self.segmenter is not None:
            self.segmenter.to(accelerator.device)

    def training_step(self, batches: dict[str, Batch], step: int) -> dict[str, torch.Tensor]:
        real_s, real_t = to_tanh_range(batches["source"]["image"]), to_tanh_range(batches["target"]["image"])
        out = self.model(real_s, real_t, identity=self.options.cycle_weight * self.options.identity_weight > 0)
        total_g, losses = self.generator_losses(batches, real_s, real_t, out)
        total_d, losses_d = self.discriminator_losses(real_s, real_t, out)
        self._visualise(step, real_s, real_t, out)
        return {"loss": total_g + total_d, **{k: v.detach() for k, v in {**losses, **losses_d}.items()},
                **{f"d_{k}": v for k, v in self.adversary.verdicts.items()}, **self.adversary.lrs()}

    def generator_losses(self, batches: dict[str, Batch], real_s: torch.Tensor, real_t: torch.Tensor,
                         out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generators' weighted total and its unweighted terms (module docstring); no gradient reaches D."""
        o, adv = self.options, self.adversary
        fake_t, fake_s = out["fake_target"], out["fake_source"]
        losses = {"loss_adv": adv.generator_loss("target", fake_t) + adv.generator_loss("source", fake_s),
                  "loss_cycle": l1(out["rec_source"], real_s) + l1(out["rec_target"], real_t)}
        total = losses["loss_adv"] + o.cycle_weight * losses["loss_cycle"]
        if "idt_source" in out:
            losses["loss_identity"] = l1(out["idt_source"], real_s) + l1(out["idt_target"], real_t)
            total = total + o.cycle_weight * o.identity_weight * losses["loss_identity"]
        if self.segmenter is not None:
            losses["loss_semantic"] = self.semantic_loss(batches, fake_t, fake_s)
            total = total + o.semantic.weight * losses["loss_semantic"]
        return total, losses

    def discriminator_losses(self, real_s: torch.Tensor, real_t: torch.Tensor,
                             out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``0.5 (real + pooled fake)`` per discriminator and their sum; the gradient reaches only D."""
        losses = {}
        for name, real, fake in (("target", real_t, out["fake_target"]), ("source", real_s, out["fake_source"])):
            losses[f"loss_d_{name}"] = 0.5 * (self.adversary.discriminator_loss(name, real, True) +
                                              self.adversary.discriminator_loss(name, self.pools[name].query(fake),
                                                                                False))
        return losses["loss_d_target"] + losses["loss_d_source"], losses

    def semantic_loss(self, batches: dict[str, Batch], fake_t: torch.Tensor, fake_s: torch.Tensor) -> torch.Tensor:
        """CE of the frozen segmenter on the translated images against the labels of the originals (module
        docstring); the gradient reaches the generators through the segmenter."""
        s = self.options.semantic
        source = batches["source"]
        pairs = [(source["image"], fake_t, source.get("label") if s.labels == "ground_truth" else None)]
        if s.labels == "ground_truth" and pairs[0][2] is None:
            raise DasuiteError("method.semantic.labels: ground_truth needs labelled data.source batches; use "
                               "labels: segmenter for unlabelled source images")
        if s.target_direction:
            pairs.append((batches["target"]["image"], fake_s, None))
        total = torch.zeros((), device=fake_t.device)
        for original, translated, labels in pairs:
            with self.accelerator.autocast():
                if labels is None:  # the segmenter's own prediction on the original, at full crop resolution
                    with torch.no_grad():
                        labels = segmentation.upsample_to(self.segmenter(original).float(),
                                                          original.shape[-2:]).argmax(1)
                logits = self.segmenter(from_tanh_range(translated))
            total = total + segmentation.seg_loss(logits, labels)
        return total

    def _visualise(self, step: int, real_s: torch.Tensor, real_t: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        """Every ``vis_interval`` iterations: TensorBoard grids, rows of real | translated | reconstructed."""
        acc, n = self.accelerator, min(real_s.shape[0], self.cfg.log.num_vis_images)
        due = self.options.vis_interval and (step + 1) % self.options.vis_interval == 0 and step != self._last_vis
        if not (due and n and self.cfg.log.tensorboard and acc.is_main_process and acc.trackers):
            return
        self._last_vis = step
        writer = acc.get_tracker("tensorboard", unwrap=True)
        for name, cols in (("source", (real_s, out["fake_target"], out["rec_source"])),
                           ("target", (real_t, out["fake_source"], out["rec_target"]))):
            rows = torch.cat([torch.cat([c[i] for c in cols], dim=2) for i in range(n)], dim=1)
            grid = ((rows.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()
            writer.add_image(f"cyclegan/{name}_real_translated_reconstructed", grid, step + 1)

    def on_step_end(self, step: int) -> None:
        self.adversary.step()

    def state_dict(self) -> dict[str, Any]:
        """Discriminators with their optimizer and schedule, and both image pools (the generators are ``model``)."""
        return {"adversary": self.adversary.state_dict(),
                "pools": {name: pool.state_dict() for name, pool in self.pools.items()},
                "segmenter_source": self.segmenter_source}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adversary.load_state_dict(state["adversary"])
        for name, pool in self.pools.items():
            pool.load_state_dict(state["pools"][name], self.accelerator.device)
