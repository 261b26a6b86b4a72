"""Activation (gradient) checkpointing of encoder blocks: ``train.grad_checkpointing``.

A checkpointed block keeps only its input during the forward pass and runs again in the backward pass to rebuild
its activations (``torch.utils.checkpoint``, non-reentrant, with the RNG state preserved so dropout and drop-path
draw the same masks). Loss and gradients equal the plain forward's within float rounding; memory of the block's
intermediate activations is traded for one more forward of the block.

BatchNorm in training mode would update its running statistics twice (forward and recomputation); the
recomputation therefore runs with the statistics' update switched off (``_bn_statistics_frozen``), so running
means, variances and ``num_batches_tracked`` also equal the plain forward's. Under ``torch.compile`` the compiler
recomputes inside its own graph (no second update) and the block is checkpointed without that context.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _bn_statistics_frozen(module: nn.Module) -> Iterator[None]:
    """Training-mode BatchNorm layers of ``module`` normalise with batch statistics but leave their running ones
    as they are: momentum 0 (``running * 1 + batch * 0``, the same kernels and saved tensors as the forward) and
    ``num_batches_tracked`` put back afterwards."""
    switched = [(m, m.momentum, m.num_batches_tracked.clone()) for m in module.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m, _, _ in switched:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in switched:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


def checkpointed(module: nn.Module, *args: Any) -> Any:
    """``module(*args)`` with its activations recomputed in the backward pass (see the module docstring)."""
    if torch.compiler.is_compiling():
        return checkpoint(module, *args, use_reentrant=False)
    return checkpoint(module, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _bn_statistics_frozen(module)))


def wants_checkpoint(module: nn.Module, enabled: bool) -> bool:
    """Checkpoint only what a backward pass will follow: training mode with gradients enabled."""
    return enabled and module.training and torch.is_grad_enabled()


def transformers_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Switch a transformers ``PreTrainedModel``'s own (non-reentrant) checkpointing of its layers on or off; its
    layers then checkpoint themselves in training mode (transformers >= 5 ``activation_checkpointing_*`` names)."""
    if enabled:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()
