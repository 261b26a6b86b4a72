"""Segmentation models behind the ``MODELS`` registry; importing this package registers every architecture."""

from dasuite.models import deeplabv2, deeplabv3plus, segformer  # noqa: F401  (import side effect: registration)
from dasuite.models.base import MODELS, SegModel
from dasuite.models.factory import create_model, model_options

__all__ = ["MODELS", "SegModel", "create_model", "model_options"]
