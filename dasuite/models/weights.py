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


def load_model_weights(model: "nn.Module", path: Union[str, Path], key: str = "") -> None:
    """Copy the weights of ``path`` (``.safetensors``, or a ``.pt`` with a ``model`` entry) into ``model``; a missing,
    unreadable or mismatched file is a DasuiteError that starts with ``key`` (the option or config key that named
    the file, e.g. ``--init-from``) and names the file."""
    prefix = f"{key}: " if key else ""
    try:
        state = load_weights(Path(path))
    except DasuiteError as err:
        raise DasuiteError(f"{prefix}{err}") from None
    load_state(model, state, f"{prefix}weights {path}")


def load_state(model: "nn.Module", state: dict, what: str) -> None:
    """Copy ``state`` into ``model`` strictly; a mismatch is a DasuiteError starting with ``what``."""
    own = model.state_dict()
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()  # in the model's order
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
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
