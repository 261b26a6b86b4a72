"""Base class of every typed config section: strict keys, no quoted numbers, validated on assignment."""

from __future__ import annotations

import typing
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

_SCALARS = (int, float, bool)


class Section(BaseModel):
    """A config section: unknown keys are errors; values are validated (ints stay ints, paths stay strings).

    Numbers and booleans must be written as such: ``batch_size: "8"`` is refused (pydantic alone would convert the
    string), so a value that reached the file quoted by accident is reported instead of silently reinterpreted.
    Each field's meaning is the docstring right under it (``docs/config.md`` is generated from them)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _no_quoted_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            sequence = isinstance(value, (list, tuple))
            items = list(value) if sequence else [value]
            if field is None or not any(isinstance(v, str) for v in items):
                continue
            if _expects_scalar(field.annotation, sequence):
                raise PydanticCustomError("quoted_number", "{field}: got {value!r}; expected {kind}{hint}",
                                          {"field": key, "value": value, **_describe(field.annotation, items, sequence)})
        return data


def _describe(annotation: Any, items: list, sequence: bool) -> dict[str, str]:
    """What a scalar field expects, and a hint when a given string is such a value in quotes."""
    leaves = set(_leaf_types(annotation, elements=sequence))
    if leaves <= {bool}:
        kind, looks = "true/false", lambda v: v.lower() in ("true", "false", "yes", "no")
    elif leaves <= {int, bool}:
        kind, looks = "an integer", lambda v: v.strip().lstrip("+-").isdigit()
    else:
        kind, looks = "a number", _is_number
    quoted = [v for v in items if isinstance(v, str) and looks(v)]
    hint = f" (quoted values are refused: write {quoted[0]}, not '{quoted[0]}')" if quoted else ""
    return {"kind": kind, "hint": hint}


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _expects_scalar(annotation: Any, sequence: bool) -> bool:
    """True when every type ``annotation`` accepts (per element for a list/tuple value) is a number or bool."""
    leaves = _leaf_types(annotation, elements=sequence)
    return bool(leaves) and all(t in _SCALARS for t in leaves)


def _leaf_types(annotation: Any, elements: bool = False) -> list[Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _leaf_types(args[0], elements)
    if origin is Union or type(annotation).__name__ == "UnionType":
        return [t for a in args if a is not type(None) for t in _leaf_types(a, elements)]
    if elements:
        if origin in (list, tuple):
            return [t for a in args if a is not Ellipsis for t in _leaf_types(a)]
        return [object]
    if origin in (list, tuple, dict) or origin is typing.Literal:
        return [object]
    return [annotation]
