"""Read an experiment YAML, apply ``a.b=c`` overrides, validate it, and write the resolved file.

Override values are parsed as YAML (``dasuite.fileio.parse_yaml``) so ``100``, ``1e-3``, ``[240,180]``, ``null`` and ``true`` get
their natural types; list items are addressed by index (``data.source.resize.0=320``). Validation errors name the
dotted key, the value and what was expected; an unknown key names the closest valid one.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from pydantic import BaseModel, ValidationError

from dasuite.config.schema import ExperimentConfig
from dasuite.errors import ConfigError
from dasuite.fileio import parse_yaml, read_yaml
from dasuite.rundir import dump_config

__all__ = ["apply_override", "dump_config", "flatten_config", "load_config", "parse_override", "read_yaml",
           "validate_config"]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a", "b", "c"], parsed value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value {raw!r} is not valid YAML ({err})") from None
    return key.split("."), value


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    """Set ``raw[path[0]][path[1]]... = value``, creating missing mappings (the schema rejects unknown keys later)."""
    node: Any = raw
    for depth, part in enumerate(path[:-1]):
        node = _child(node, part, path[: depth + 1], create=True)
    last = path[-1]
    if isinstance(node, list):
        node[_index(node, last, path)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:-1])} is a value, not a section")


def _index(node: list, part: str, path: list[str]) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"override {'.'.join(path)}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def _child(node: Any, part: str, path: list[str], create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:-1])} is a value, not a section")
    if node.get(part) is None and create:
        node[part] = {}
    return node[part]


def load_config(path: str | Path, overrides: Iterable[str] = (), extra: Optional[dict] = None) -> ExperimentConfig:
    """Read ``path``, apply ``overrides`` (``key=value`` strings) then ``extra`` ({dotted key: value}), validate.

    ``name`` defaults to the file's stem.
    """
    path = Path(path)
    raw = read_yaml(path)
    raw.setdefault("name", path.stem)
    for text in overrides:
        apply_override(raw, *parse_override(text))
    for key, value in (extra or {}).items():
        apply_override(raw, key.split("."), value)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict, source: str = "<config>") -> ExperimentConfig:
    """Validate a raw mapping into an ``ExperimentConfig``; raise a ConfigError listing every problem."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        lines = [_describe(e) for e in err.errors()]
        raise ConfigError(f"{source}: invalid experiment config:\n  " + "\n  ".join(lines)) from None


def _describe(error: dict) -> str:
    loc = [str(p) for p in error["loc"]]
    key = _dotted(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        valid = _valid_keys(ExperimentConfig, list(error["loc"][:-1]))
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        prefix = _dotted(error["loc"][:-1])
        hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
        return f"{key}: unknown key{hint} (valid keys here: {', '.join(valid)})"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "quoted_number":
        ctx = error["ctx"]
        return f"{_dotted([*error['loc'], ctx['field']])}: got {ctx['value']!r} (str); expected {ctx['kind']}{ctx['hint']}"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        tag, valid = str(ctx.get("tag", "")), [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        close = difflib.get_close_matches(tag, valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{key}.name: unknown name {tag!r}{hint} (valid: {', '.join(sorted(valid))})"
    value = error.get("input")
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(value, dict):  # a whole section failed a check across its keys: the message names them
        return f"{key}: {message}"
    return f"{key}: got {value!r} ({type(value).__name__}); {message[0].lower()}{message[1:]}"


def _dotted(loc: Iterable[Any]) -> str:
    """Dotted key from a pydantic location, dropping the union tag pydantic inserts (e.g. ``source.camvid.split``)."""
    parts: list[str] = []
    model: Any = ExperimentConfig
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if isinstance(part, int):  # a list index: same model, keep the index in the key
            parts.append(str(part))
        elif fields is not None and part in fields:
            parts.append(str(part))
            model = _unwrap(fields[part].annotation)
        elif isinstance(model, list) and any(m.model_fields["name"].annotation == typing.Literal[part] for m in model):
            model = next(m for m in model if m.model_fields["name"].annotation == typing.Literal[part])
        else:
            parts.append(str(part))
            model = None
    return ".".join(parts)


def _unwrap(annotation: Any) -> Any:
    """Reduce Optional/Annotated/Union annotations to a model class or a list of union member classes."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(args[0])
    if origin is list:
        return _unwrap(args[0])
    if origin is typing.Union:
        flat: list = []
        for member in (_unwrap(a) for a in args):
            flat.extend(member if isinstance(member, list) else [member])
        flat = [m for m in flat if isinstance(m, type) and issubclass(m, BaseModel)]
        return flat[0] if len(flat) == 1 else flat
    return annotation


def _valid_keys(model: Any, loc: list[Any]) -> list[str]:
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(model, list):
            model = next((m for m in model if m.model_fields["name"].annotation == typing.Literal[part]), None)
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return []
        model = _unwrap(fields[part].annotation)
    return sorted(getattr(model, "model_fields", {}))


def flatten_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """Flat ``{"a.b": scalar}`` view for TensorBoard hparams (lists and None become strings)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float, str, bool)):
            out[prefix] = node
        else:
            out[prefix] = str(node)

    walk("", cfg.model_dump(mode="json"))
    return out
