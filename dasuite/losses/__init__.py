"""Loss functions shared by all methods (``seg_loss`` loads with its torch-based module on first use)."""

from __future__ import annotations

from typing import Any

__all__ = ["seg_loss"]


def __getattr__(name: str) -> Any:
    if name == "seg_loss":
        from dasuite.losses.segmentation import seg_loss

        return seg_loss
    raise AttributeError(f"module 'dasuite.losses' has no attribute {name!r}")
