"""Checkpoints: single files written atomically (temp file + rename), read back with ``weights_only=True``.

Layout inside a run directory::

    checkpoints/last.pt          model, optimizer, schedule, method state, loader positions, iteration, best so far
    checkpoints/last.rng<k>.pt   RNG states of process k (torch CPU/CUDA, numpy, python)
    checkpoints/best.safetensors model weights of the best evaluation so far (+ best.json: iteration, metrics)
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dasuite.errors import DasuiteError


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def load_torch(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with an error naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DasuiteError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file or a pickle that is not plain tensors/containers
        raise DasuiteError(f"cannot read checkpoint {str(path)!r}: {err}") from None


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """Model weights as safetensors, atomically (tensors made contiguous; shared storage cloned)."""
    tensors = {k: v.detach().contiguous().clone().cpu() for k, v in state.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Model weights from a ``.safetensors`` file or from the ``model`` entry of a ``.pt`` checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise DasuiteError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = load_torch(path)
    if isinstance(state, dict) and "model" in state:
        return state["model"]
    raise DasuiteError(f"checkpoint {str(path)!r} has no 'model' entry (expected a dasuite checkpoint)")


def write_json(obj: Any, path: Path) -> None:
    """JSON file written atomically."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def read_json(path: Path) -> Any:
    """A JSON file, with an error naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise DasuiteError(f"{path}: not valid JSON ({err}); delete it to regenerate it") from None


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
