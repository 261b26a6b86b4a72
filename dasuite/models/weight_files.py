"""The pretrained weight files dasuite's keywords (``model.pretrained: imagenet`` / ``coco`` / ``dinov2`` ...) look
for: their public source and checksum, and the one-line message a run without weights stops with.

Each model module declares its files in a top-level literal ``PRETRAINED_FILES`` (docs/extending.md, A model), read
here from its source with ``ast.literal_eval``, never imported (run planning checks an experiment before torch is
imported). Keys, all optional: ``files``, ``WeightFile`` records as dicts (any module of ``dasuite.models`` may hold
records others name: ``resnet.py``); ``archs``, arch -> keyword -> accepted hub-cache names in the order tried (the
first keyword's first name is ``recommended``); ``options``, option -> value -> a table like ``archs`` used instead
when the model's options set that value; ``wraps``, wrapper arch -> ``{"arch": option naming the base, "default":
..., "options": option holding the base's options}``. An arch's files come from the module that registers it (a
plugin's too); none declared = no known file.

Checksums: torchvision's file names end in the first 8 hex digits of the file's SHA-256, which torchvision verifies
on download (``check_hash=True``); no public source states the full digests, so ``sha256`` holds that prefix and
``full_sha256`` is False. Files whose names carry no digest have ``sha256`` None.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from dasuite.errors import ConfigError
from dasuite.registry import MODELS

VARIABLE = "PRETRAINED_FILES"
#: keyword -> the hub-cache names it accepts, in the order tried
Keywords = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file: its name (what the hub cache must hold), where it is published, the SHA-256 (or its
    prefix), and what it is."""

    name: str
    source: str
    what: str
    sha256: Optional[str] = None
    full_sha256: bool = False
    size_mb: Optional[float] = None  # as torchvision's weight metadata states it (``_file_size``, MB)


def read_declaration(source: str, where: str = "<module>") -> dict[str, Any]:
    """The ``PRETRAINED_FILES`` literal assigned at the top level of a module's source ({} when there is none)."""
    if VARIABLE not in source:
        return {}
    for node in ast.parse(source, where).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) and node.value is not None else []
        if any(isinstance(t, ast.Name) and t.id == VARIABLE for t in targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError as err:
                raise ConfigError(f"{where}: {VARIABLE} must be a literal (dicts, tuples, strings, numbers): "
                                  f"{err}") from err
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {VARIABLE} must be a dict, got {type(value).__name__}")
            return value
    return {}


@functools.lru_cache(maxsize=None)
def declaration(module: str) -> dict[str, Any]:
    """``module``'s ``PRETRAINED_FILES``, read from its source file without importing it ({} when it declares none
    or has no source file to read)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return {}
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
        return {}
    return read_declaration(Path(origin).read_text(encoding="utf-8"), origin)


def _records(declared: Mapping[str, Any]) -> dict[str, WeightFile]:
    return {record["name"]: WeightFile(**record) for record in declared.get("files", ())}


def _builtin_files() -> dict[str, WeightFile]:
    files: dict[str, WeightFile] = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem.startswith("_") or path.name == Path(__file__).name:
            continue
        for name, file in _records(declaration(f"{__package__}.{path.stem}")).items():
            if files.setdefault(name, file) != file:
                raise ConfigError(f"pretrained file {name} is declared twice, differently ({path.name})")
    return files


#: every file a built-in keyword may resolve to, by file name (the ``files`` of dasuite.models' modules)
FILES: dict[str, WeightFile] = _builtin_files()


def select(declared: Mapping[str, Any], arch: str, options: Optional[Mapping[str, Any]] = None) -> Keywords:
    """keyword -> names that ``declared`` (a module's ``PRETRAINED_FILES``) gives ``arch`` built with ``options``
    ({} when none): the ``options`` table of a value the options set, else ``archs``."""
    options = options or {}
    table = declared.get("archs", {})
    for option, by_value in declared.get("options", {}).items():
        value = options.get(option)
        if isinstance(value, (str, int, float, bool)) and value in by_value:
            table = by_value[value]
            break
    return {keyword: tuple(names) for keyword, names in table.get(arch, {}).items()}


def _declared(arch: str) -> Mapping[str, Any]:
    return declaration(MODELS.entry(arch).module) if arch in MODELS else {}


def hub_checkpoint_dir() -> Path:
    """Where ``model.pretrained: imagenet`` looks: ``$TORCH_HOME/hub/checkpoints`` (torch's default:
    ``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``), computed as torch.hub does, without importing torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def weights_target(arch: str, options: Optional[Mapping[str, Any]]) -> tuple[str, Mapping[str, Any]]:
    """(arch, options) whose pretrained file a model loads: a wrapper's base (``wraps``; ``hrda``: ``options.base``,
    default ``segformer_b5``, built with ``options.base_options``), else the model itself."""
    options = options or {}
    wrap = _declared(arch).get("wraps", {}).get(arch)
    if wrap:
        return options.get(wrap["arch"]) or wrap["default"], options.get(wrap["options"]) or {}
    return arch, options


def pretrained_files(arch: str, options: Optional[Mapping[str, Any]] = None) -> Keywords:
    """keyword -> hub-cache names ``arch`` (a wrapper: its base) accepts with ``options``; {} when none is known."""
    arch, options = weights_target(arch, options)
    return select(_declared(arch), arch, options)


def weight_file(name: str, arch: Optional[str] = None) -> WeightFile:
    """The record of file ``name``: a built-in one, else one the module registering ``arch`` declares (a plugin's),
    else a bare record naming only the file."""
    found = FILES.get(name) or (_records(_declared(arch)).get(name) if arch else None)
    return found or WeightFile(name, "the model's documentation", name)


def recommended(arch: str, options: Optional[Mapping[str, Any]] = None) -> Optional[tuple[str, WeightFile]]:
    """(keyword, file) a full-size ``arch`` is usually initialised from, None for an architecture dasuite knows no
    file for (a plugin model that declares none, a caffe-style ResNet-50)."""
    target = weights_target(arch, options)[0]
    for keyword, names in pretrained_files(arch, options).items():
        if names:
            return keyword, weight_file(names[0], target)
    return None


def keyword_files(arch: str, options: Optional[Mapping[str, Any]], keyword: str) -> Optional[tuple[str, ...]]:
    """The hub-cache file names ``model.pretrained: <keyword>`` accepts for ``arch`` (the model modules look for the
    same names), None when dasuite knows no file for that combination."""
    return pretrained_files(arch, options).get(keyword)


def missing_keyword_file(experiment: str, arch: str, options: Optional[Mapping[str, Any]], keyword: str
                         ) -> Optional[str]:
    """The one line a run stops with when ``model.pretrained: <keyword>`` names no file in the hub cache (None when
    one is there, or dasuite knows no file for it: the model's own loader then explains)."""
    names = keyword_files(arch, options, keyword)
    folder = hub_checkpoint_dir()
    if not names or any((folder / name).exists() for name in names):  # a file, or a snapshot folder (dinov2)
        return None
    file = weight_file(names[0], weights_target(arch, options)[0])
    others = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    return (f"experiment {experiment!r}: model.pretrained={keyword} needs {file.name}{others} in {folder}/: get it "
            f"({file.what}; {file.source}) and put it there, or pass model.pretrained=/path/to/{file.name} "
            f"(docs/models.md, Pretrained weights); to train from scratch on purpose set model.pretrained=null "
            f"model.from_scratch=true")


def missing_weights_message(experiment: str, arch: str, options: Optional[Mapping[str, Any]] = None) -> str:
    """The one line a full-size run on real data without ``model.pretrained`` stops with: which file to get, where
    to put it, and how to opt out."""
    head = (f"experiment {experiment!r}: model.pretrained is not set, so {arch} would start from random weights on "
            f"real data")
    tail = ("; to train from scratch on purpose set model.from_scratch=true (and --init-from CHECKPOINT starts from a "
            "trained run's weights)")
    found = recommended(arch, options)
    if found is None:
        return f"{head}: pass model.pretrained=/path/to/weights (a file, run or Hugging Face directory){tail}"
    keyword, file = found
    return (f"{head}: get {file.name} ({file.what}; {file.source}), put it in {hub_checkpoint_dir()}/ and pass "
            f"model.pretrained={keyword}, or pass model.pretrained=/path/to/{file.name} (docs/models.md, Pretrained "
            f"weights){tail}")
