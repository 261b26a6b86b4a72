"""Loss functions shared by all methods."""

from dasuite.losses.segmentation import seg_loss

__all__ = ["seg_loss"]
