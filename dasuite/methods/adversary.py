"""Discriminators trained in the same backward as the main network, with their own optimizer and schedule.

Shared by the adversarial methods (``adaptsegnet``, ``cyclegan``). Per iteration a method returns
``loss = main losses + adversarial terms (generator_loss) + discriminator terms (discriminator_loss)``; the engine
backpropagates it once (gradient accumulation and loss scaling included) and steps the main optimizer, whose
parameters never include a discriminator's; ``on_step_end`` then calls ``Adversary.step()``. This is the
alternation of AdaptSegNet / CycleGAN in one backward:

- ``generator_loss`` runs D with its parameters detached (``torch.func.functional_call``): the gradient reaches the
  input (segmenter / generator) and never D, so the main network's adversarial step does not train D;
- ``discriminator_loss`` runs D on the detached input: the gradient reaches only D;
- ``step`` applies D's accumulated gradient with D's Adam, then zeroes it and advances D's schedule.

With gradient accumulation D's gradients accumulate over the micro-batches like the main network's (Accelerate
divides the loss by the number of micro-batches). Under multi-process DDP each discriminator is its own prepared
(wrapped) module; its gradients are averaged on every micro-batch (it is outside the engine's ``accumulate``).

Mixed precision: D's optimizer is deliberately NOT passed to ``accelerator.prepare``. A prepared optimizer steps the
GradScaler and calls ``scaler.update()``; two prepared optimizers sharing Accelerate's one scaler would unscale D's
gradients with a scale the main optimizer's update may already have changed (halved after an overflow, doubled on
growth). Instead ``discriminator_loss`` records the loss scale in use (``scaler.scale(1)``, a device tensor, no host
sync) and ``step`` divides D's gradients by it, skipping the step when any is non-finite (one host sync per
iteration, fp16 only, as GradScaler itself does). bf16 and fp32 use no scaler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from pydantic import Field, field_validator

from dasuite.errors import ConfigError
from dasuite.lazy import lazy_import
from dasuite.losses.gan import GAN_OBJECTIVES, gan_loss
from dasuite.schedule import ScheduleConfig, build_scheduler
from dasuite.schema_base import Section

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

torch = lazy_import("torch")


def _poly_09() -> ScheduleConfig:
    return ScheduleConfig(name="poly", power=0.9)


class AdversaryOptimConfig(Section):
    """The discriminators' Adam optimizer and iteration-based schedule (over ``train.max_iters``); defaults are
    AdaptSegNet's: lr 1e-4, betas (0.9, 0.99), no weight decay, poly power 0.9."""

    lr: float = Field(1e-4, gt=0)
    """Adam learning rate of the discriminators."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam's (beta1, beta2)."""
    weight_decay: float = Field(0.0, ge=0)
    """Adam (L2) weight decay."""
    schedule: ScheduleConfig = Field(default_factory=_poly_09)
    """The discriminators' learning-rate schedule over ``train.max_iters`` (keys of the top-level ``schedule``)."""

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"expected two numbers in [0, 1), got {list(v)}")
        return v


class Adversary:
    """Named discriminators ``modules`` (an ``nn.ModuleDict``; prepared, i.e. possibly DDP-wrapped, after
    ``prepare``), their Adam ``optimizer`` (one parameter group per discriminator, named after it) and LambdaLR
    ``scheduler``. See the module docstring for the training scheme."""

    def __init__(self, discriminators: dict[str, nn.Module], objective: str, optim: AdversaryOptimConfig,
                 max_iters: int) -> None:
        if objective not in GAN_OBJECTIVES:
            raise ConfigError(f"GAN objective must be one of {', '.join(GAN_OBJECTIVES)}, got {objective!r}")
        if not discriminators:
            raise ConfigError("an adversarial method needs at least one discriminator")
        self.modules = torch.nn.ModuleDict(discriminators)
        self.objective = objective
        self.optim_cfg = optim
        self.max_iters = max_iters
        self.accelerator: Optional["Accelerator"] = None
        self._loss_scale: Optional[torch.Tensor] = None
        #: D's mean verdict from the latest ``discriminator_loss`` calls (see ``verdict``), e.g. ``main_real``.
        self.verdicts: dict[str, torch.Tensor] = {}
        self._build_optimizer()

    def _build_optimizer(self) -> None:
        """Adam over the (unwrapped) discriminators' parameters, one group per discriminator, and its LambdaLR."""
        cfg = self.optim_cfg
        groups = [{"params": list(self.unwrapped(name).parameters()), "lr": cfg.lr, "initial_lr": cfg.lr,
                   "group": name} for name in self.modules]
        self.optimizer = torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.max_iters)

    def prepare(self, accelerator: "Accelerator") -> None:
        """Place (and, multi-process, wrap) each discriminator with ``accelerator.prepare``, then (re)build the
        optimizer and schedule on the placed parameters; the optimizer is not prepared (module docstring, mixed
        precision). Call it before any step or ``load_state_dict``."""
        self.accelerator = accelerator
        names = list(self.modules)
        prepared = accelerator.prepare(*self.modules.values())
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        self.modules = torch.nn.ModuleDict(dict(zip(names, prepared)))
        self._build_optimizer()

    def unwrapped(self, name: str) -> nn.Module:
        """Discriminator ``name`` without its DDP wrapper."""
        module = self.modules[name]
        return self.accelerator.unwrap_model(module) if self.accelerator is not None else module

    def generator_loss(self, name: str, x: torch.Tensor, real: bool = True) -> torch.Tensor:
        """``gan_loss(D_name(x), real)`` with D's parameters detached: the gradient reaches ``x`` only."""
        module = self.unwrapped(name)
        params = {k: p.detach() for k, p in module.named_parameters()}
        return gan_loss(torch.func.functional_call(module, params, (x,)), real, self.objective)

    def discriminator_loss(self, name: str, x: torch.Tensor, real: bool) -> torch.Tensor:
        """``gan_loss(D_name(x.detach()), real)``: the gradient reaches D only. Also records D's mean verdict on
        ``x`` in ``verdicts["<name>_real"|"<name>_fake"]`` (keyed by ``real``) for logging."""
        self._record_loss_scale(x.device)
        out = self.modules[name](x.detach())
        self.verdicts[f"{name}_{'real' if real else 'fake'}"] = self.verdict(out)
        return gan_loss(out, real, self.objective)

    def verdict(self, out: torch.Tensor) -> torch.Tensor:
        """D's mean "real" score of output ``out`` (detached, 0-dim): ``mean(sigmoid(z))``, the probability, for
        ``vanilla``; ``mean(z)`` for ``lsgan`` (regressed towards 1 = real, 0 = fake)."""
        out = out.detach().float()
        return out.sigmoid().mean() if self.objective == "vanilla" else out.mean()

    def _record_loss_scale(self, device: torch.device) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            self._loss_scale = scaler.scale(torch.ones((), device=device))

    def step(self) -> None:
        """One Adam step on D's accumulated gradients (unscaled under fp16), zero them, advance the schedule."""
        if self._loss_scale is None:
            self.optimizer.step()
        else:
            grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            inv = self._loss_scale.float().reciprocal()  # a power of two: exact
            finite = torch.ones((), dtype=torch.bool, device=inv.device)
            for grad in grads:
                grad.mul_(inv)
                finite &= torch.isfinite(grad).all()
            if bool(finite):
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def lrs(self) -> dict[str, torch.Tensor]:
        """Current learning rate of each discriminator as ``{"lr_d_<name>": 0-dim tensor}`` (loss-dict ready).
        ``torch.full`` fills on the device; ``torch.tensor(lr, device=cuda)`` would be a blocking host copy per step."""
        device = next(self.modules.parameters()).device
        return {f"lr_d_{g['group']}": torch.full((), g["lr"], device=device) for g in self.optimizer.param_groups}

    def state_dict(self) -> dict[str, Any]:
        """Discriminator weights (unwrapped), optimizer and schedule state."""
        return {"discriminators": {name: self.unwrapped(name).state_dict() for name in self.modules},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (after ``prepare``: tensors land on each parameter's device)."""
        for name in self.modules:
            self.unwrapped(name).load_state_dict(state["discriminators"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
