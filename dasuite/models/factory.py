"""``create_model(arch, num_classes, ...)``: the one entry point from a config to a segmentation network.

A model factory is registered with ``@MODELS.register("name", ...)`` (one factory may serve several names) and has
the signature ``build(arch, num_classes, *, tiny=False, pretrained=None, **options)``, each option a keyword-only
argument with a default and a line ``name: meaning`` in the factory docstring's ``Options:`` section. The valid
options of an architecture are exactly what its factory accepts (``model_options``); ``option_help`` reads their
meanings for the generated config reference.
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any

from dasuite.errors import ConfigError
from dasuite.models.base import MODELS, SegModel

_COMMON = ("tiny", "pretrained")


def _parameters(arch: str) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(MODELS.get(arch)).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name not in _COMMON]


def model_options(arch: str) -> dict[str, Any]:
    """Architecture-specific options and their defaults, e.g. ``{"drop_path": 0.1, "dropout": 0.1}``."""
    return {p.name: p.default for p in _parameters(arch)}


def option_help(arch: str) -> dict[str, tuple[str, Any, str]]:
    """``{option: (type, default, meaning)}`` from the factory's signature and its docstring's ``Options:`` lines."""
    doc = inspect.getdoc(MODELS.get(arch)) or ""
    section = doc.split("Options:", 1)[1] if "Options:" in doc else ""
    meanings: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        match = re.match(r"^\s*(\w+): (.*)$", line)
        if match:
            current = match.group(1)
            meanings[current] = match.group(2).strip()
        elif current and line.strip():
            meanings[current] += " " + line.strip()
    out = {}
    for p in _parameters(arch):
        kind = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
        out[p.name] = (kind, p.default, meanings.get(p.name, ""))
    return out


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
    return build(arch, num_classes, tiny=tiny, pretrained=pretrained, **options)
