"""experiments/results/report/render.py: the tables as aligned text, Markdown, CSV and JSON, each parsed back."""

from __future__ import annotations

import csv
import io
import json
import statistics
from typing import Any

import pytest

from experiments.results import report as rep
from experiments.results.report import ReportError
from experiments.results.report.render import WIDTH, render, wrap
from experiments.results.report.tables import Row, Stat, Table


def test_formats_parse(study: dict[str, Any]) -> None:
    tables = study["tables"]
    text = rep.render(tables, "table")
    assert "Table 1" in text and "0.330 ± 0.026" in text and "*" in text
    md = rep.render(tables, "md")
    assert "|---|---:|" in md and md.count("### ") == len(tables)
    rows = list(csv.DictReader(io.StringIO(rep.render(tables, "csv"))))
    cell = next(r for r in rows if r["table"] == "table1" and r["row"] == "res18_ep3_p30" and r["column"] == "AP@0.5")
    assert float(cell["mean"]) == pytest.approx(statistics.fmean([0.30, 0.34, 0.35]))
    assert float(cell["std"]) == pytest.approx(statistics.stdev([0.30, 0.34, 0.35])) and cell["n"] == "3"
    assert any(r["text"] == "RuntimeError: CUDA out of memory" for r in rows)
    payload = json.loads(rep.render(tables, "json"))
    first = payload["tables"][0]
    assert first["key"] == "table1" and first["rows"][0]["cells"]["AP@0.5"]["best"] is True
    with pytest.raises(ReportError, match="format 'xml'"):
        rep.render(tables, "xml")


def test_cells_spell_out_their_count_and_the_formats_keep_nan_and_text_apart() -> None:
    table = Table("axis:finetune.norm", "norm — s: AP by value", "norm", ["AP@0.5", "AP[small]"], [
        Row("bn|gn", [Stat([0.2, 0.4]), Stat([0.1])], 2, note="a|b"),  # one AP_small was NaN: its own n shows
        Row("frozen_bn", [Stat([0.25]), Stat([])], 1),
    ], notes=["held at: x"], note_header="differs")
    text = render([table], "table").splitlines()
    assert text[:2] == ["norm — s: AP by value", "=" * len("norm — s: AP by value")]
    assert text[2].split() == ["norm", "AP@0.5", "AP[small]", "n", "differs"]
    assert text[4].split() == ["bn|gn", "0.300", "±", "0.141*", "0.100", "(n=1)*", "2", "a|b"]
    assert text[5].split() == ["frozen_bn", "0.250", "-", "1"]  # an empty cell is "-", not 0
    md = render([table], "md")
    assert "| bn\\|gn | 0.300 ± 0.141* | 0.100 (n=1)* | 2 | a\\|b |" in md  # a "|" in a cell cannot split it
    cells = json.loads(render([table], "json"))["tables"][0]["rows"][1]["cells"]
    assert cells["AP[small]"] == {"mean": None, "std": None, "n": 0, "best": False}  # NaN is null in JSON
    rows = list(csv.DictReader(io.StringIO(render([table], "csv"))))
    assert [(r["row"], r["column"], r["std"], r["text"]) for r in rows] == [
        ("bn|gn", "AP@0.5", repr(statistics.stdev([0.2, 0.4])), ""), ("bn|gn", "AP[small]", "", ""),
        ("bn|gn", "differs", "", "a|b"), ("frozen_bn", "AP@0.5", "", ""), ("frozen_bn", "AP[small]", "", "")]


def test_wrap_keeps_lines_within_the_width_and_words_whole() -> None:
    words = ["pretrain.prototypes=3000"] * 12
    lines = wrap(" ".join(words), "  ")
    assert len(lines) > 1 and max(map(len, lines)) <= WIDTH
    assert lines[0].startswith("  pretrain") and all(line.startswith("    pretrain") for line in lines[1:])
    assert " ".join(" ".join(lines).split()) == " ".join(words)
    assert wrap("", "  ") == ["  "]
