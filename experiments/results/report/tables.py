"""The report's tables over the collected runs: Table 1, one table per ablated axis, the excluded trials.

Cells are :class:`Stat` (mean ± sample std over seeds), in rows (:class:`Row`) of a :class:`Table`;
the :mod:`experiments.results.report` docstring says how rows and held values are chosen.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from experiments.results.report.collect import StudyRuns, TrialRun, _collapse
from experiments.spaces import NON_RESULT_FIELDS
from experiments.store.checks import finite_or_none
from experiments.store.tracking import UPSTREAM_SCRATCH, flatten_params
from trainers.swav.references import RANDOM_TRUNKS, monitor_text
from trainers.vocabulary import (
    METRIC_LABELS,
    NONE_VALUE,
    REPORT_METRICS,
    STAGES,
    SWAV_KNN_TOP1,
    TAG_ERROR,
    TAG_STATE,
    TAG_UPSTREAM,
)

# The columns of every AP table, one label per metric (trainers.vocabulary's shown metrics): the paper's
# AP@0.5 and AP[small/medium/large], plus COCO's primary AP@[.5:.95].
AP_KEYS = tuple(REPORT_METRICS)
AXIS_COLUMNS = tuple((METRIC_LABELS[k], k) for k in AP_KEYS)
TABLE1_COLUMNS = AXIS_COLUMNS
# Params that are not detector *settings*: the seed (averaged over), the arch (a property of
# the backbone, i.e. of the row) and fields that never change a result.
NOT_SETTINGS = set(NON_RESULT_FIELDS) | {"seed", "arch", "figure_images", "score_threshold"}
BACKBONE_AXIS = "finetune.backbone"  # not a param: "swav" or "scratch", derived from the upstream tag


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
    from trainers.common.configs import config_to_dict
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
    notes.append(f"{METRIC_LABELS[SWAV_KNN_TOP1]}: the backbone's {SWAV_KNN_TOP1} (its pretraining run; - when not measured, "
                 f"e.g. no pretraining), with the mean ± std over {RANDOM_TRUNKS} random initialisations and the raw "
                 "pixels' figure on the same crops")
    collapsed = sorted({f"{pre.name}: {text}" for pre in runs.stage("pretrain") if (text := _collapse(pre))})
    notes += [f"backbone {text} (the run's last epoch; trainers/swav/collapse.py)" for text in collapsed]
    return Table("table1", f"Table 1 — {runs.study}: AP by backbone", "backbone",
                 [*(c for c, _ in TABLE1_COLUMNS), METRIC_LABELS[SWAV_KNN_TOP1]], rows, notes)


def _knn_cell(runs: StudyRuns, group: Sequence[TrialRun]) -> str:
    """The backbone's kNN top-1 with its references (random-init mean ± std, raw pixels) as text: one value per
    backbone, not a mean over seeds; ``-`` when absent."""
    upstream = {r.tags.get(TAG_UPSTREAM) for r in group}
    for pre in runs.runs:
        if pre.run_id in upstream and finite_or_none(pre.metrics.get(SWAV_KNN_TOP1)) is not None:
            return monitor_text(pre.metrics)
    return "-"


def _axis_value(run: TrialRun, axis: str) -> str | None:
    if axis == BACKBONE_AXIS:
        return UPSTREAM_SCRATCH if run.tags.get(TAG_UPSTREAM) == UPSTREAM_SCRATCH else "swav"
    value = run.params.get(axis)
    # a scratch run records "none" for the pretraining fields it has no value of: not a value of the axis
    return None if axis.startswith("pretrain.") and value == NONE_VALUE else value


def axis_tables(runs: StudyRuns) -> list[Table]:
    """One table per ablated axis; the other axes held at their most common values (see the :mod:`experiments.results.report` docstring)."""
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
        if len(values) < 2:
            continue  # an axis the finished runs hold at one value compares nothing
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
