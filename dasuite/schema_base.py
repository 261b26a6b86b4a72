"""Base class of every typed config section: strict keys, validated on assignment."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors; values are validated (ints stay ints, paths stay strings)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
