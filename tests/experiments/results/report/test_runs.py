"""experiments/results/report/runs.py: `ablate report STUDY --runs`, every trial run of the fabricated study
(conftest.py's ``study``) with its params, tags and final metrics, as CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from experiments.results import report as rep
from experiments.results.report import ReportError
from experiments.results.report.runs import runs_table
from tests.experiments.results.report.helpers import FINETUNE, STUDY


def test_runs_export_has_every_run_with_params_and_metrics(study: dict[str, Any]) -> None:
    rows = list(csv.DictReader(io.StringIO(rep.runs_table(study["uri"], STUDY, "csv"))))
    assert len(rows) == len(FINETUNE) + 2 + 3  # fine-tunes, the failed and the pruned one, three pretraining runs
    failed = next(r for r in rows if r["run_id"] == study["ids"]["failed"])
    assert failed["usable"] == "false" and "CUDA out of memory" in failed["reason"]
    first = next(r for r in rows if r["run_id"] == study["ids"][("p30", "bn", 1)])
    assert first["params.finetune.norm"] == "bn" and first["params.pretrain.prototypes"] == "30"
    assert float(first["metrics.det/AP50"]) == pytest.approx(0.27)
    assert first["tags.ablate.seed"] == "1" and first["params.finetune.seed"] == "1"
    assert json.loads(rep.runs_table(study["uri"], STUDY, "json"))[0]["stage"] == "pretrain"
    with pytest.raises(ReportError, match="--format csv or --format json"):
        rep.runs_table(study["uri"], STUDY, "table")


def test_a_format_without_one_line_per_run_is_refused_before_the_store_is_read(tmp_path) -> None:
    with pytest.raises(ReportError, match="--runs writes one line per run: use --format csv or --format json, not 'md'"):
        runs_table(f"sqlite:///{tmp_path}/missing/mlflow.db", STUDY, "md")
    with pytest.raises(ReportError, match="no MLflow store"):
        runs_table(f"sqlite:///{tmp_path}/missing/mlflow.db", STUDY, "json")
    assert list(tmp_path.iterdir()) == []
