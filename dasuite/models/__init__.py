"""Segmentation models: ``create_model(arch, num_classes, ...)`` builds one registered in ``MODELS``.

Model names are known without importing anything (``dasuite.registry``); this package's torch-based parts load on
first use, so ``from dasuite.models import MODELS`` stays light.
"""

from __future__ import annotations

from typing import Any

from dasuite.registry import MODELS

__all__ = ["MODELS", "SegModel", "create_model", "model_options"]


def __getattr__(name: str) -> Any:
    if name in ("create_model", "model_options"):
        from dasuite.models import factory

        return getattr(factory, name)
    if name == "SegModel":
        from dasuite.models.base import SegModel

        return SegModel
    raise AttributeError(f"module 'dasuite.models' has no attribute {name!r}")
