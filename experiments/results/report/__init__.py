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
* **The headline** (:mod:`experiments.results.headline`) comes first in the text and Markdown output.
* **Not averaged**: pruned, failed and unfinished trials with their reasons
  (``ablate.prune_reason`` / ``ablate.error``). They never enter a mean.

Cells are mean ± sample standard deviation (n - 1) over seeds; ``n`` counts the runs of the
row. A NaN AP (no ground truth in that size range) is left out of its cell, whose own n then
shows. ``*`` marks the best mean of each column. When a config was run more than once (a
failed trial re-run in a later launch), the newest finished run counts and the superseded
attempts are only counted in a note.

The package, one module per concern over one model of the runs (:class:`TrialRun`,
:class:`StudyRuns`, :class:`Table`), each importing only the ones before it:

* :mod:`experiments.results.report.collect` — the study's runs read back from MLflow (:func:`collect`,
  :func:`varying_axes`) and :class:`ReportError`;
* :mod:`experiments.results.report.tables` — Table 1, the axis tables and the excluded trials (:func:`build_tables`);
* :mod:`experiments.results.report.plots` — the PNGs (:func:`write_plots`; matplotlib is imported only when drawing);
* :mod:`experiments.results.report.render` — text, Markdown, CSV and JSON (:func:`render`) and the command
  itself (:func:`report`: ``--out`` and the log under ``report/`` of the launch run);
* :mod:`experiments.results.report.runs` — ``--runs``, one line per run (:func:`runs_table`).

This module only re-exports their names, so ``from experiments.results.report import ...`` keeps working.
"""

from __future__ import annotations

# Each ``from <submodule> import`` binds its names after loading the submodule, so the functions
# ``collect`` and ``render`` (not the submodules of the same name) are what this package exports.
from experiments.results.report.collect import ReportError, StudyRuns, TrialRun, collect, varying_axes
from experiments.results.report.tables import (
    AP_KEYS, AXIS_COLUMNS, BACKBONE_AXIS, NOT_SETTINGS, TABLE1_COLUMNS, Row, Stat, Table, axis_tables,
    build_tables, common_settings, excluded_table, table1,
)
from experiments.results.report.plots import (
    CURVE_PANELS, _is_baseline, plot_ap50_curves, plot_bars, plot_swav_loss, write_plots,
)
from experiments.results.report.render import (
    BEST_MARK, FORMATS, headline_axes, render, report, report_headline,
)
from experiments.results.report.runs import runs_table

__all__ = [
    "AP_KEYS", "AXIS_COLUMNS", "BACKBONE_AXIS", "BEST_MARK", "CURVE_PANELS", "FORMATS", "NOT_SETTINGS",
    "TABLE1_COLUMNS", "ReportError", "Row", "Stat", "StudyRuns", "Table", "TrialRun", "axis_tables", "build_tables",
    "collect", "common_settings", "excluded_table", "headline_axes", "plot_ap50_curves", "plot_bars",
    "plot_swav_loss", "render", "report", "runs_table", "report_headline", "table1", "varying_axes", "write_plots",
]
