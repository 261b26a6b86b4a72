"""Optimizers with SegFormer-style parameter groups and optional layer-wise lr decay (schedules:
``dasuite.schedule``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from dasuite.errors import ConfigError

if TYPE_CHECKING:
    from dasuite.config.schema import OptimConfig

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_NO_DECAY_NAME_PARTS = ("pos_block", "position_embedding", "pos_embed")


def param_groups(model: nn.Module, cfg: "OptimConfig", head_prefixes: Iterable[str] = (),
                 lr_scale: float = 1.0) -> list[dict]:
    """Split trainable parameters into head, body and body normalisation/position groups (and by layer).

    Head parameters (names starting with one of ``head_prefixes``) get ``lr * head_lr_mult``; parameters of the
    body's normalisation layers and position blocks get ``norm_weight_decay`` (when set) instead of
    ``weight_decay``. As in SegFormer's mmcv recipe, where the ``norm`` key matched only encoder norms and the
    decode head's BN (``linear_fuse.bn``) matched ``head``, head norms keep the lr multiplier and normal decay.
    With ``cfg.layer_decay`` = d (BEiT / DINOv2 fine-tuning), a body parameter at depth ``model.layer_id(name)``
    (0 = embeddings, i + 1 = block i, ``model.num_layers`` + 1 = after the last block) gets
    ``lr * d ** (num_layers + 1 - layer_id)``, one group per depth; head parameters are not decayed. Each group
    records ``initial_lr`` so schedules scale it. ``lr_scale`` multiplies every learning rate (the linear scaling
    rule of ``optim.lr_reference_batch``; 1 by default).
    """
    prefixes = tuple(head_prefixes)
    decay = getattr(cfg, "layer_decay", None)
    if decay is not None and not (callable(getattr(model, "layer_id", None)) and hasattr(model, "num_layers")):
        raise ConfigError(f"optim.layer_decay={decay}: {type(model).__name__} does not number its layers "
                          f"(layer_id/num_layers; dinov2_* models do): set optim.layer_decay=null")
    no_decay: set[int] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES) or any(p in mod_name for p in _NO_DECAY_NAME_PARTS):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[tuple[bool, bool, int], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = bool(prefixes) and name.startswith(prefixes)
        is_norm = cfg.norm_weight_decay is not None and not is_head and (
            id(param) in no_decay or any(p in name for p in _NO_DECAY_NAME_PARTS)
        )
        depth = -1 if decay is None or is_head else model.layer_id(name)
        groups.setdefault((is_head, is_norm, depth), []).append(param)
    out = []
    for (is_head, is_norm, depth), params in sorted(groups.items()):
        lr = cfg.lr * (cfg.head_lr_mult if is_head else 1.0) * lr_scale
        if depth >= 0:
            lr *= decay ** (model.num_layers + 1 - depth)
        wd = cfg.norm_weight_decay if is_norm else cfg.weight_decay
        name = f"{'head' if is_head else 'body'}{'_norm' if is_norm else ''}{f'_layer{depth}' if depth >= 0 else ''}"
        out.append({"params": params, "lr": lr, "initial_lr": lr, "weight_decay": wd, "group": name})
    return out


def build_optimizer(model: nn.Module, cfg: "OptimConfig", head_prefixes: Iterable[str] = (),
                    extra: Iterable[nn.Module] = (), lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """AdamW or SGD over ``param_groups``; ``extra`` modules (new layers such as KD projectors) form one more group
    at the head learning rate and normal weight decay."""
    groups = param_groups(model, cfg, head_prefixes, lr_scale)
    extra_params = [p for m in extra for p in m.parameters() if p.requires_grad]
    if extra_params:
        lr = cfg.lr * cfg.head_lr_mult * lr_scale
        groups.append({"params": extra_params, "lr": lr, "initial_lr": lr, "weight_decay": cfg.weight_decay,
                       "group": "extra"})
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)
