"""Render evaluation results (the dict of ``SegMetrics.to_json``) as text for the CLI.

Formats: ``table`` (aligned plain text), ``markdown`` (GitHub table), ``csv`` (header + rows, same grid as the
table) and ``json`` (the dicts themselves, indent 2). In the text formats, fractions are shown as percentages
with 2 decimals, as papers and users report them; the mean loss and seconds per image with 4 decimals;
undefined values (None) as ``-`` (an empty cell in csv).
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Callable, Literal, Mapping, Sequence

from dasuite.errors import DasuiteError

__all__ = ["FORMATS", "Format", "format_comparison", "format_result"]

Format = Literal["table", "markdown", "csv", "json"]
FORMATS: tuple[str, ...] = ("table", "markdown", "csv", "json")

RESULT_KEYS = ("mIoU", "mAcc", "aAcc", "fwIoU", "iou", "acc", "mean_loss", "sec_per_image", "num_images")

Row = Sequence[str]


def _number(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DasuiteError(f"{where}: expected a number or null, got {value!r}")
    return None if math.isnan(value) else float(value)


def _percent(value: object, where: str) -> str | None:
    v = _number(value, where)
    return None if v is None else f"{100.0 * v:.2f}"


def _decimal4(value: object, where: str) -> str | None:
    v = _number(value, where)
    return None if v is None else f"{v:.4f}"


def _integer(value: object, where: str) -> str | None:
    v = _number(value, where)
    return None if v is None else str(int(v))


# Summary rows: (label shown, key in the result dict, formatter).
_SUMMARY: tuple[tuple[str, str, Callable[[object, str], str | None]], ...] = (
    ("mIoU (%)", "mIoU", _percent),
    ("mAcc (%)", "mAcc", _percent),
    ("aAcc (%)", "aAcc", _percent),
    ("fwIoU (%)", "fwIoU", _percent),
    ("mean loss", "mean_loss", _decimal4),
    ("sec per image", "sec_per_image", _decimal4),
    ("images", "num_images", _integer),
)


def _check_result(result: object, where: str) -> Mapping:
    """A clear error for a malformed result (e.g. a hand-edited or truncated metrics.jsonl line)."""
    if not isinstance(result, Mapping):
        raise DasuiteError(f"{where}: expected a result object (dict), got {type(result).__name__}")
    for key in RESULT_KEYS:
        if key not in result:
            raise DasuiteError(f"{where}: missing key {key!r}; a result has the keys {', '.join(RESULT_KEYS)}")
    for key in ("iou", "acc"):
        if not isinstance(result[key], Mapping):
            raise DasuiteError(f"{where}: {key!r} must map class names to values, got {type(result[key]).__name__}")
    return result


def _summary_rows(results: Sequence[tuple[str, Mapping]]) -> list[list[str | None]]:
    return [
        [label, *(fmt(result[key], f"{where}.{key}") for where, result in results)] for label, key, fmt in _SUMMARY
    ]


def _render(header: Row, sections: Sequence[Sequence[Sequence[str | None]]], fmt: str) -> str:
    """Render a grid (first column = labels, the rest values) made of sections of rows."""
    missing = "" if fmt == "csv" else "-"
    width = len(header)
    filled = [[[missing if c is None else c for c in row] + [""] * (width - len(row)) for row in s] for s in sections]
    rows = [row for section in filled for row in section]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buffer.getvalue().rstrip("\n")
    if fmt == "markdown":

        def md(row: Row) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

        align = ["---"] + ["---:"] * (width - 1)
        return "\n".join([md(header), "| " + " | ".join(align) + " |", *(md(r) for r in rows)])
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(width)]

    def line(row: Row) -> str:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header)]
    for section in filled:
        out.append(rule)
        out.extend(line(r) for r in section)
    return "\n".join(out)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def format_result(result: dict, fmt: Format = "table", per_class: bool = True) -> str:
    """One result as text: per-class rows (class, IoU %, Acc %) when ``per_class``, then the summary rows
    mIoU/mAcc/aAcc/fwIoU (%), mean loss, sec per image, images. ``json`` always returns the whole dict
    (the documented ``dasuite eval --format json`` object, per-class maps included)."""
    _check_format(fmt)
    result = _check_result(result, "result")
    if fmt == "json":
        return json.dumps(dict(result), indent=2)
    sections = []
    if per_class:
        acc = result["acc"]
        sections.append(
            [
                [name, _percent(iou, f"result.iou.{name}"), _percent(acc.get(name), f"result.acc.{name}")]
                for name, iou in result["iou"].items()
            ]
        )
    sections.append(_summary_rows([("result", result)]))
    header = ["class", "IoU (%)", "Acc (%)"] if per_class else ["metric", "value"]
    return _render(header, sections, fmt)


def format_comparison(results: Mapping[str, dict], fmt: Format = "table", per_class: bool = True) -> str:
    """Several named results side by side: columns = result names, rows = per-class IoU (%) (classes in order of
    first appearance; ``-`` where a result lacks the class) then the summary rows. ``json`` returns
    ``{name: result}``. Used e.g. to print a run's target per-class table next to the source-only baseline."""
    _check_format(fmt)
    if not results:
        raise DasuiteError("nothing to compare: no results given")
    checked = [(f"result {name!r}", _check_result(r, f"result {name!r}")) for name, r in results.items()]
    if fmt == "json":
        return json.dumps(dict(results), indent=2)
    sections = []
    if per_class:
        classes = list(dict.fromkeys(name for _, r in checked for name in r["iou"]))
        sections.append(
            [[c, *(_percent(r["iou"].get(c), f"{where}.iou.{c}") for where, r in checked)] for c in classes]
        )
    sections.append(_summary_rows(checked))
    header = ["class (IoU %)" if per_class else "metric", *results.keys()]
    return _render(header, sections, fmt)
