"""The engine's checkpoint contents beyond weights: every process's RNG states, stored inside ``last.pt``.

Layout inside a run directory::

    checkpoints/last.pt          model, optimizer, schedule, method state, loader positions, iteration, best so far,
                                 and the RNG states of every process (one atomic file: a kill at any instant leaves
                                 the previous or the new checkpoint, never a mix)
    checkpoints/best.safetensors model weights of the best evaluation so far, its iteration and metrics in the
                                 file's metadata (+ best.json: the same, for reading)

Files are written and read through ``dasuite.fileio`` (atomic, ``weights_only``).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """This process's RNG states in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(obj: Any) -> Any:
    return [_to_lists(o) for o in obj] if isinstance(obj, (tuple, list)) else obj


def _to_tuples(obj: Any) -> Any:
    return tuple(_to_tuples(o) for o in obj) if isinstance(obj, list) else obj
