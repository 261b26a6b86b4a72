"""Result tables: every format carries the expected numbers and parses as what it claims to be."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
import torch

from dasuite.errors import DasuiteError
from dasuite.metrics import compute_metrics
from dasuite.tables import FORMATS, format_comparison, format_result

NAMES = ["road", "car", "sky", "train"]


@pytest.fixture
def result() -> dict:
    # road: 3/4 right; car: all right, 1 false positive from road; sky: labelled, never right; train: absent.
    matrix = torch.tensor([[3, 1, 0, 0], [0, 4, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    return compute_metrics(matrix).to_json(NAMES, mean_loss=0.123456, sec_per_image=0.05, num_images=3)


@pytest.fixture
def baseline() -> dict:
    matrix = torch.tensor([[2, 2, 0], [1, 3, 0], [0, 0, 1]])
    return compute_metrics(matrix).to_json(["road", "car", "bus"], num_images=3)


def parse_csv(text: str) -> tuple[list[str], dict[str, list[str]]]:
    header, *rows = list(csv.reader(io.StringIO(text)))
    return header, {row[0]: row[1:] for row in rows}


def test_csv_has_header_and_numbers(result: dict) -> None:
    header, rows = parse_csv(format_result(result, "csv", per_class=True))
    assert header == ["class", "IoU (%)", "Acc (%)"]
    assert rows["road"] == ["75.00", "75.00"]
    assert rows["car"] == ["66.67", "100.00"]
    assert rows["sky"] == ["0.00", "0.00"]
    assert rows["train"] == ["", ""]  # absent from label and prediction: undefined
    assert float(rows["mIoU (%)"][0]) == pytest.approx(100 * result["mIoU"], abs=5e-3)
    assert float(rows["aAcc (%)"][0]) == pytest.approx(100 * 7 / 9, abs=5e-3)
    assert float(rows["fwIoU (%)"][0]) == pytest.approx(100 * result["fwIoU"], abs=5e-3)
    assert rows["mean loss"][0] == "0.1235" and rows["sec per image"][0] == "0.0500" and rows["images"][0] == "3"


def test_table_is_aligned(result: dict) -> None:
    text = format_result(result, "table", per_class=True)
    lines = text.splitlines()
    assert lines[0].split() == ["class", "IoU", "(%)", "Acc", "(%)"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    class_rows = {line.split()[0]: line for line in lines if line.split()[0] in NAMES}
    assert class_rows["car"].split() == ["car", "66.67", "100.00"]
    assert class_rows["train"].split() == ["train", "-", "-"]
    # right-aligned numbers: every class row has the same length, as does the header
    assert len({len(row) for row in class_rows.values()} | {len(lines[0])}) == 1
    assert re.search(r"^mIoU \(%\)\s+47\.22$", text, re.M)  # (0.75 + 2/3 + 0) / 3
    assert re.search(r"^images\s+3$", text, re.M)


def test_summary_only_has_no_classes(result: dict) -> None:
    text = format_result(result, "table", per_class=False)
    assert not any(name in text for name in NAMES)
    assert "mAcc (%)" in text and "58.33" in text  # mAcc = (0.75 + 1 + 0) / 3


def test_markdown_has_header_and_separator(result: dict) -> None:
    lines = format_result(result, "markdown", per_class=True).splitlines()
    assert lines[0] == "| class | IoU (%) | Acc (%) |"
    assert re.fullmatch(r"\|( :?-{3,}:? \|)+", lines[1])
    assert "| car | 66.67 | 100.00 |" in lines
    assert all(line.count("|") == 4 for line in lines)
    assert len(lines) == 2 + len(NAMES) + 7


def test_json_round_trip(result: dict) -> None:
    assert json.loads(format_result(result, "json", per_class=True)) == result
    # the json object is the documented `dasuite eval` shape whatever --per-class says
    assert json.loads(format_result(result, "json", per_class=False)) == result


def test_comparison_side_by_side(result: dict, baseline: dict) -> None:
    runs = {"source-only": baseline, "adapted": result}
    header, rows = parse_csv(format_comparison(runs, "csv"))
    assert header == ["class (IoU %)", "source-only", "adapted"]
    assert list(rows)[:5] == ["road", "car", "bus", "sky", "train"]  # union, in order of first appearance
    assert rows["road"] == ["40.00", "75.00"]
    assert rows["bus"] == ["100.00", ""] and rows["sky"] == ["", "0.00"]
    assert rows["mIoU (%)"] == [f"{100 * baseline['mIoU']:.2f}", f"{100 * result['mIoU']:.2f}"]
    assert rows["mean loss"] == ["", "0.1235"]
    table = format_comparison(runs, "table").splitlines()
    assert table[0].split()[-2:] == ["source-only", "adapted"]
    markdown = format_comparison(runs, "markdown").splitlines()
    assert markdown[0] == "| class (IoU %) | source-only | adapted |" and markdown[1].startswith("| --- |")
    assert json.loads(format_comparison(runs, "json")) == runs


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_an_undefined_result(fmt: str) -> None:
    empty = compute_metrics(torch.zeros(2, 2, dtype=torch.int64)).to_json(["a", "b"])
    assert "mIoU" in format_result(empty, fmt, per_class=True)
    assert "a" in format_comparison({"x": empty}, fmt)


def test_malformed_results_raise_clear_errors(result: dict) -> None:
    broken = {k: v for k, v in result.items() if k != "aAcc"}
    with pytest.raises(DasuiteError, match="missing key 'aAcc'"):
        format_result(broken, "table", per_class=True)
    with pytest.raises(DasuiteError, match=r"result 'b'.*iou"):
        format_comparison({"a": result, "b": {**result, "iou": [0.5]}}, "csv")
    with pytest.raises(DasuiteError, match=r"result.mIoU: expected a number"):
        format_result({**result, "mIoU": "high"}, "table", per_class=False)
    with pytest.raises(DasuiteError, match="no results"):
        format_comparison({}, "table")
    with pytest.raises(ValueError, match="expected one of table, markdown, csv, json"):
        format_result(result, "html", per_class=True)  # type: ignore[arg-type]
