"""The ``model`` config section (imported without torch: model names come from the registry's source scan)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, field_validator, model_validator

from dasuite.errors import ConfigError
from dasuite.registry import MODELS
from dasuite.schema_base import Section


class ModelConfig(Section):
    """``arch`` is a registered model name (``dasuite list models``); ``options`` are passed to its factory and
    checked there (``docs/config.md`` lists each architecture's options)."""

    arch: str = "segformer_b0"
    """Network architecture, a registered model (``dasuite list models``, docs/models.md)."""
    tiny: bool = False
    """Build the narrow, shallow variant of the same family (tests and CPU runs)."""
    pretrained: Optional[str] = None
    """Encoder weights: a local file or directory, or a keyword such as ``imagenet`` (torch hub cache); nothing is
    downloaded. null: a full-size model trained on real data stops before training and names the file to get,
    unless ``from_scratch`` is true or ``--init-from`` gives the weights."""
    from_scratch: bool = False
    """Train from random initialisation on purpose (no ``pretrained``); tiny models and the toy data never need it."""
    options: dict[str, Any] = Field(default_factory=dict)
    """The architecture's own options, e.g. ``drop_path`` or ``output_stride`` (Model options below)."""
    sync_bn: bool = False
    """Under several GPU processes, turn the network's trainable BatchNorm layers into SyncBatchNorm (batch
    statistics over the global batch); frozen BatchNorm is left as it is; no effect with one process or on CPUs."""

    @model_validator(mode="after")
    def _scratch_or_pretrained(self) -> "ModelConfig":
        if self.from_scratch and self.pretrained is not None:
            raise ValueError(f"from_scratch: true contradicts pretrained: {self.pretrained} (to train from scratch, "
                             f"also set model.pretrained=null)")
        return self

    @field_validator("arch")
    @classmethod
    def _registered(cls, v: str) -> str:
        try:
            MODELS.entry(v)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return v
