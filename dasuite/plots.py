"""``dasuite report --plot DIR``: figures of what a report summarises, each PNG with the plotted numbers beside it.

- ``val_miou.png``: validation mIoU against iteration for every run of the report (its ``metrics.jsonl``), thin
  lines per run, and per group the across-replicate mean (thick) with a confidence band (Student t half-width at
  the report's confidence, where at least two replicates have a value); CamVid-style fold runs are averaged per
  seed first, as in the report's statistics. A marker shows the result each run contributes to the report when
  that result is a validation one.
- ``per_class_iou.png``: per group the mean IoU of every class (and mIoU) with whiskers of the report's confidence
  interval: exactly the group statistics of ``build_report``.
- ``pseudo_label_sweep_<name>.png``: a ``dasuite pseudo-label`` manifest's threshold sweep: mIoU of the kept
  pixels and the kept fraction against the confidence threshold, with the threshold that was used.

Every ``X.png`` has an ``X.json`` holding the arrays drawn (fractions 0..1; the figures show percentages), so a
figure can be checked against ``dasuite report --format json``, ``metrics.jsonl`` or ``manifest.json``. Files are
written atomically. matplotlib is imported here only, through its object API on the Agg canvas (no pyplot, no
global backend switch), so nothing else in dasuite pays for it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from dasuite.errors import DasuiteError
from dasuite.fileio import atomic_write, read_json, write_json
from dasuite.report import CLASS_PREFIX, Report, RunResult
from dasuite.stats import replicate_stats

__all__ = ["plot_report", "plot_pseudo_label_sweep", "read_curve", "find_manifest"]

CURVE = "val_miou"
PER_CLASS = "per_class_iou"
SWEEP = "pseudo_label_sweep"


def _figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas (imported here: ``dasuite --help`` never loads matplotlib)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # declared in pyproject.toml; a broken install still gets one line
        raise DasuiteError(f"--plot needs matplotlib ({err}); pip install matplotlib") from None
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, data: dict, out_dir: Path, stem: str) -> Path:
    """``stem.png`` and ``stem.json`` (the plotted data), both atomically."""
    png = out_dir / f"{stem}.png"
    atomic_write(png, lambda f: fig.savefig(f, format="png"))
    write_json(data, out_dir / f"{stem}.json")
    return png


def _pct(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else 100.0 * v for v in values]


# ------------------------------------------------------------------------------------------ validation curves
def read_curve(run_dir: Path, metric: str = "mIoU") -> tuple[list[int], list[float | None]]:
    """(iterations, values) of the validation evaluations in ``run_dir/metrics.jsonl``, in iteration order (a
    repeated iteration, e.g. logged again after a resume, keeps its last record)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return [], []
    points: dict[int, float | None] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DasuiteError(f"{path}:{n}: not valid JSON ({err})") from None
        if record.get("split", "val") == "val" and "iteration" in record:
            value = record.get(metric)
            points[int(record["iteration"])] = None if value is None or value != value else float(value)
    its = sorted(points)
    return its, [points[i] for i in its]


def _run_label(r: RunResult, multi: bool) -> str:
    unit = r.run.tag if r.run.seed is None else f"seed{r.run.seed}"
    return (f"{r.run.experiment}:" if multi else "") + unit


def _group_curves(report: Report, name: str) -> dict[str, Any]:
    rows = [r for r in report.runs if r.group == name]
    multi = len({r.run.experiment for r in rows}) > 1
    runs, series = {}, []
    for r in rows:
        its, values = read_curve(r.run.path)
        if not its:
            continue
        label = _run_label(r, multi) + ("" if r.run.fold is None else f" fold{r.run.fold}")
        marker = None
        if r.split == "val":
            marker = {"iteration": r.iteration, "mIoU": r.values["mIoU"], "checkpoint": r.checkpoint}
        runs[label] = {"path": str(r.run.path), "iteration": its, "mIoU": values, "reported": marker}
        series.append((_run_label(r, multi), r.run.fold, dict(zip(its, values))))
    iterations = sorted({i for _, _, points in series for i in points})
    mean, ci, n = [], [], []
    for it in iterations:
        # the runs evaluated at this iteration; fold runs are averaged per seed (a seed lacking a fold is left out)
        present = [(unit, fold, {"mIoU": points[it]}) for unit, fold, points in series if it in points]
        stats = replicate_stats(present, ["mIoU"], report.confidence).stats["mIoU"]
        mean.append(stats.mean)
        ci.append(stats.ci)
        n.append(stats.n)
    return {"runs": runs, "iteration": iterations, "mean": mean, "ci": ci, "n": n}


def _curve_figure(report: Report) -> tuple[Any, dict]:
    data = {"figure": "validation mIoU against iteration", "confidence": report.confidence,
            "values": "fractions 0..1 (the figure shows %)", "band": "mean ± Student-t half-width over replicates",
            "groups": {}}
    fig = _figure(8.0, 5.0)
    ax = fig.add_subplot()
    colours = _colours(len(report.groups))
    for colour, name in zip(colours, report.groups):
        group = _group_curves(report, name)
        if not group["runs"]:
            continue
        data["groups"][name] = group
        for label, run in group["runs"].items():
            ax.plot(run["iteration"], _pct(run["mIoU"]), color=colour, linewidth=0.8, alpha=0.45,
                    gid=f"run:{name}:{label}")
            if run["reported"] is not None and run["reported"]["mIoU"] is not None:
                ax.plot([run["reported"]["iteration"]], [100.0 * run["reported"]["mIoU"]], marker="*",
                        markersize=9, color=colour, linestyle="none", gid=f"reported:{name}:{label}")
        ax.plot(group["iteration"], _pct(group["mean"]), color=colour, linewidth=2.2, gid=f"mean:{name}",
                label=f"{name} (n={max(group['n'], default=0)})")
        low = [m - c if m is not None and c is not None else None for m, c in zip(group["mean"], group["ci"])]
        high = [m + c if m is not None and c is not None else None for m, c in zip(group["mean"], group["ci"])]
        if any(v is not None for v in low):
            ax.fill_between(group["iteration"], _pct(low), _pct(high), color=colour, alpha=0.18, linewidth=0,
                            gid=f"band:{name}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation mIoU (%)")
    ax.set_title(f"Validation mIoU per run; group mean and {100 * report.confidence:g}% CI band (* = reported)")
    ax.grid(True, alpha=0.3)
    if data["groups"]:
        ax.legend(fontsize="small")
    return fig, data


# --------------------------------------------------------------------------------------------- per-class IoU
def _per_class_figure(report: Report) -> tuple[Any, dict]:
    keys = ["mIoU", *(CLASS_PREFIX + c for c in report.classes)]
    labels = ["mIoU", *report.classes]
    data: dict[str, Any] = {"figure": "per-class IoU per group", "used": report.selection(),
                            "confidence": report.confidence, "values": "fractions 0..1 (the figure shows %)",
                            "classes": labels, "groups": {}}
    fig = _figure(max(8.0, 0.55 * len(labels) * max(1, len(report.groups)) ** 0.5 + 2), 5.0)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(report.groups))
    for g, (colour, (name, group)) in enumerate(zip(_colours(len(report.groups)), report.groups.items())):
        stats = [group.rep.stats[k] for k in keys]
        entry = {"mean": [s.mean for s in stats], "ci": [s.ci for s in stats], "n": [s.n for s in stats]}
        data["groups"][name] = entry
        xs = [i + (g - (len(report.groups) - 1) / 2) * width for i in range(len(keys))]
        yerr = [0.0 if c is None else 100.0 * c for c in entry["ci"]]
        ax.bar(xs, _pct(entry["mean"]), width=width, color=colour, label=f"{name} (n={len(group.rep.units)})",
               yerr=yerr, capsize=2, error_kw={"linewidth": 0.8}, gid=f"bars:{name}")
    ax.set_xticks(range(len(keys)), labels, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_title(f"Per-class IoU ({data['used']}); whiskers: {100 * report.confidence:g}% CI")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig, data


# ------------------------------------------------------------------------------------- pseudo-label threshold sweep
def find_manifest(path: str | Path) -> Path:
    """A ``dasuite pseudo-label --out`` folder or its ``manifest.json``."""
    path = Path(path)
    manifest = path / "manifest.json" if path.is_dir() else path
    if not manifest.is_file():
        raise DasuiteError(f"{path}: no pseudo-label manifest (expected a `dasuite pseudo-label --out` folder holding "
                           "manifest.json, or the file itself)")
    return manifest


def _sweep_figure(manifest_path: Path) -> tuple[Any, dict] | str:
    manifest = read_json(manifest_path)
    sweep = manifest.get("sweep") if isinstance(manifest, dict) else None
    if not sweep:
        return (f"{manifest_path} has no threshold sweep (the labelled role had no ground truth: pseudo-label a "
                "labelled copy, e.g. data.target.labelled=true)")
    thresholds = [float(row["threshold"]) for row in sweep]
    miou = [row["mIoU"] for row in sweep]
    kept = [float(row["kept"]) for row in sweep]
    used = manifest.get("threshold")
    data = {"figure": "pseudo-label threshold sweep", "manifest": str(manifest_path),
            "values": "fractions 0..1 (the figure shows %)", "threshold": thresholds, "mIoU": miou, "kept": kept,
            "threshold_used": used, "class_thresholds": manifest.get("class_thresholds")}
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    ax.plot(thresholds, _pct(miou), color="tab:blue", marker="o", markersize=3, gid="mIoU",
            label="mIoU of kept pixels")
    ax.set_xlabel("confidence threshold")
    ax.set_ylabel("mIoU of kept pixels (%)", color="tab:blue")
    right = ax.twinx()
    right.plot(thresholds, _pct(kept), color="tab:orange", marker="s", markersize=3, gid="kept",
               label="kept fraction")
    right.set_ylabel("kept pixels (%)", color="tab:orange")
    if isinstance(used, (int, float)):
        ax.axvline(used, color="grey", linestyle="--", linewidth=1, gid="threshold_used")
    what = f"{manifest.get('experiment', '')} ({manifest.get('role', '')})"
    shown = f"; dashed: threshold used, {used:g}" if isinstance(used, (int, float)) else ""
    ax.set_title(f"Pseudo-labels {what}: threshold sweep{shown}")
    ax.grid(True, alpha=0.3)
    return fig, data


def _stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "manifest"


def plot_pseudo_label_sweep(paths: Sequence[str | Path], out_dir: Path) -> tuple[list[Path], list[str]]:
    """One ``pseudo_label_sweep_<folder>.png`` (+ ``.json``) per manifest; (written files, warnings)."""
    written, warnings, used = [], [], set()
    for given in paths:
        manifest = find_manifest(given)
        made = _sweep_figure(manifest)
        if isinstance(made, str):
            warnings.append(made)
            continue
        stem = f"{SWEEP}_{_stem(manifest.parent.name)}"
        base, k = stem, 2
        while stem in used:
            stem, k = f"{base}_{k}", k + 1
        used.add(stem)
        written.append(_save(*made, out_dir, stem))
    return written, warnings


# ---------------------------------------------------------------------------------------------------- entry point
def _colours(n: int) -> list:
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
               "tab:gray", "tab:olive", "tab:cyan"]
    return [palette[i % len(palette)] for i in range(n)]


def plot_report(report: Report | None, out_dir: str | Path, manifests: Sequence[str | Path] = ()
                ) -> tuple[list[Path], list[str]]:
    """Write the figures of ``report`` (None: only the manifests' sweeps) into ``out_dir``; (written PNGs,
    warnings). Figures without data (no run has a metrics.jsonl, a manifest without ground truth) are skipped with a
    warning."""
    out = Path(out_dir)
    written, warnings = [], []
    if report is not None:
        fig, data = _curve_figure(report)
        if data["groups"]:
            written.append(_save(fig, data, out, CURVE))
        else:
            warnings.append("no validation curve to plot: no reported run has a metrics.jsonl with validation records")
        written.append(_save(*_per_class_figure(report), out, PER_CLASS))
    sweeps, more = plot_pseudo_label_sweep(manifests, out)
    return written + sweeps, warnings + more
