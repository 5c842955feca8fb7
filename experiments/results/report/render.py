"""The tables as text, Markdown, CSV or JSON (:func:`render`), and the ``ablate report`` command (:func:`report`).

:func:`report` puts the headline first, writes the PNGs and ``report.{txt,md,csv,json}`` to ``--out``
and logs them under ``report/`` of the study's newest launch run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from experiments.results.report.collect import ReportError, StudyRuns, collect
from experiments.results.report.plots import write_plots
from experiments.results.report.tables import Stat, Table, build_tables
from experiments.store.sqlite_reader import writer
from experiments.store.checks import store_errors
from trainers.vocabulary import STAGES, STAGE_FINETUNE, TAG_PRETRAIN_SEEDS

FORMATS = ("table", "md", "csv", "json")
BEST_MARK = "*"


def _fmt_stat(stat: Stat, row_n: int, best: bool) -> str:
    if not stat.n:
        return "-"
    text = f"{stat.mean:.3f}" + (f" ± {stat.std:.3f}" if stat.n > 1 else "")
    if stat.n != row_n:
        text += f" (n={stat.n})"
    return text + (BEST_MARK if best else "")


def _text_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    best = [table.best(i) for i in range(len(table.columns))]
    remarks = bool(table.note_header) and any(row.note for row in table.rows)  # no empty remark column
    header = [table.row_header, *table.columns] + (["n"] if table.has_n else []) + ([table.note_header] if remarks else [])
    rows = []
    for index, row in enumerate(table.rows):
        cells = [_fmt_stat(c, row.n, index in best[i]) if isinstance(c, Stat) else str(c) for i, c in enumerate(row.cells)]
        rows.append([row.label, *cells] + ([str(row.n)] if table.has_n else []) + ([row.note] if remarks else []))
    return header, rows


def _footer(table: Table) -> list[str]:
    notes = list(table.notes)
    if table.has_n:
        notes.append(f"mean ± std over seeds (sample std); n = runs; {BEST_MARK} = best mean per column")
    return notes


def _render_text(tables: Sequence[Table]) -> str:
    out = []
    for table in tables:
        header, rows = _text_rows(table)
        out += [table.title, "=" * len(table.title)]
        if not rows:
            out += ["(no runs)"]
        else:
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
            out.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
            out.append("  ".join("-" * w for w in widths))
            out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        out += [line for n in _footer(table) for line in wrap(n, "  ")] + [""]
    return "\n".join(out).rstrip() + "\n"


WIDTH = 120  # the text report's notes, headline and verdict words wrap here


def wrap(text: str, indent: str, more: str = "  ") -> list[str]:
    """``text`` as lines of at most :data:`WIDTH` columns, the first after ``indent``, the rest after ``indent + more``."""
    import textwrap

    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent + more,
                         break_long_words=False, break_on_hyphens=False) or [indent]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _render_md(tables: Sequence[Table]) -> str:
    out = []
    for table in tables:
        header, rows = _text_rows(table)
        out += [f"### {table.title}", ""]
        out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
        out.append("|" + "|".join("---" if i == 0 else "---:" if table.has_n and i <= len(table.columns) else "---"
                                  for i in range(len(header))) + "|")
        out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
        out += [""] + [f"_{_md_cell(n)}_  " for n in _footer(table)] + [""]
    return "\n".join(out).rstrip() + "\n"


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _render_json(tables: Sequence[Table]) -> str:
    payload = []
    for table in tables:
        best = [table.best(i) for i in range(len(table.columns))]
        rows = []
        for index, row in enumerate(table.rows):
            cells: dict[str, Any] = {}
            for i, (name, cell) in enumerate(zip(table.columns, row.cells)):
                if isinstance(cell, Stat):
                    cells[name] = {"mean": _number(cell.mean), "std": _number(cell.std), "n": cell.n,
                                   "best": index in best[i]}
                else:
                    cells[name] = cell
            rows.append({"label": row.label, "n": row.n, "note": row.note, "run_ids": row.run_ids, "cells": cells})
        payload.append({"key": table.key, "title": table.title, "row_header": table.row_header,
                        "columns": table.columns, "rows": rows, "notes": table.notes})
    return json.dumps({"tables": payload}, indent=2) + "\n"


def _render_csv(tables: Sequence[Table]) -> str:
    """Long format, one line per cell: table, row, column, mean, std, n, best, text (for text cells)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["table", "row", "column", "mean", "std", "n", "best", "text"])
    for table in tables:
        best = [table.best(i) for i in range(len(table.columns))]
        for index, row in enumerate(table.rows):
            for i, (name, cell) in enumerate(zip(table.columns, row.cells)):
                if isinstance(cell, Stat):
                    writer.writerow([table.key, row.label, name, "" if not cell.n else repr(cell.mean),
                                     "" if cell.n < 2 else repr(cell.std), cell.n, str(index in best[i]).lower(), ""])
                else:
                    writer.writerow([table.key, row.label, name, "", "", "", "", cell])
            if row.note:
                writer.writerow([table.key, row.label, table.note_header or "note", "", "", "", "", row.note])
    return buf.getvalue()


def render(tables: Sequence[Table], fmt: str = "table") -> str:
    """The tables as ``table`` (aligned text), ``md`` (Markdown), ``csv`` (one line per cell) or ``json``.

    Raises:
        ReportError: unknown ``fmt``.
    """
    if fmt == "table":
        return _render_text(tables)
    if fmt == "md":
        return _render_md(tables)
    if fmt == "csv":
        return _render_csv(tables)
    if fmt == "json":
        return _render_json(tables)
    raise ReportError(f"format {fmt!r} is invalid: choose one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def report(tracking_uri: str, study: str, fmt: str = "table", out_dir: str | Path | None = None,
           log_to_parent: bool = False, say: Callable[[str], None] | None = None) -> str:
    """The study's headline and tables rendered in ``fmt``; plots and the tables in every format written and logged.

    Args:
        tracking_uri: the MLflow store.
        study: the experiment name.
        fmt: ``table``, ``md``, ``csv`` or ``json`` for the returned text (``table`` and ``md`` begin
            with the headline, ``json`` has it as ``headline``; ``csv`` is the cells only).
        out_dir: where the PNGs and ``report.{txt,md,csv,json}`` go (not written when None, unless
            logged — then a temporary folder is used).
        log_to_parent: also log them to the newest launch's parent run under ``report/``.
        say: called with one line per place written to (the CLI prints them on stderr).

    Raises:
        ReportError: bad format, unreachable store, unknown or empty study.
    """
    if fmt not in FORMATS:
        raise ReportError(f"format {fmt!r} is invalid: choose one of {', '.join(FORMATS)}")
    runs = collect(tracking_uri, study)
    with store_errors(tracking_uri, f"reporting study {study!r}", ReportError):  # histories load lazily
        return _report(runs, fmt, out_dir, log_to_parent, say or (lambda line: None))


def _experiment_tags(runs: StudyRuns) -> dict[str, str]:
    return dict(runs.client.get_experiment(runs.experiment_id).tags) if runs.client is not None else {}


def headline_axes(runs: StudyRuns) -> list[str]:
    """The ablated params the headline compares: the experiment's ``ablate.axes`` tag (what the launch used), else
    the report's axes (``backbone`` as ``finetune.backbone``)."""
    from trainers.vocabulary import TAG_AXES

    tag = _experiment_tags(runs).get(TAG_AXES, "")
    if tag:
        return [a for a in tag.split(",") if a]
    return [f"{stage}.{name}" for stage in STAGES for name in runs.axes.get(stage, [])]


def report_headline(runs: StudyRuns) -> Any:
    """The study's :class:`~experiments.results.headline.Headline` (:func:`experiments.results.headline.study_headline`), from the
    collected runs."""
    from experiments.results.headline import study_headline

    return study_headline(runs.client, runs.experiment_id, headline_axes(runs), runs=runs.stage(STAGE_FINETUNE))


def attach_verdicts(tables: Sequence[Table], headline: Any, runs: StudyRuns | None = None) -> None:
    """The judge's verdicts (:mod:`experiments.results.verdict`, through the headline) as notes of the tables they concern:
    the baseline comparison under Table 1, each axis's under its table, and an axis that never varies alone
    marked as confounded; the tables' ``*`` only marks the highest mean. With adaptive seeds, Table 1 also says
    how many seeds each cell got and why it got no more."""
    label = headline.label
    seeds = adaptive_seeds_note(runs) if runs is not None else []
    verdicts = {a.axis: a for a in headline.axes}
    for table in tables:
        if table.key == "table1" and headline.baseline is not None:
            table.notes.append(f"verdict: {headline.baseline.text(label)}")
        if table.key == "table1":
            table.notes += seeds
        elif table.key.startswith("axis:"):
            axis = table.key.split(":", 1)[1]
            if axis in verdicts:
                table.notes += [f"verdict: {c.text(label)}" for c in verdicts[axis].comparisons]
            elif axis in headline.not_comparable:
                table.notes.append("confounded: no two runs differ in this axis alone, so its rows also differ in "
                                   "other settings; no verdict")


def adaptive_seeds_note(runs: StudyRuns) -> list[str]:
    """``adaptive seeds: CELL 6 (max), CELL 3 (decided), ...``: each cell's seeds and why it got no more."""
    from trainers.vocabulary import TAG_CELL, TAG_CELL_SEEDS, TAG_SEEDS_STOP

    cells = {r.tags[TAG_CELL]: (r.tags[TAG_CELL_SEEDS], r.tags.get(TAG_SEEDS_STOP, "?"))
             for r in runs.stage(STAGE_FINETUNE) if TAG_CELL in r.tags and TAG_CELL_SEEDS in r.tags}
    if not cells:
        return []
    shown = ", ".join(f"{cell.rsplit(' · ', 1)[0]}: {n} ({why})" for cell, (n, why) in sorted(cells.items()))
    return [f"adaptive seeds per cell (seeds run, why no more: decided / max / budget): {shown}"]


def verdict_words(headline: Any, pretrain_seeds: str = "") -> list[str]:
    """What the verdict words used in the headline mean, two sentences each, and which variance the intervals hold."""
    from experiments.results.verdict import STATES, explained

    used = {c.state for a in headline.axes for c in a.comparisons}
    used |= {headline.baseline.state} if headline.baseline is not None else set()
    if not used:
        return []
    words = explained([s for s in STATES if s in used])
    if pretrain_seeds:
        words.append(f"variance: each backbone setting was pretrained with seeds {pretrain_seeds}, so the intervals "
                     "of the pretraining axes and of pretrained vs baseline hold the pretraining seeds' variance and "
                     "the fine-tuning seeds'; a fine-tuning axis is compared within each backbone (fine-tuning seeds "
                     "only).")
    else:
        words.append("variance: one pretraining run per backbone setting, so every interval holds the fine-tuning "
                     "seeds' variance only (a space's pretrain: {seeds: [0, 1]} adds the backbones' own).")
    return [f"  {line}" for line in words]


def _with_headline(headline: Any, tables: Sequence[Table], fmt: str, pretrain_seeds: str = "") -> str:
    text = render(tables, fmt)
    words = verdict_words(headline, pretrain_seeds)
    if fmt == "table":
        head = [line for raw in headline.text().splitlines()
                for line in wrap(raw.strip(), raw[:len(raw) - len(raw.lstrip())], "    ")]
        if words:
            head += ["verdict words:", *(line for w in words for line in wrap(w.strip(), "  ", "    "))]
        return "\n".join(head) + "\n\n" + text
    if fmt == "md":
        return headline.markdown() + ("\n\nVerdict words:\n\n" + "\n".join(f"- {w.strip()}" for w in words)
                                      if words else "") + "\n\n" + text
    if fmt == "json":
        payload = json.loads(text)
        return json.dumps({"headline": headline.lines(), **payload}, indent=2) + "\n"
    return text


def _report(runs: StudyRuns, fmt: str, out_dir: str | Path | None, log_to_parent: bool,
            say: Callable[[str], None]) -> str:
    tables = build_tables(runs)
    headline = report_headline(runs)
    attach_verdicts(tables, headline, runs)
    seeds = _experiment_tags(runs).get(TAG_PRETRAIN_SEEDS, "")
    text = _with_headline(headline, tables, fmt, seeds)
    log = log_to_parent and runs.parent_run_id is not None
    if out_dir is None and not log:
        return text
    with tempfile.TemporaryDirectory(prefix="ablate-report-") as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        plots = write_plots(runs, folder)
        for ext, kind in (("txt", "table"), ("md", "md"), ("csv", "csv"), ("json", "json")):
            (folder / f"report.{ext}").write_text(_with_headline(headline, tables, kind, seeds))
        if out_dir is not None:
            say(f"wrote {folder}: report.txt, report.md, report.csv, report.json and {len(plots)} plot(s) "
                f"({', '.join(p.name for p in plots) or 'none'})")
        if log:
            files = [p for p in folder.iterdir() if p.is_file() and (p.suffix == ".png" or p.name.startswith("report."))]
            client = writer(runs.client)
            for path in files:
                client.log_artifact(runs.parent_run_id, str(path), "report")
            say(f"logged {len(files)} file(s) under report/ of launch run {runs.parent_run_id} (the study's newest "
                "launch; asked for by --log)")
    return text
