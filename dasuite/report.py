"""``dasuite report``: many run directories -> per-run results and per-group mean, std, CI and comparisons.

Python API: ``collect_runs(paths)`` finds run directories (``config.yaml`` and, once finished, ``summary.json``),
``build_report(runs, split=..., group_by=..., baseline=...)`` computes the statistics, ``format_report(report, fmt,
per_class)`` renders them. Per group, the statistics are over independent replicates: one run each, or, when the
runs have folds (cross test), one fold-average per seed (a seed lacking a fold is excluded and reported). Values are
fractions 0..1 internally and in json, percentages (2 decimals) in the text formats. Each run contributes one
result of its ``summary.json``, chosen by checkpoint (``best``: the highest validation score; ``last``: the end of
training) and split (``val`` or ``test``); every table says which. See ``docs/report.md``.
"""

from __future__ import annotations

import difflib
import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from dasuite.errors import DasuiteError
from dasuite.stats import Comparison, Replicates, Summary, replicate_stats, welch
from dasuite.tables import FORMATS, _check_result, _render

__all__ = ["Report", "RunRecord", "build_report", "collect_runs", "format_report"]

METRICS = ("mIoU", "mAcc", "aAcc")
SPLITS = ("test", "val")  # the evaluation split a result comes from
CHECKPOINTS = ("best", "last")  # best: highest validation train.best_metric; last: the end of training
# the former --split values, which named a summary.json key: best -> (val, best), final -> (val, last)
LEGACY_SPLITS = {"best": ("val", "best"), "final": ("val", "last")}
GROUP_ALIASES = {"experiment": "name", "method": "method.name", "arch": "model.arch"}
CLASS_PREFIX = "iou/"  # internal key of a class IoU: "iou/<class name>"
SUBSET_PREFIX = "mIoU_"  # class-subset means the evaluation adds with eval.class_subsets, e.g. "mIoU_synthia16"


@dataclass(frozen=True)
class RunRecord:
    """One run directory: its resolved config (``{}`` without config.yaml) and summary (None while unfinished)."""

    path: Path
    experiment: str
    tag: str
    seed: int | None
    fold: int | None
    config: dict
    summary: dict | None


@dataclass(frozen=True)
class RunResult:
    """A finished run in a report: its group, the result used (``checkpoint`` best | last, evaluated on ``split``
    val | test) and that result's values by key."""

    run: RunRecord
    group: str
    split: str
    iteration: int | None
    values: dict[str, float | None]
    checkpoint: str = "best"


@dataclass(frozen=True)
class GroupStats:
    """A group: its name (the ``--group-by`` value as text), that value, its runs and their ``Replicates``."""

    name: str
    value: Any
    runs: list[RunResult]
    rep: Replicates


@dataclass
class Report:
    """Everything ``format_report`` shows; ``warnings`` also name the skipped runs and the seeds lacking a fold."""

    runs: list[RunResult]
    groups: dict[str, GroupStats]
    comparisons: list[tuple[str, str, str, Comparison]]  # (group, baseline, key, comparison)
    classes: list[str]
    skipped: list[tuple[str, str]]  # (run path, reason)
    warnings: list[str]
    split: str | None
    group_by: str
    baseline: str | None
    confidence: float
    checkpoint: str = "best"
    metrics: tuple[str, ...] = METRICS
    """The summary metrics shown: ``METRICS`` plus the class-subset means (``mIoU_<subset>``) any run has."""

    def selection(self, rows: Sequence[RunResult] | None = None) -> str:
        """Which result the rows (default: all) use, in words, e.g. "best checkpoint, test split"."""
        return describe_selection(self.runs if rows is None else rows)


# ----------------------------------------------------------------------------------------------- collecting runs
def _read_mapping(path: Path) -> dict:
    """Parse a JSON (by suffix) or YAML file that must hold a mapping."""
    try:
        data = (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise DasuiteError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise DasuiteError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def _find_run_dirs(root: Path) -> list[Path]:
    """``root`` itself when it is a run directory (holds summary.json or config.yaml), else every run directory
    below it (not descending into runs)."""
    found = []
    for dirpath, dirnames, files in os.walk(root):
        if "summary.json" in files or "config.yaml" in files:
            found.append(Path(dirpath))
            dirnames.clear()
        dirnames.sort()
    return found


def _tag_number(tag: str, word: str) -> int | None:
    match = re.search(rf"(?:^|_){word}(\d+)(?:_|$)", tag)
    return int(match.group(1)) if match else None


def load_run(path: Path) -> RunRecord:
    """Read one run directory. Seed and fold come from config.yaml (``seed``; the ``fold`` of the data entries),
    falling back to the tag (``fold<K>_seed<S>``)."""
    config = _read_mapping(path / "config.yaml") if (path / "config.yaml").is_file() else {}
    summary = _read_mapping(path / "summary.json") if (path / "summary.json").is_file() else None
    info = summary or {}
    experiment = str(config.get("name") or info.get("experiment") or path.parent.name)
    tag = str(config.get("tag") or info.get("tag") or path.name)
    seed = config.get("seed") if isinstance(config.get("seed"), int) else _tag_number(tag, "seed")
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    folds = {e.get("fold") for e in data.values() if isinstance(e, dict)} - {None}
    fold = folds.pop() if len(folds) == 1 else _tag_number(tag, "fold")
    return RunRecord(path, experiment, tag, seed, fold, config, summary)


def collect_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Run directories from run directories, parent directories (searched recursively) or glob patterns (``**``
    allowed), sorted by path, duplicates removed. Unfinished runs are included (``summary`` None)."""
    if not paths:
        raise DasuiteError("no run directories given: pass run directories, parent directories or glob patterns")
    dirs: dict[Path, Path] = {}  # resolved -> as given
    for arg in map(str, paths):
        path = Path(arg).expanduser()
        matches = [path] if path.exists() else [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
        if not matches:
            raise DasuiteError(f"{arg}: no such file or directory, and no glob match")
        for match in matches:
            if match.is_file():
                if match.name not in ("summary.json", "config.yaml"):
                    raise DasuiteError(f"{match}: expected a run directory (or its summary.json / config.yaml)")
                match = match.parent
            for found in _find_run_dirs(match):
                dirs.setdefault(found.resolve(), found)
    if not dirs:
        raise DasuiteError("no run directories (with config.yaml or summary.json) found in: "
                           + ", ".join(map(str, paths)))
    return [load_run(p) for p in sorted(dirs.values())]


# ------------------------------------------------------------------------------------------------ building report
def resolve_selection(split: str | None, checkpoint: str | None) -> tuple[str | None, str]:
    """(split or None = test when the run has one, else val; checkpoint), the former ``--split best|final`` mapped
    to val with the best / last checkpoint."""
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise DasuiteError(f"unknown checkpoint {checkpoint!r}; expected one of {', '.join(CHECKPOINTS)}")
    if split in LEGACY_SPLITS:
        split, implied = LEGACY_SPLITS[split]
        if checkpoint is not None and checkpoint != implied:
            raise DasuiteError(f"--split {'best' if implied == 'best' else 'final'} means the {implied} checkpoint on "
                               f"the validation split, but --checkpoint {checkpoint} was given: use --split val "
                               f"--checkpoint {checkpoint}")
        checkpoint = implied
    if split is not None and split not in SPLITS:
        raise DasuiteError(f"unknown split {split!r}; expected one of {', '.join([*SPLITS, *LEGACY_SPLITS])}")
    return split, checkpoint or "best"


def _pick_result(run: RunRecord, split: str | None, checkpoint: str) -> tuple[str, str, dict] | str:
    """(split used, checkpoint used, result), or the reason the run is skipped.

    ``summary.json`` holds ``best`` (validation, best checkpoint), ``final`` (validation, last checkpoint) and
    ``test``: the test split evaluated with the best weights, or with the last ones when nothing was validated. A
    test result therefore serves ``last`` only when the best checkpoint is the last one (same iteration) or there is
    no validation; a run without validation has no best checkpoint and reports its last one (labelled ``last``)."""
    summary = run.summary
    if summary is None:
        return "unfinished (no summary.json)"
    best, final, test = summary.get("best"), summary.get("final"), summary.get("test")
    if split is None:
        split = "test" if test else "val"
    where = f"{run.path / 'summary.json'}"
    if split == "val":
        key = "best" if checkpoint == "best" else "final"
        result = summary.get(key)
        if not result:
            return f"summary.json has no validation result ({key!r})" + ("" if test else " and no 'test'")
        return "val", checkpoint, _check_result(result, f"{where}: {key}")
    if not test:
        return "summary.json has no 'test' result"
    if not best:  # nothing validated: the test result is of the last weights
        return "test", "last", _check_result(test, f"{where}: test")
    if checkpoint == "last" and not (final and test.get("iteration") == final.get("iteration")):
        return (f"its test result is of the best checkpoint (iteration {test.get('iteration')}), not the last "
                f"(iteration {(final or {}).get('iteration')}); evaluate the last one with `dasuite eval --run-dir "
                f"{run.path} --checkpoint last --split test`, or report --split val --checkpoint last")
    return "test", checkpoint, _check_result(test, f"{where}: test")


def describe_selection(rows: Sequence[RunResult]) -> str:
    """"best checkpoint, test split" when every row uses the same result, else the mix, e.g. "mixed: best
    checkpoint, test split (4 runs); best checkpoint, val split (2 runs)"."""
    kinds: dict[tuple[str, str], int] = {}
    for r in rows:
        kinds[r.checkpoint, r.split] = kinds.get((r.checkpoint, r.split), 0) + 1
    words = {k: f"{k[0]} checkpoint, {k[1]} split" for k in kinds}
    if len(kinds) == 1:
        return next(iter(words.values()))
    return "mixed: " + "; ".join(f"{words[k]} ({n} run{'s' if n > 1 else ''})" for k, n in kinds.items())


def _values(result: dict, where: str) -> dict[str, float | None]:
    """mIoU, mAcc, aAcc, the class-subset means "mIoU_<subset>" the run's evaluation added and "iou/<class>" ->
    fraction or None (undefined; NaN is read as undefined)."""
    subsets = {k: v for k, v in result.items() if k.startswith(SUBSET_PREFIX)}
    values = {m: result[m] for m in METRICS} | subsets | {CLASS_PREFIX + c: v for c, v in result["iou"].items()}
    bad = {k: v for k, v in values.items() if v is not None and (type(v) not in (int, float))}
    if bad:
        raise DasuiteError(f"{where}: expected numbers or null, got {bad}")
    return {k: None if v is None or v != v else float(v) for k, v in values.items()}


def _group_value(run: RunRecord, group_by: str) -> Any:
    if group_by == "experiment":
        return run.experiment
    node: Any = run.config
    dotted = GROUP_ALIASES.get(group_by, group_by)
    for depth, part in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(dotted.split(".")[:depth]) or "top level"
            options = sorted(node) if isinstance(node, dict) else []
            close = difflib.get_close_matches(part, options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; keys at {where}: {', '.join(options) or 'none'}"
            raise DasuiteError(f"{run.path / 'config.yaml'} has no key {dotted!r}{hint}")
        node = node[part]
    return node


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _group_stats(name: str, value: Any, rows: list[RunResult], keys: list[str], confidence: float,
                 warnings: list[str]) -> GroupStats:
    """Check the group's runs form replicates (see ``replicate_stats``), compute the statistics, note problems."""
    multi = len({r.run.experiment for r in rows}) > 1
    labels = [(f"{r.run.experiment}:" if multi else "") + (r.run.tag if r.run.seed is None else f"seed{r.run.seed}")
              for r in rows]
    plain = [str(r.run.path) for r in rows if r.run.fold is None]
    if plain and len(plain) < len(rows):
        raise DasuiteError(f"group {name!r} mixes runs with and without a fold (no fold: {', '.join(plain)})")
    seen: dict[tuple[str, int | None], Path] = {}
    for label, r in zip(labels, rows):
        if (label, r.run.fold) in seen:
            message = f"group {name!r}: {label}{'' if plain else f' fold {r.run.fold}'} appears twice: " \
                      f"{seen[label, r.run.fold]} and {r.run.path}"
            if not plain:
                raise DasuiteError(message)
            warnings.append(f"{message}; each counts as a replicate")
        seen[label, r.run.fold] = r.run.path
    rep = replicate_stats([(label, r.run.fold, r.values) for label, r in zip(labels, rows)], keys, confidence)
    for unit, missing in rep.missing.items():
        warnings.append(f"group {name!r}: {unit} lacks fold {', '.join(map(str, missing))}; excluded from the fold "
                        "average")
    for k, count in rep.undefined.items():
        if rep.samples[k] and count:
            warnings.append(f"group {name!r}: {_key_label(k)} is undefined in {count} of {len(rep.units)} "
                            "replicates; its statistics use the others")
    return GroupStats(name, value, rows, rep)


def _find_baseline(baseline: str, groups: dict[str, GroupStats], group_by: str) -> str:
    if baseline in groups:
        return baseline
    try:  # "--baseline 6.0e-5" for the group of optim.lr 6e-05
        parsed = yaml.safe_load(baseline)
    except yaml.YAMLError:
        parsed = baseline
    for name, g in groups.items():
        if g.value == parsed and not isinstance(parsed, (dict, list)):
            return name
    raise DasuiteError(f"--baseline {baseline!r} is not a group; the groups by {group_by} are: {', '.join(groups)}")


def build_report(runs: Sequence[RunRecord], split: str | None = None, group_by: str = "experiment",
                 baseline: str | None = None, confidence: float = 0.95, checkpoint: str | None = None) -> Report:
    """Group the finished runs by ``group_by`` (experiment | method | arch | a dotted config key) and compute per
    group the statistics of mIoU, mAcc, aAcc and each class IoU; with ``baseline``, Welch comparisons of every other
    group with it. Each run contributes the result of ``checkpoint`` (``best``, the default, or ``last``) on
    ``split`` (``test``, ``val``; None: test when the run has one, else val); ``split="best"`` / ``"final"`` (the
    former names) mean val with the best / last checkpoint."""
    split, checkpoint = resolve_selection(split, checkpoint)
    if not 0.0 < confidence < 1.0:
        raise DasuiteError(f"--confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence}")
    rows, skipped, warnings, values = [], [], [], {}
    for run in sorted(runs, key=lambda r: (r.experiment, r.seed is None, r.seed or 0, r.fold or 0, str(r.path))):
        picked = _pick_result(run, split, checkpoint)
        if isinstance(picked, str):
            skipped.append((str(run.path), picked))
            warnings.append(f"skipped {run.path}: {picked}")
            continue
        used, ckpt, result = picked
        value = _group_value(run, group_by)
        values.setdefault(_label(value), value)
        rows.append(RunResult(run, _label(value), used, result.get("iteration"),
                              _values(result, f"{run.path / 'summary.json'}: {used}"), ckpt))
    if not rows:
        listed = "; ".join(f"{p} ({why})" for p, why in skipped) or "none given"
        raise DasuiteError(f"no finished runs to report; runs found: {listed}")
    classes = list(dict.fromkeys(k[len(CLASS_PREFIX):] for r in rows for k in r.values if k.startswith(CLASS_PREFIX)))
    metrics = (*METRICS, *dict.fromkeys(k for r in rows for k in r.values if k.startswith(SUBSET_PREFIX)))
    keys = [*metrics, *(CLASS_PREFIX + c for c in classes)]
    groups = {}
    for name, value in values.items():
        members = [r for r in rows if r.group == name]
        splits = sorted({r.split for r in members})
        if len(splits) > 1:
            warnings.append(f"group {name!r} mixes splits ({', '.join(splits)}); pass --split to use one")
        checkpoints = sorted({r.checkpoint for r in members})
        if len(checkpoints) > 1:
            warnings.append(f"group {name!r} mixes checkpoints ({', '.join(checkpoints)}): runs without validation "
                            "have only their last checkpoint")
        groups[name] = _group_stats(name, value, members, keys, confidence, warnings)
    comparisons = []
    if baseline is not None:
        baseline = _find_baseline(baseline, groups, group_by)
        base = groups[baseline]
        comparisons = [(name, baseline, k, welch(g.rep.samples[k], base.rep.samples[k], confidence))
                       for name, g in groups.items() if name != baseline for k in keys]
    return Report(rows, groups, comparisons, classes, skipped, warnings, split, group_by, baseline, confidence,
                  checkpoint, metrics)


# ------------------------------------------------------------------------------------------------------ rendering
def _key_label(key: str) -> str:
    return f"IoU {key[len(CLASS_PREFIX):]}" if key.startswith(CLASS_PREFIX) else key


def _pct(value: float | None, sign: str = "") -> str | None:
    return None if value is None else f"{100.0 * value:{sign}.2f}"


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _tables(report: Report, per_class: bool) -> list[tuple[str, list[str], list[list[list[str | None]]]]]:
    """(title, header, sections of rows) for each text table."""
    keys = [*report.metrics, *(CLASS_PREFIX + c for c in report.classes)] if per_class else list(report.metrics)
    conf = f"{100 * report.confidence:g}% CI"
    tables = []
    exp = [] if report.group_by == "experiment" else ["experiment"]  # tags repeat across experiments
    runs = [[[g, *(r.run.experiment for _ in exp), r.run.tag, _str(r.run.seed), _str(r.run.fold), r.checkpoint,
              r.split, _str(r.iteration), *(_pct(r.values.get(k)) for k in keys)] for r in report.runs if r.group == g]
            for g in report.groups]
    used = report.selection()
    tables.append((f"Runs ({used}; %; ckpt best = highest validation score, last = end of training)",
                   ["group", *exp, "tag", "seed", "fold", "ckpt", "split", "iter", *map(_key_label, keys)], runs))
    groups = [g.rep for g in report.groups.values()]
    folded = any(rep.folds for rep in groups)
    stats = [[[name, _key_label(k), str(rep.stats[k].n), *map(_pct, (rep.stats[k].mean, rep.stats[k].std,
               rep.stats[k].ci))] for k in keys] for name, rep in zip(report.groups, groups)]
    tables.append((f"Groups by {report.group_by} ({used}): mean, sample std, {conf} half-width (Student t) over "
                   f"{'replicates (runs; seeds with their folds averaged)' if folded else 'runs'} (%)",
                   ["group", "metric", "n", "mean", "std", f"± {conf}"], stats))
    if folded:
        folds = [[[name, str(i), str(len(rep.units)), *(_pct(m.get(k)) for k in keys)]
                  for i, m in rep.fold_means.items()] for name, rep in zip(report.groups, groups) if rep.folds]
        tables.append((f"Per-fold means over the seeds used ({used}; %)", ["group", "fold", "n", *map(_key_label, keys)],
                       folds))
    if report.comparisons:
        shown = set(keys)
        rows = [[g, _key_label(k), str(c.n_a), str(c.n_b), _pct(c.diff, "+"), _pct(c.ci),
                 None if c.df is None else f"{c.df:.1f}", None if c.p_value is None else f"{c.p_value:.3g}"]
                for g, _, k, c in report.comparisons if k in shown]
        sections = [[row for row in rows if row[0] == g] for g in report.groups if g != report.baseline]
        tables.append((f"Difference to baseline {report.baseline!r} ({used}; group - baseline, % points; Welch {conf}, "
                       "two-sided p)", ["group", "metric", "n", "n base", "diff", f"± {conf}", "df", "p"], sections))
    return tables


def _summary_json(s: Summary) -> dict:
    return {"n": s.n, "mean": s.mean, "std": s.std, "ci": s.ci}


def _split_keys(values: dict[str, Any], per_class: bool, metrics: Sequence[str], convert=lambda v: v) -> dict:
    out = {m: convert(values.get(m)) for m in metrics}
    if per_class:
        out["iou"] = {k[len(CLASS_PREFIX):]: convert(v) for k, v in values.items() if k.startswith(CLASS_PREFIX)}
    return out


def _to_json(report: Report, per_class: bool) -> dict:
    runs = [{"path": str(r.run.path), "experiment": r.run.experiment, "tag": r.run.tag, "group": r.group,
             "seed": r.run.seed, "fold": r.run.fold, "checkpoint": r.checkpoint, "split": r.split,
             "iteration": r.iteration,
             **_split_keys(r.values, per_class, report.metrics)} for r in report.runs]
    groups = {g.name: {"value": g.value, "n": len(g.rep.units), "units": g.rep.units, "folds": g.rep.folds,
                       "excluded": g.rep.missing,
                       **_split_keys(g.rep.stats, per_class, report.metrics, _summary_json),
                       "fold_means": {str(i): {"n": len(g.rep.units), **_split_keys(m, per_class, report.metrics)}
                                      for i, m in g.rep.fold_means.items()}}
              for g in report.groups.values()}
    comparisons = [{"group": g, "baseline": b, "metric": "IoU" if k.startswith(CLASS_PREFIX) else k,
                    "class": k[len(CLASS_PREFIX):] if k.startswith(CLASS_PREFIX) else None, "n": c.n_a,
                    "n_baseline": c.n_b, "diff": c.diff, "ci": c.ci, "df": c.df, "p_value": c.p_value}
                   for g, b, k, c in report.comparisons if per_class or not k.startswith(CLASS_PREFIX)]
    settings = {"checkpoint": report.checkpoint, "split": report.split or "test, else val",
                "used": report.selection(), "group_by": report.group_by, "baseline": report.baseline,
                "confidence": report.confidence, "values": "fractions 0..1"}
    return {"settings": settings, "runs": runs, "groups": groups, "comparisons": comparisons,
            "skipped": [{"path": p, "reason": why} for p, why in report.skipped], "warnings": report.warnings}


def format_report(report: Report, fmt: str = "table", per_class: bool = False) -> str:
    """``table`` / ``markdown``: titled tables (runs, group statistics, per-fold means when there are folds,
    comparisons with a baseline), percentages with 2 decimals, ``-`` when undefined; ``csv``: the same tables, each
    starting with its header row, separated by an empty line; ``json``: fractions (see ``docs/report.md``)."""
    if fmt not in FORMATS:
        raise DasuiteError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(_to_json(report, per_class), indent=2)
    blocks = []
    for title, header, sections in _tables(report, per_class):
        grid = _render(header, sections, fmt)
        blocks.append(grid if fmt == "csv" else f"**{title}**\n\n{grid}" if fmt == "markdown" else f"{title}\n{grid}")
    return "\n\n".join(blocks)
