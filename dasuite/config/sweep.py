"""Sweeps over config values: ``dasuite run EXP --sweep data.target.subset.n=100,500,1000`` runs one experiment per
value (with several ``--sweep`` options, per combination), each in its own run directory.

A sweep ``KEY=V1,V2,...`` splits its values at top-level commas (``data.resize=[240,180],[480,360]`` has two
values); each value is applied as the override ``KEY=V``. The run tag gets ``<leaf>=<V>`` prefixes (``leaf`` = the
last part of ``KEY``), e.g. ``n=100_seed0``, so ``dasuite report RUNS --group-by data.target.subset.n`` groups the
runs by value.
"""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Sequence

from dasuite.errors import ConfigError

if TYPE_CHECKING:
    from dasuite.config.schema import ExperimentConfig

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]")


def split_values(text: str) -> list[str]:
    """Split at commas outside brackets/braces/quotes: ``"1,[2,3],{a: 4}"`` -> ``["1", "[2,3]", "{a: 4}"]``."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``"KEY=V1,V2"`` -> ``("KEY", ["V1", "V2"])``; a clear error for a missing ``=``, a bad key or an empty value."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ConfigError(f"--sweep {text!r}: expected KEY=V1,V2,... with a dotted config key, e.g. "
                          f"data.target.subset.n=100,500,1000")
    items = split_values(values)
    if not all(items):
        raise ConfigError(f"--sweep {text!r}: empty value (values are separated by commas)")
    if len(set(items)) != len(items):
        raise ConfigError(f"--sweep {text!r}: a value appears twice")
    return key, items


def expand_sweeps(sweeps: Sequence[str]) -> list[tuple[list[str], str]]:
    """Every combination of the sweeps as (overrides ``["KEY=V", ...]``, tag prefix ``"leaf=V_..."``); ``[([], "")]``
    without sweeps. Two sweeps of one key are an error."""
    parsed = [parse_sweep(s) for s in sweeps]
    keys = [k for k, _ in parsed]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--sweep: each key may be swept once, got {keys}")
    combos = []
    for values in itertools.product(*(v for _, v in parsed)):
        overrides = [f"{k}={v}" for k, v in zip(keys, values)]
        prefix = "_".join(_UNSAFE.sub("-", f"{k.rsplit('.', 1)[-1]}={v}") for k, v in zip(keys, values))
        combos.append((overrides, prefix))
    return combos


def with_fold(cfg: "ExperimentConfig", fold: int) -> "ExperimentConfig":
    """``cfg`` with ``fold`` set on every dataset entry that has folds (mix members included)."""
    from dasuite.config.load import validate_config

    raw = cfg.model_dump(mode="json")
    entries = [role for role, entry in cfg.data.entries().items() if "fold" in type(entry).model_fields]
    if not entries:
        raise ConfigError("--fold was given but no dataset in the experiment has folds")
    for role in entries:  # role may be dotted for mix members, e.g. "source.mix.0"
        node = raw["data"]
        for part in role.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        node["fold"] = fold
    return validate_config(raw, source="--fold")
