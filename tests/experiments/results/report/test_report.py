"""experiments/results/report (the package): `ablate report STUDY` on the fabricated study (conftest.py's ``study``):
the headline first, the plots and tables written and logged to the launch run, its errors; the read-only commands
without torch or MLflow; the package's names are its modules' functions."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from experiments.results import report as rep
from experiments.results.report import ReportError
from experiments.store.tracking import Tracker
from tests.experiments.results.report.helpers import STUDY


def test_report_writes_plots_and_logs_to_parent(study: dict[str, Any], tmp_path: Path) -> None:
    said: list[str] = []
    text = rep.report(study["uri"], STUDY, fmt="md", out_dir=tmp_path / "out", log_to_parent=True, say=said.append)
    assert text.startswith("**Headline**") and "\n### Table 1" in text
    assert said[0].startswith(f"wrote {tmp_path / 'out'}: report.txt") and "bars_table1.png" in said[0]
    assert said[1].startswith("logged ") and study["parent"] in said[1] and "--log" in said[1]
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["ap50_curves.png", "bars_finetune.norm.png", "bars_pretrain.prototypes.png", "bars_table1.png",
                    "swav_loss.png"]
    for name in pngs:
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    assert json.loads((tmp_path / "out" / "report.json").read_text())["tables"]
    logged = {Path(f.path).name for f in MlflowClient(study["uri"]).list_artifacts(study["parent"], "report")}
    assert set(pngs) <= logged and "report.md" in logged


def test_unknown_and_empty_study(study: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=f"no study 'nope'.*studies: .*{STUDY}"):
        rep.report(study["uri"], "nope")
    Tracker(study["uri"], "empty_study")
    with pytest.raises(ReportError, match="'empty_study' has no trial runs"):
        rep.report(study["uri"], "empty_study")
    with pytest.raises(ReportError, match="no MLflow store"):
        rep.report(f"sqlite:///{tmp_path}/none/mlflow.db", STUDY)
    with pytest.raises(ReportError, match="format"):
        rep.report(study["uri"], STUDY, fmt="html")


def test_report_begins_with_the_headline(study: dict[str, Any]) -> None:
    said: list[str] = []
    text = rep.report(study["uri"], STUDY, log_to_parent=False, say=said.append)
    assert not said  # nothing written, nothing said
    lines = text.splitlines()
    assert lines[0] == "headline (det/AP50, means over seeds):"
    assert lines[1].startswith("  best trial: res18_ep3_p100 · frozen_bn · mlp · 357 · seed1  AP@0.5 0.440")
    # cells are averaged over their three seeds: p100 (0.417) beats scratch (0.210), decided by the judge
    assert "best pretrained vs baseline: pretrained res18_ep3_p100 · frozen_bn · mlp · 357 > baseline scratch_res18" in text
    assert "by 0.207 AP@0.5 [" in text and "3 seeds each, decided" in text
    assert "prototypes: 100 > 30 by 0.087 AP@0.5" in text
    # the words explained once, and each axis table carries its axis's verdict (the same judge, the same words)
    assert "verdict words:\n  decided: the 95 % interval of the difference" in text
    head = text[:text.index("Table 1")]
    assert max(map(len, head.splitlines())) <= 120  # the headline and the words wrap at 120 columns
    axis_table = text[text.index("prototypes — "):]
    assert "verdict: 100 > 30 by 0.087 AP@0.5 [" in axis_table
    payload = json.loads(rep.report(study["uri"], STUDY, fmt="json", log_to_parent=False))
    assert payload["headline"][0].startswith("best trial: ")


def test_read_only_commands_import_no_torch(study: dict[str, Any]) -> None:
    """`ablate status`, `status STUDY`, `report STUDY` and `models` read the store without loading torch (4 s of
    imports on a 2-core machine) or MLflow: one process runs them in turn and says what it loaded."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from experiments.cli import main\n"
        f"uri = {study['uri']!r}\n"
        f"for args in (['status'], ['status', {STUDY!r}], ['report', {STUDY!r}], ['models']):\n"
        "    code = main([*args, '--tracking-uri', uri])\n"
        "    print('RESULT', args[0], code, 'torch' in sys.modules, 'torchvision' in sys.modules, 'mlflow' in sys.modules,\n"
        "          file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    results = [ln.split()[1:] for ln in proc.stderr.splitlines() if ln.startswith("RESULT")]
    assert len(results) == 4, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert all(torch == vision == "False" for _, _, torch, vision, _ in results), results
    # on a local sqlite store they read it through experiments/store/sqlite_reader.py: MLflow's import alone costs 1-3 s
    assert all(mlflow == "False" for *_, mlflow in results), results
    assert [code for _, code, *_ in results] == ["0", "0", "0", "0"], proc.stderr[-3000:]


def test_the_package_exports_its_modules_functions() -> None:
    """``collect`` and ``render`` name both a submodule and its function: the package exports the functions."""
    assert sorted(rep.__all__) == sorted(set(rep.__all__)) and all(hasattr(rep, name) for name in rep.__all__)
    for module, names in {"collect": ("collect", "varying_axes", "ReportError"), "tables": ("build_tables", "table1"),
                          "plots": ("write_plots", "plot_bars"), "render": ("render", "report"),
                          "runs": ("runs_table",)}.items():
        source = importlib.import_module(f"experiments.results.report.{module}")
        assert all(getattr(rep, name) is getattr(source, name) for name in names), module
    assert callable(rep.collect) and callable(rep.render)
