"""``adaptsegnet``: output-space adversarial adaptation (Tsai et al., "Learning to Adapt Structured Output Space for
Semantic Segmentation", CVPR 2018).

Each step, with labelled ``source`` (s) and unlabelled ``target`` (t) batches and output levels ``l`` in
``levels`` (``main``: the model's logits; ``aux``: DeepLabV2 multi-level's layer3 classifier, read from
``model(x, return_features=True)[1]["aux_logits"]``):

- ``P_l = softmax(upsample(logits_l, input crop size))``, bilinear, in float32: the maps are resized to the input
  size first and the softmax is taken there, as AdaptSegNet does (``interp`` then ``F.softmax``);
- segmentation: ``loss_seg = CE(main_s, y_s)`` and, with ``aux``, ``loss_seg_aux = CE(aux_s, y_s)`` (plus
  ``loss_fd`` with the experiment's ``feature_distance``, ``dasuite.methods.feature_distance``);
- adversarial (the segmenter's step): ``loss_adv_l = gan(D_l(P_l(t)), real)``, D's parameters detached, i.e.
  target predictions should look like source ("real") ones;
- discriminators (their own step, inputs detached): ``loss_d_l = (gan(D_l(P_l(s)), real) + gan(D_l(P_l(t)),
  fake)) / 2`` (AdaptSegNet halves each term);
- ``loss = loss_seg + seg_weight_aux * loss_seg_aux + sum_l adv_weight_l * loss_adv_l + sum_l loss_d_l``.

``gan`` is BCE with logits (``vanilla``) or MSE (``lsgan``), see ``dasuite.losses.gan``. AdaptSegNet labels source 0
and target 1; dasuite uses source = real = 1, which is the same objective with the labels swapped (both losses are
symmetric under it). One ``OutputSpaceDiscriminator`` per level with its own Adam and poly schedule
(``dasuite.methods.adversary``: one backward, D stepped in ``on_step_end``). The per-level adversarial part lives in
``dasuite.methods.output_adversarial`` (``OutputAdversary``), shared with ``advent`` and ``mean_teacher``'s
``adversarial:`` block; the levels and the source loss in ``dasuite.methods.multilevel``. With ``levels: [main]``
this is AdaptSegNet's single-level model: segmentation loss plus an adversarial loss on the predictions.

``target_bn``: ``train`` (AdaptSegNet) runs the target batch through BatchNorm in train mode, so target batches
normalise with their own statistics and move the running statistics (AdaptSegNet issue #25: even with a zero
adversarial weight this adapts BN). ``eval`` switches every BatchNorm of the segmenter to eval mode for the target
forward (running statistics used and left unchanged; the gradient still flows). Frozen BN (DeepLabV2
``freeze_bn: true``, the default) behaves the same either way. Logged besides the losses: ``d_<level>_source`` and
``d_<level>_target`` (D's mean probability of "source"; for lsgan its mean output) and ``lr_d_<level>``.
See docs/adaptsegnet.md.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

from pydantic import Field, field_validator

from dasuite.lazy import lazy_import
from dasuite.methods.adversary import AdversaryOptimConfig
from dasuite.methods.base import FEATURE_DISTANCE_TERM, METHODS, Batch, LossTerm
from dasuite.methods.multilevel import MULTI_LEVEL_TOY, Level, LevelWeights, MultiLevelMethod, check_levels
from dasuite.methods.output_adversarial import OutputAdversary, output_probabilities
from dasuite.schema_base import Section

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from dasuite.config.schema import ExperimentConfig

torch = lazy_import("torch")

class AdaptSegNetConfig(Section):
    """``method: {name: adaptsegnet, ...}``; defaults are AdaptSegNet's multi-level vanilla-GAN setting. Its LS-GAN
    variant used larger adversarial weights (0.01 main, 0.002 aux): set ``adv_weight`` with ``objective: lsgan``."""

    name: Literal["adaptsegnet"] = "adaptsegnet"
    """Selects this method (``dasuite list methods``)."""
    objective: Literal["vanilla", "lsgan"] = "vanilla"
    """GAN loss: ``vanilla`` (BCE with logits) or ``lsgan`` (least squares)."""
    levels: list[Level] = Field(default_factory=lambda: ["main", "aux"])
    """Output levels with a discriminator: ``[main, aux]`` (multi-level DeepLabV2) or ``[main]`` (any segmenter)."""
    adv_weight: LevelWeights = Field(default_factory=LevelWeights)
    """Adversarial weight per level (AdaptSegNet and ADVENT: 0.001 / 0.0002; AdaptSegNet's LS-GAN: 0.01 / 0.002)."""
    seg_weight_aux: float = Field(0.1, ge=0)
    """Weight of the ``aux`` level's source cross-entropy (AdaptSegNet and ADVENT: 0.1)."""
    ndf: int = Field(64, gt=0)
    """Discriminator width (channels ndf, 2ndf, 4ndf, 8ndf)."""
    discriminator: AdversaryOptimConfig = Field(default_factory=AdversaryOptimConfig)
    """The discriminators' Adam and schedule (AdaptSegNet's: lr 1e-4, poly 0.9)."""
    target_bn: Literal["train", "eval"] = "train"
    """BatchNorm of the target forward: ``train`` (AdaptSegNet; target statistics, running statistics updated) or
    ``eval`` (running statistics kept)."""

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[str]) -> list[str]:
        return check_levels(v)


@contextlib.contextmanager
def batchnorm_eval(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block every BatchNorm of ``model`` is in eval mode (running statistics, no update); restored after."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    norms = norms if enabled else []
    for m in norms:
        m.train(False)
    try:
        yield
    finally:
        for m in norms:
            m.train(True)


@METHODS.register("adaptsegnet", config=AdaptSegNetConfig)
class AdaptSegNet(MultiLevelMethod):
    """Segmenter ``self.model`` (trained by the engine) and ``self.adversary`` (one discriminator per level)."""

    domains = ("source", "target")
    find_unused_parameters = True  # a multi-level model trained with levels [main] leaves its aux head unused
    loss_terms = (
        LossTerm("adversarial", "adv_weight.main", on=1.0, reaches=("model",)),
        LossTerm("adversarial_aux", "adv_weight.aux", on=1.0, reaches=("model",), context=MULTI_LEVEL_TOY),
        LossTerm("seg_aux", "seg_weight_aux", on=1.0, reaches=("model",), context=MULTI_LEVEL_TOY),
        FEATURE_DISTANCE_TERM,
    )
    toy_overrides = {"method.levels": ["main"], "method.ndf": 8}
    #: what the discriminators see of a level's logits (ADVENT overrides it)
    maps: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] = staticmethod(output_probabilities)

    def __init__(self, cfg: "ExperimentConfig", num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.options: AdaptSegNetConfig = cfg.method
        self.adversary = OutputAdversary(num_classes, self.levels, self.options.objective, self.options.ndf,
                                         self.options.discriminator, cfg.train.max_iters, maps=self.maps)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {**super().trainable_modules(), "discriminators": self.adversary.modules}

    def setup(self, accelerator: "Accelerator") -> None:
        super().setup(accelerator)
        self.adversary.prepare(accelerator)

    def training_step(self, batches: dict[str, Batch], step: int) -> dict[str, torch.Tensor]:
        source, target = batches["source"], batches["target"]
        opts = self.options
        src, total, out = self.source_levels(source)
        with batchnorm_eval(self.model, opts.target_bn == "eval"):
            tgt = self.predict(target["image"])
        weights = {lvl: getattr(opts.adv_weight, lvl) for lvl in self.levels}
        total, adv = self.adversary.add_losses(total, src, tgt, source["image"].shape[-2:], target["image"].shape[-2:],
                                               weights)
        return {"loss": total, **out, **adv}

    def on_step_end(self, step: int) -> None:
        self.adversary.step()

    def state_dict(self) -> dict[str, Any]:
        return {"adversary": self.adversary.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adversary.load_state_dict(state["adversary"])
