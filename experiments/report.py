"""Ablation tables and plots for a study, read back from MLflow.

``ablate report STUDY`` = :func:`report`: :func:`collect` the study's trial runs,
:func:`build_tables`, :func:`render` them as text, Markdown, CSV or JSON, and
:func:`write_plots`. The tables:

* **Table 1** (the paper's layout): one row per backbone — each pretraining run's name
  (``res50_ep200_p3000``) and the scratch baselines (``scratch_res50``) — and the paper's columns
  AP@0.5, AP[small], AP[medium], AP[large] (``det/AP50``, ``det/AP_small``, ``det/AP_medium``,
  ``det/AP_large``) plus COCO's AP@[.5:.95] (``det/AP``), as in the axis tables, and the
  backbone's kNN top-1 (``swav/knn_top1`` of its pretraining run; ``-`` when absent). Only fine-tuning runs with the study's *most common
  detector settings* enter it, so a norm or head ablation does not mix into the backbone
  comparison. The settings of a run are its ``finetune.*`` params except the seed, the
  backbone-derived ``arch`` and fields that never change a result (data paths, workers, figure
  options); the most common settings are those shared by the most runs, ties going to the
  settings closest to ``DetectionConfig``'s defaults.
* **One table per ablated axis** (the newest launch's ``axes.pretrain`` / ``axes.finetune``
  params, or else every param that varies across the runs): the axis values as rows, every
  other axis held at its most common value. A row with no run at that value (e.g. ``norm=gn``
  only exists on a GroupNorm-pretrained backbone) takes the most common value among its own
  runs instead, and says so in its ``differs`` column.
* **The headline** (:mod:`experiments.headline`) comes first in the text and Markdown output.
* **Not averaged**: pruned, failed and unfinished trials with their reasons
  (``ablate.prune_reason`` / ``ablate.error``). They never enter a mean.

Cells are mean ± sample standard deviation (n - 1) over seeds; ``n`` counts the runs of the
row. A NaN AP (no ground truth in that size range) is left out of its cell, whose own n then
shows. ``*`` marks the best mean of each column. When a config was run more than once (a
failed trial re-run in a later launch), the newest finished run counts and the superseded
attempts are only counted in a note.

Size: about 750 lines in four sections (collecting, tables, rendering, plots) over one model of
the runs (:class:`TrialRun`, :class:`StudyRuns`, :class:`Table`); the plots read the tables' model,
so splitting them off would make a module that imports this one back for its types.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import statistics
import tempfile
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from experiments.redaction import redact
from experiments.spaces import NON_RESULT_FIELDS
from experiments.store import check_store, finite_or_none, store_errors
from experiments.tracking import (
    PARENT_TAG, TAG_ERROR, TAG_HASH, TAG_NAME, TAG_PRUNE_REASON, TAG_PRUNED, TAG_SEED, TAG_STAGE, TAG_UPSTREAM,
    UPSTREAM_SCRATCH, flatten_params, launch_alive, usable_run,
)
from experiments.tracking import TAG_STATE
from experiments.trial import AP50, METRIC_LABELS, STAGE_FINETUNE, STAGES
from experiments.ui import NONE_VALUE
from trainers.swav.collapse import collapse_label
from trainers.swav.knn import RANDOM_TRUNKS, monitor_text

FORMATS = ("table", "md", "csv", "json")
# The columns of every AP table, one label per metric (experiments.trial.METRIC_LABELS): the paper's
# AP@0.5 and AP[small/medium/large], plus COCO's primary AP@[.5:.95].
AP_KEYS = (AP50, "det/AP", "det/AP_small", "det/AP_medium", "det/AP_large")
AXIS_COLUMNS = tuple((METRIC_LABELS[k], k) for k in AP_KEYS)
TABLE1_COLUMNS = AXIS_COLUMNS
KNN_TOP1 = "swav/knn_top1"  # the backbone's weighted kNN top-1 on labeled object crops (pretraining runs)
# Params that are not detector *settings*: the seed (averaged over), the arch (a property of
# the backbone, i.e. of the row) and fields that never change a result.
NOT_SETTINGS = set(NON_RESULT_FIELDS) | {"seed", "arch", "figure_images", "score_threshold"}
CURVE_PANELS = ("norm", "head", "lr_scheme")  # fine-tuning curves grouped by these fields
BACKBONE_AXIS = "finetune.backbone"  # not a param: "swav" or "scratch", derived from the upstream tag
BEST_MARK = "*"


class ReportError(ValueError):
    """A report that cannot be made (unknown or empty study, bad format); one line, names the study."""


# ---------------------------------------------------------------------------
# Collecting runs
# ---------------------------------------------------------------------------


@dataclass
class TrialRun:
    """One trial's MLflow run: what the tables need, without the metric histories."""

    run_id: str
    stage: str
    name: str
    status: str
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # final values (the last step's)
    interrupted: bool = False  # left RUNNING by a launch whose driver is gone


    @property
    def pruned(self) -> bool:
        return self.tags.get(TAG_PRUNED) == "true"

    @property
    def usable(self) -> bool:
        """FINISHED, not pruned, no error, and (fine-tuning) a finite final det/AP50 (:func:`usable_run`)."""
        return usable_run(self.status, self.tags, self.metrics, self.stage)

    @property
    def reason(self) -> str:
        """Why the run is not in the tables (empty when it is)."""
        if self.pruned:
            return "pruned: " + (self.tags.get(TAG_PRUNE_REASON) or "no reason recorded")
        if TAG_ERROR in self.tags or self.status == "FAILED":
            lines = [ln.strip() for ln in self.tags.get(TAG_ERROR, "").strip().splitlines() if ln.strip()]
            return "failed: " + (lines[-1][:300] if lines else "no error recorded")
        if self.interrupted:
            return "interrupted: its launch ended without finishing it; run the launch command again to resume it"
        why = {"skipped": "skipped: its backbone did not survive the launch",
               "stopped": "stopped: run the launch command again to resume it",
               "planned": "planned: its launch has not started it yet"}.get(self.tags.get(TAG_STATE, ""))
        if self.status != "FINISHED" and why:
            return why
        if self.status != "FINISHED":
            return f"unfinished (status {self.status})"
        if self.stage == STAGE_FINETUNE and finite_or_none(self.metrics.get(AP50)) is None:
            return f"no finite {AP50} recorded"
        return ""

    @property
    def seed(self) -> str:
        return self.tags.get(TAG_SEED, self.params.get(f"{self.stage}.seed", "?"))


@dataclass
class StudyRuns:
    """Every trial run of a study, plus the ablated axes; metric histories are fetched on demand."""

    study: str
    tracking_uri: str
    experiment_id: str
    runs: list[TrialRun]
    axes: dict[str, list[str]]  # "pretrain" / "finetune" -> field names
    axes_source: str  # "launch" (the parent run's axes.* params) or "varying params"
    parent_run_id: str | None  # the newest launch's parent run
    client: Any = field(default=None, repr=False)
    _histories: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict, repr=False)

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of a metric, by step; fetched once per run and key."""
        cache_key = (run_id, key)
        if cache_key not in self._histories:
            points = self.client.get_metric_history(run_id, key) if self.client is not None else []
            by_step = {m.step: m.value for m in sorted(points, key=lambda m: (m.step, m.timestamp))}
            self._histories[cache_key] = sorted(by_step.items())
        return self._histories[cache_key]

    def stage(self, stage: str) -> list[TrialRun]:
        """One run per config hash of a stage: the newest usable one if any, else the newest."""
        best: dict[str, TrialRun] = {}
        for run in sorted((r for r in self.runs if r.stage == stage), key=lambda r: r.start_time):
            key = run.tags.get(TAG_HASH) or run.run_id
            current = best.get(key)
            if current is None or run.usable or not current.usable:
                best[key] = run
        return sorted(best.values(), key=lambda r: (r.name, r.start_time))

    def superseded(self) -> int:
        """Runs replaced by a later run of the same config (counted, not listed)."""
        return len(self.runs) - sum(len(self.stage(s)) for s in STAGES)

    def backbone_name(self, run: TrialRun) -> str:
        """The Table 1 row of a fine-tuning run: its pretraining run's name, or ``scratch_<arch>``."""
        upstream = run.tags.get(TAG_UPSTREAM, "")
        if upstream and upstream != UPSTREAM_SCRATCH:
            for pre in self.runs:
                if pre.run_id == upstream:  # a collapsed backbone is never shown without the word
                    return pre.name + (" (collapsed)" if _collapse(pre) else "")
        if " · " in run.name:
            return run.name.split(" · ")[0]
        if upstream == UPSTREAM_SCRATCH:
            return f"{UPSTREAM_SCRATCH}_" + run.params.get("finetune.arch", "?").replace("resnet", "res")
        return upstream[:8] or "unknown backbone"


def _search_all(client: Any, experiment_id: str, filter_string: str = "") -> list[Any]:
    from mlflow.entities import ViewType

    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, order_by=["attributes.start_time DESC"], page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _split_axes(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


def collect(tracking_uri: str, study: str) -> StudyRuns:
    """All trial runs of ``study`` with params, tags and final metrics.

    Raises:
        ReportError: the store cannot be reached, the study does not exist or has no trial runs.
    """
    from mlflow.tracking import MlflowClient

    check_store(tracking_uri, ReportError)
    client = MlflowClient(tracking_uri=tracking_uri)
    with store_errors(tracking_uri, f"reading study {study!r}", ReportError):
        experiment = client.get_experiment_by_name(study)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
            raise ReportError(f"no study {study!r} in {redact(tracking_uri)}; studies: {', '.join(names) or 'none'}")
        found = _search_all(client, experiment.experiment_id)
    trials, launches = [], []
    alive = {r.info.run_id for r in found if r.data.tags.get(TAG_STAGE) == "launch" and launch_alive(r)}
    for r in found:
        stage = r.data.tags.get(TAG_STAGE, "")
        if stage == "launch":
            launches.append(r)
        elif stage in STAGES:
            trials.append(TrialRun(
                run_id=r.info.run_id, stage=stage, name=r.data.tags.get(TAG_NAME) or r.info.run_name or r.info.run_id,
                status=r.info.status, start_time=r.info.start_time or 0, params=dict(r.data.params),
                tags=dict(r.data.tags), metrics=dict(r.data.metrics),
                interrupted=r.info.status == "RUNNING" and r.data.tags.get(PARENT_TAG) not in alive))
    if not trials:
        raise ReportError(f"study {study!r} has no trial runs yet (nothing to report); run `ablate launch SPACE.yaml`")
    parent = launches[0] if launches else None  # newest first
    axes: dict[str, list[str]] = {}
    source = "varying params"
    with_axes = [r for r in launches if any(f"axes.{s}" in r.data.params for s in STAGES)]
    if with_axes:
        params = with_axes[0].data.params
        axes = {s: _split_axes(params.get(f"axes.{s}", "")) for s in STAGES}
        source = "launch"
    runs = StudyRuns(study, tracking_uri, experiment.experiment_id, trials, axes, source,
                     parent.info.run_id if parent else None, client)
    if not with_axes:
        runs.axes = varying_axes(runs)
    return runs


def varying_axes(runs: StudyRuns) -> dict[str, list[str]]:
    """Fields whose params differ across the usable fine-tuning runs (seed and non-result fields excluded)."""
    ft = [r for r in runs.stage("finetune") if r.usable]
    out: dict[str, list[str]] = {s: [] for s in STAGES}
    keys = sorted({k for r in ft for k in r.params})
    for key in keys:
        stage, _, name = key.partition(".")
        if stage not in STAGES or name in NON_RESULT_FIELDS or name == "seed" or (stage == "finetune" and name == "arch"):
            continue
        if len({r.params.get(key) for r in ft if key in r.params}) > 1:
            out[stage].append(name)
    if len({r.tags.get(TAG_UPSTREAM) == UPSTREAM_SCRATCH for r in ft}) > 1:
        out["finetune"].append("backbone")
    return out


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


@dataclass
class Stat:
    """Mean ± sample std of the finite values of a cell; n = how many."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan


@dataclass
class Row:
    """A table row: its label, one cell per column (a Stat or text), the run count and a remark."""

    label: str
    cells: list[Stat | str]
    n: int
    note: str = ""
    run_ids: list[str] = field(default_factory=list)


@dataclass
class Table:
    """One rendered table; ``key`` is stable for machines (``table1``, ``axis:finetune.norm``, ``excluded``)."""

    key: str
    title: str
    row_header: str
    columns: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    has_n: bool = True  # statistical tables show an n column
    note_header: str = ""  # header of the per-row remark column, if any

    def best(self, column: int) -> set[int]:
        """Rows holding the highest mean of a statistical column (ties: all of them)."""
        means = {i: r.cells[column].mean for i, r in enumerate(self.rows)
                 if isinstance(r.cells[column], Stat) and r.cells[column].n}
        if not means:
            return set()
        top = max(means.values())
        return {i for i, m in means.items() if m == top}


def _stat_cells(runs: Sequence[TrialRun], columns: Sequence[tuple[str, str]]) -> list[Stat | str]:
    return [Stat([v for r in runs if (v := finite_or_none(r.metrics.get(key))) is not None]) for _, key in columns]


def _value_key(value: str) -> tuple[int, float, str]:
    """Numbers sort numerically, before text."""
    number = finite_or_none(value)
    return (0, number, "") if number is not None else (1, 0.0, value)


def _settings(run: TrialRun) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in run.params.items()
                        if k.startswith("finetune.") and k.split(".", 1)[1] not in NOT_SETTINGS))


def _defaults() -> dict[str, str]:
    """The trainers' default config values as MLflow params (``finetune.norm`` -> ``frozen_bn``); tie-breaks only."""
    from trainers.common import config_to_dict
    from trainers.detection.config import DetectionConfig
    from trainers.swav.config import SwAVConfig

    out: dict[str, str] = {}
    for stage, cls in (("pretrain", SwAVConfig), ("finetune", DetectionConfig)):
        values = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                values[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                values[f.name] = f.default_factory()  # type: ignore[misc]
        out.update(flatten_params(stage, config_to_dict(values)))
    return out


def _most_common(values: Iterable[str], key: str, defaults: dict[str, str] | None) -> tuple[str | None, dict[str, str] | None]:
    """The most frequent value; a tie goes to the config default, then to the smallest value. Returns (value, defaults)."""
    counts = Counter(values)
    if not counts:
        return None, defaults
    top = max(counts.values())
    tied = sorted((v for v, c in counts.items() if c == top), key=_value_key)
    if len(tied) > 1:
        defaults = defaults if defaults is not None else _defaults()
        if defaults.get(key) in tied:
            return defaults[key], defaults
    return tied[0], defaults


def common_settings(runs: Sequence[TrialRun]) -> tuple[tuple[tuple[str, str], ...], int]:
    """The detector settings shared by the most runs (ties: closest to the config defaults) and their run count."""
    counts = Counter(_settings(r) for r in runs)
    if not counts:
        return (), 0
    top = max(counts.values())
    tied = sorted(s for s, c in counts.items() if c == top)
    if len(tied) > 1:
        defaults = _defaults()
        tied.sort(key=lambda s: -sum(defaults.get(k) == v for k, v in s))  # stable: keeps sorted order on ties
    return tied[0], top


def table1(runs: StudyRuns) -> Table:
    """The paper's Table 1: backbones x AP columns, restricted to the most common detector settings."""
    ft = [r for r in runs.stage("finetune") if r.usable]
    settings, _ = common_settings(ft)
    common = dict(settings)
    groups: dict[str, list[TrialRun]] = {}
    own_recipe = 0
    for r in ft:
        name = runs.backbone_name(r)
        if _settings(r) != settings:
            if not name.startswith(UPSTREAM_SCRATCH):
                continue  # a pretrained backbone under other detector settings: an axis table's row
            # The baseline trained with its own recipe (the fair baseline: bn, uniform, a longer schedule):
            # a row of its own, named by what differs, never dropped for not sharing the pretrained arms' settings.
            diff = [f"{k.split('.', 1)[1]}={v}" for k, v in _settings(r) if common.get(k) != v]
            name = f"{name} ({', '.join(diff)})"
            own_recipe += 1
        groups.setdefault(name, []).append(r)
    order = sorted(groups, key=lambda name: (name.startswith(UPSTREAM_SCRATCH), name))  # the paper puts the baseline last
    rows = [Row(name, [*_stat_cells(groups[name], TABLE1_COLUMNS), _knn_cell(runs, groups[name])], len(groups[name]),
                run_ids=[r.run_id for r in groups[name]]) for name in order]
    varying = {k for k, _ in settings if len({dict(_settings(r)).get(k) for r in ft}) > 1}
    shown = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in settings if k in varying)
    shown_runs = sum(len(g) for g in groups.values())
    notes = [f"fine-tuning runs with the study's most common detector settings: {shown_runs - own_recipe} of {len(ft)}"
             + (f" ({shown})" if shown else "")]
    if own_recipe:
        notes.append(f"{own_recipe} no-pretraining run(s) trained with their own recipe: rows named by the settings "
                     "that differ")
    notes.append(f"{METRIC_LABELS[KNN_TOP1]}: the backbone's {KNN_TOP1} (its pretraining run; - when not measured, "
                 f"e.g. no pretraining), with the mean ± std over {RANDOM_TRUNKS} random initialisations and the raw "
                 "pixels' figure on the same crops")
    collapsed = sorted({f"{pre.name}: {text}" for pre in runs.stage("pretrain") if (text := _collapse(pre))})
    notes += [f"backbone {text} (the run's last epoch; trainers/swav/collapse.py)" for text in collapsed]
    return Table("table1", f"Table 1 — {runs.study}: AP by backbone", "backbone",
                 [*(c for c, _ in TABLE1_COLUMNS), METRIC_LABELS[KNN_TOP1]], rows, notes)


def _collapse(run: TrialRun) -> str | None:
    """``"collapsed: <reasons>"`` for a pretraining run whose last epoch reported ``swav/collapsed``, else None."""
    feat_dim = finite_or_none(run.params.get("pretrain.feat_dim"))
    return collapse_label(run.metrics, int(feat_dim) if feat_dim else None)


def _knn_cell(runs: StudyRuns, group: Sequence[TrialRun]) -> str:
    """The backbone's kNN top-1 with its references (random-init mean ± std, raw pixels) as text: one value per
    backbone, not a mean over seeds; ``-`` when absent."""
    upstream = {r.tags.get(TAG_UPSTREAM) for r in group}
    for pre in runs.runs:
        if pre.run_id in upstream and finite_or_none(pre.metrics.get(KNN_TOP1)) is not None:
            return monitor_text(pre.metrics)
    return "-"


def _axis_value(run: TrialRun, axis: str) -> str | None:
    if axis == BACKBONE_AXIS:
        return UPSTREAM_SCRATCH if run.tags.get(TAG_UPSTREAM) == UPSTREAM_SCRATCH else "swav"
    value = run.params.get(axis)
    # a scratch run records "none" for the pretraining fields it has no value of: not a value of the axis
    return None if axis.startswith("pretrain.") and value == NONE_VALUE else value


def axis_tables(runs: StudyRuns) -> list[Table]:
    """One table per ablated axis; the other axes held at their most common values (see the module docstring)."""
    ft = [r for r in runs.stage("finetune") if r.usable]
    axes = [f"{stage}.{name}" for stage in STAGES for name in runs.axes.get(stage, [])]
    defaults: dict[str, str] | None = None
    modes: dict[str, str | None] = {}
    for axis in axes:
        modes[axis], defaults = _most_common((v for r in ft if (v := _axis_value(r, axis)) is not None), axis, defaults)
    tables = []
    for axis in axes:
        others = [a for a in axes if a != axis and modes[a] is not None]
        values = sorted({v for r in ft if (v := _axis_value(r, axis)) is not None}, key=_value_key)
        rows = []
        for value in values:
            subset = [r for r in ft if _axis_value(r, axis) == value]
            differs = []
            for other in others:
                held = [r for r in subset if _axis_value(r, other) == modes[other]]
                if not held:  # no run at the shared value: take this row's own most common value and say so
                    own, defaults = _most_common((v for r in subset if (v := _axis_value(r, other)) is not None),
                                                 other, defaults)
                    held = [r for r in subset if _axis_value(r, other) == own]
                    differs.append(f"{other}={own}")
                subset = held
            if subset:
                rows.append(Row(value, _stat_cells(subset, AXIS_COLUMNS), len(subset), ", ".join(differs),
                                [r.run_id for r in subset]))
        notes = []
        if others:
            notes.append("other axes held at: " + ", ".join(f"{a}={modes[a]}" for a in others))
        missing = sum(1 for r in ft if _axis_value(r, axis) is None)
        if missing:
            notes.append(f"{missing} run(s) without {axis} left out (scratch baselines have no pretraining params)")
        tables.append(Table(f"axis:{axis}", f"{axis} — {runs.study}: AP by value", axis.split(".", 1)[1],
                            [c for c, _ in AXIS_COLUMNS], rows, notes, note_header="differs"))
    return tables


def excluded_table(runs: StudyRuns) -> Table:
    """Pruned, failed and unfinished trials with their reasons — listed, never averaged."""
    rows = []
    for stage in STAGES:
        for r in runs.stage(stage):
            if r.usable:
                continue
            status = "pruned" if r.pruned else ("failed" if r.status == "FAILED" or TAG_ERROR in r.tags else
                                                "interrupted" if r.interrupted else
                                                r.tags.get(TAG_STATE, r.status.lower()))
            rows.append(Row(r.name, [stage, status, r.reason.split(": ", 1)[-1], r.run_id[:8]], 1, run_ids=[r.run_id]))
    notes = []
    if runs.superseded():
        notes.append(f"{runs.superseded()} earlier attempt(s) superseded by a later run of the same config not listed")
    return Table("excluded", f"Not averaged — {runs.study}: pruned, failed and unfinished trials", "trial",
                 ["stage", "status", "reason", "run"], rows, notes, has_n=False)


def build_tables(runs: StudyRuns) -> list[Table]:
    """Table 1, one table per ablated axis, and the excluded trials."""
    return [table1(runs), *axis_tables(runs), excluded_table(runs)]


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


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
        out += [f"  {n}" for n in _footer(table)] + [""]
    return "\n".join(out).rstrip() + "\n"


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
# Plots
# ---------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    # A Figure without pyplot: no global backend switch (PNG output goes through Agg), safe in threads.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def _prototypes(run: TrialRun) -> float | None:
    k = finite_or_none(run.params.get("pretrain.prototypes"))
    if k:
        return k
    ln_k = finite_or_none(run.metrics.get("swav/ln_k"))
    return math.exp(ln_k) if ln_k is not None else None


def plot_swav_loss(runs: StudyRuns, path: Path) -> Path | None:
    """SwAV loss per epoch for every pretraining run, with a dashed ln K line per K (the collapse level)."""
    from matplotlib.ticker import MaxNLocator

    pre = runs.stage("pretrain")
    curves = [(r, runs.history(r.run_id, "swav/loss")) for r in pre]
    curves = [(r, h) for r, h in curves if h]
    if not curves:
        return None
    fig = _figure(9, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    for run, hist in curves:
        state = " (pruned)" if run.pruned else (" (failed)" if not run.usable else "")
        ax.plot([s for s, _ in hist], [v for _, v in hist], marker="o", markersize=3, linewidth=1.6,
                alpha=0.55 if state else 1.0, label=run.name + state)
    for k in sorted({k for r, _ in curves if (k := _prototypes(r))}):
        ax.axhline(math.log(k), linestyle="--", color="0.35", linewidth=1.0)
        ax.annotate(f"ln K = {math.log(k):.3f} (K = {k:g})", xy=(1.0, math.log(k)), xycoords=("axes fraction", "data"),
                    xytext=(-4, 3), textcoords="offset points", ha="right", va="bottom", fontsize=8, color="0.25")
    ax.set_title(f"{runs.study}: SwAV loss per epoch (dashed: ln K, the loss of a collapsed run)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("swav/loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _is_baseline(label: str) -> bool:
    """A row of the no-pretraining baseline: Table 1's ``scratch_<arch>`` or the backbone axis' ``scratch``."""
    return label == UPSTREAM_SCRATCH or label.startswith(f"{UPSTREAM_SCRATCH}_")


def plot_ap50_curves(runs: StudyRuns, path: Path) -> Path | None:
    """AP50 per evaluation epoch of the pretrained fine-tuning runs, one panel per norm / head / lr scheme that varies.

    Each panel groups the runs by its field with the other varying fields held at their most common
    value (named in the panel's title); the no-pretraining baseline is never mixed into a group but
    drawn on its own, dashed, in every panel.
    """
    from matplotlib.ticker import MaxNLocator

    ft = [r for r in runs.stage("finetune") if r.usable]
    pre = [r for r in ft if r.tags.get(TAG_UPSTREAM) != UPSTREAM_SCRATCH]
    base = [r for r in ft if r.tags.get(TAG_UPSTREAM) == UPSTREAM_SCRATCH]
    panels = [name for name in CURVE_PANELS if len({r.params.get(f"finetune.{name}") for r in pre}) > 1]
    histories = {r.run_id: runs.history(r.run_id, AP50) for r in ft}
    if not panels or not any(histories.values()):
        return None
    modes = {name: _most_common((r.params.get(f"finetune.{name}", "?") for r in pre), f"finetune.{name}", None)[0]
             for name in panels}
    fig = _figure(5.2 * len(panels), 4.8)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]

    def mean_curve(group: Sequence[TrialRun]) -> tuple[list[int], list[float]]:
        per_step: dict[int, list[float]] = {}
        for r in group:
            for s, v in histories[r.run_id]:
                if math.isfinite(v):
                    per_step.setdefault(s, []).append(v)
        steps = sorted(per_step)
        return steps, [statistics.fmean(per_step[s]) for s in steps]

    for p, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        held = {o: modes[o] for o in panels if o != name}
        subset = [r for r in pre if all(r.params.get(f"finetune.{o}") == v for o, v in held.items())]
        groups: dict[str, list[TrialRun]] = {}
        for r in subset:
            groups.setdefault(r.params.get(f"finetune.{name}", "?"), []).append(r)
        for g, value in enumerate(sorted(groups, key=_value_key)):
            colour = colours[g % len(colours)]
            for r in groups[value]:
                hist = [(s, v) for s, v in histories[r.run_id] if math.isfinite(v)]
                if hist:
                    ax.plot([s for s, _ in hist], [v for _, v in hist], color=colour, alpha=0.25, linewidth=0.9)
            steps, means = mean_curve(groups[value])
            if steps:
                ax.plot(steps, means, color=colour, linewidth=2.2, marker="o", markersize=3,
                        label=f"{value} (mean of {len(groups[value])})")
        steps, means = mean_curve(base)
        if steps:
            ax.plot(steps, means, color="0.2", linestyle="--", linewidth=1.8, marker="s", markersize=3,
                    label=f"baseline: no pretraining (mean of {len(base)})")
        held_text = ", ".join(f"{o}={v}" for o, v in held.items())
        ax.set_title(f"by {name}" + (f"\n{textwrap.fill(f'(held: {held_text})', 55)}" if held_text else ""), fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{METRIC_LABELS[AP50]} ({AP50})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    wrap = max(50, int(11 * 5.2 * len(panels)))  # characters per title line at this figure width
    fig.suptitle(textwrap.fill(f"{runs.study}: fine-tuning {METRIC_LABELS[AP50]} per evaluation epoch (thin: runs, "
                               "thick: mean over pretrained backbones and seeds, dashed: baseline)", wrap), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_bars(table: Table, path: Path, column: int = 0) -> Path | None:
    """Bar chart of one statistical column of a table: mean with ± std error bars, n above each bar.

    Drawn only when at least two rows have a value (one bar compares nothing); the no-pretraining
    baseline is grey and hatched, and what the other axes were held at goes in the title.
    """
    rows = [r for r in table.rows if isinstance(r.cells[column], Stat) and r.cells[column].n]
    if len(rows) < 2:
        return None
    means = [r.cells[column].mean for r in rows]
    stds = [r.cells[column].std if math.isfinite(r.cells[column].std) else 0.0 for r in rows]
    fig = _figure(max(5.0, 1.1 * len(rows) + 2.5), 4.8)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(rows)))
    baseline = [_is_baseline(r.label) for r in rows]
    bars = ax.bar(xs, means, yerr=stds, capsize=5, alpha=0.85, ecolor="0.2",
                  color=["0.6" if b else "tab:blue" for b in baseline], hatch=None)
    for bar, is_base in zip(bars, baseline):
        if is_base:
            bar.set_hatch("//")
    for bar, row, mean, std in zip(bars, rows, means, stds):
        ax.annotate(f"{mean:.3f}\nn={row.cells[column].n}", xy=(bar.get_x() + bar.get_width() / 2, mean + std),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    labels = [r.label + (" (baseline)" if b else "") + (f"\n({r.note})" if r.note else "") for r, b in zip(rows, baseline)]
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=20 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center", fontsize=8)
    ax.set_xlabel(table.row_header)
    ax.set_ylabel(table.columns[column])
    ax.set_ylim(0, max(m + s for m, s in zip(means, stds)) * 1.25 or 1.0)
    held = next((n.split(": ", 1)[1] for n in table.notes if n.startswith("other axes held at: ")), "")
    wrap = max(45, int(11 * fig.get_figwidth()))  # characters per title line at this figure width
    ax.set_title(textwrap.fill(f"{table.title.split(' — ')[0]}: {table.columns[column]} (mean ± std over seeds)", wrap)
                 + (f"\n{textwrap.fill('held: ' + held, wrap)}" if held else ""), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_plots(runs: StudyRuns, out_dir: str | Path) -> list[Path]:
    """Write the PNGs into ``out_dir``: ``swav_loss.png``, ``ap50_curves.png`` and ``bars_<table>.png`` per table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_swav_loss(runs, out / "swav_loss.png"), plot_ap50_curves(runs, out / "ap50_curves.png")]
    for table in build_tables(runs):
        if table.has_n:
            written.append(plot_bars(table, out / f"bars_{_safe_name(table.key.replace('axis:', ''))}.png"))
    return [p for p in written if p is not None]


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def report(tracking_uri: str, study: str, fmt: str = "table", out_dir: str | Path | None = None,
           log_to_parent: bool = True, say: Callable[[str], None] | None = None) -> str:
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


def headline_axes(runs: StudyRuns) -> list[str]:
    """The ablated params the headline compares: the experiment's ``ablate.axes`` tag (what the launch used), else
    the report's axes (``backbone`` as ``finetune.backbone``)."""
    from experiments.ui import AXES_TAG

    tag = runs.client.get_experiment(runs.experiment_id).tags.get(AXES_TAG, "") if runs.client is not None else ""
    if tag:
        return [a for a in tag.split(",") if a]
    return [f"{stage}.{name}" for stage in STAGES for name in runs.axes.get(stage, [])]


def study_headline(runs: StudyRuns) -> Any:
    """The study's :class:`~experiments.headline.Headline`, from the collected runs."""
    from experiments.headline import compute_headline, trials_from_runs

    axes = headline_axes(runs)
    return compute_headline(trials_from_runs(runs.stage(STAGE_FINETUNE), axes), axes)


def _with_headline(headline: Any, tables: Sequence[Table], fmt: str) -> str:
    text = render(tables, fmt)
    if fmt == "table":
        return headline.text() + "\n\n" + text
    if fmt == "md":
        return headline.markdown() + "\n\n" + text
    if fmt == "json":
        payload = json.loads(text)
        return json.dumps({"headline": headline.lines(), **payload}, indent=2) + "\n"
    return text


def _report(runs: StudyRuns, fmt: str, out_dir: str | Path | None, log_to_parent: bool,
            say: Callable[[str], None]) -> str:
    tables = build_tables(runs)
    headline = study_headline(runs)
    text = _with_headline(headline, tables, fmt)
    log = log_to_parent and runs.parent_run_id is not None
    if out_dir is None and not log:
        return text
    with tempfile.TemporaryDirectory(prefix="ablate-report-") as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        plots = write_plots(runs, folder)
        for ext, kind in (("txt", "table"), ("md", "md"), ("csv", "csv"), ("json", "json")):
            (folder / f"report.{ext}").write_text(_with_headline(headline, tables, kind))
        if out_dir is not None:
            say(f"wrote {folder}: report.txt, report.md, report.csv, report.json and {len(plots)} plot(s) "
                f"({', '.join(p.name for p in plots) or 'none'})")
        if log:
            files = [p for p in folder.iterdir() if p.is_file() and (p.suffix == ".png" or p.name.startswith("report."))]
            for path in files:
                runs.client.log_artifact(runs.parent_run_id, str(path), "report")
            say(f"logged {len(files)} file(s) under report/ of launch run {runs.parent_run_id} (the study's newest "
                "launch; --no-log: do not log)")
    return text


def runs_table(tracking_uri: str, study: str, fmt: str = "csv") -> str:
    """Every trial run of ``study``, one per line, with all its params, tags of ours and final metrics.

    Columns: ``run_id, stage, name, status, usable, reason``, then every ``params.*`` and
    ``metrics.*`` seen in the study (sorted), blank where a run has none. ``fmt``: ``csv`` or
    ``json`` (a list of objects). Reads only; writes nothing.

    Raises:
        ReportError: another format, unreachable store, unknown or empty study.
    """
    if fmt not in ("csv", "json"):
        raise ReportError(f"--runs writes one line per run: use --format csv or --format json, not {fmt!r}")
    runs = collect(tracking_uri, study)
    trials = sorted(runs.runs, key=lambda r: (STAGES.index(r.stage), r.name, r.start_time))
    params = sorted({k for r in trials for k in r.params})
    metrics = sorted({k for r in trials for k in r.metrics})
    tags = [TAG_HASH, "ablate.cell", TAG_SEED, TAG_UPSTREAM, TAG_PRUNED, PARENT_TAG]
    header = ["run_id", "stage", "name", "status", "usable", "reason", *(f"tags.{t}" for t in tags),
              *(f"params.{p}" for p in params), *(f"metrics.{m}" for m in metrics)]
    rows = []
    for r in trials:
        rows.append([r.run_id, r.stage, r.name, r.status, str(r.usable).lower(), r.reason,
                     *(r.tags.get(t, "") for t in tags), *(r.params.get(p, "") for p in params),
                     *("" if (v := r.metrics.get(m)) is None else repr(float(v)) for m in metrics)])
    if fmt == "json":
        return json.dumps([dict(zip(header, row)) for row in rows], indent=2) + "\n"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
