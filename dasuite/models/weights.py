"""Loading a checkpoint's weights into a built network, strictly: one error line naming the file and the first
tensors that do not fit (another architecture, width or class count), never a partial load."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

from dasuite.errors import DasuiteError
from dasuite.fileio import load_weights

if TYPE_CHECKING:
    from torch import nn

SHOWN = 3  # mismatched tensors named per error


def load_model_weights(model: "nn.Module", path: Union[str, Path], what: str = "") -> None:
    """Copy the weights of ``path`` (``.safetensors``, or a ``.pt`` with a ``model`` entry) into ``model``; a missing,
    unreadable or mismatched file is a DasuiteError, prefixed by ``what`` (default: the file)."""
    load_state(model, load_weights(Path(path)), what or str(path))


def load_state(model: "nn.Module", state: dict, what: str) -> None:
    """Copy ``state`` into ``model`` strictly; a mismatch is a DasuiteError starting with ``what``."""
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong:
        raise DasuiteError(f"{what}: weight shapes do not match the model ({len(wrong)} tensors; checkpoint vs model: "
                           f"{_first(wrong)}): a checkpoint of another width, variant or class count?")
    if missing or unexpected:
        raise DasuiteError(f"{what}: weights do not match the model ({len(missing)} model tensors missing: "
                           f"{_first(missing)}; {len(unexpected)} unexpected: {_first(unexpected)}): a checkpoint of "
                           f"another architecture?")
    model.load_state_dict(state)


def _first(items: list[str]) -> str:
    if not items:
        return "none"
    more = f", ... ({len(items)} in all)" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more
