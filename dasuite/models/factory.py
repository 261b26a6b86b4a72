"""``create_model(arch, num_classes, ...)``: the one entry point from a config to a segmentation network.

Every registered factory has the signature ``build(num_classes, *, tiny=False, pretrained=None, **options)`` with
each option a keyword-only argument with a default; ``model_options`` reads them from that signature, so the valid
options of an architecture are always exactly what its factory accepts.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from dasuite.errors import ConfigError
from dasuite.models.base import MODELS, SegModel

_COMMON = ("tiny", "pretrained")


def model_options(arch: str) -> dict[str, Any]:
    """Architecture-specific options and their defaults, e.g. ``{"drop_path": 0.1, "dropout": 0.1}``."""
    parameters = inspect.signature(MODELS.get(arch)).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in _COMMON}


def create_model(
    arch: str, num_classes: int, *, tiny: bool = False, pretrained: str | None = None, **options: Any
) -> SegModel:
    """Build a registered model; unknown ``arch`` or option -> ConfigError listing the valid ones.

    ``tiny`` builds the narrow/shallow variant of the same family (tests, CPU runs); ``pretrained`` is a local
    weights file or ``imagenet`` (see ``dasuite.models.pretrained``); ``options`` are the arch's own knobs.
    """
    build = MODELS.get(arch)
    valid = model_options(arch)
    for name in options:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
            raise ConfigError(f"model {arch!r} has no option {name!r}{hint} (valid options: {listing})")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return build(num_classes, tiny=tiny, pretrained=pretrained, **options)
