"""Study reports from a fabricated MLflow sqlite store: table values by hand, formats, plots, errors."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from experiments.results import report as rep
from experiments.results.report import ReportError
from experiments.store.tracking import Tracker
from trainers.vocabulary import (
    TAG_ERROR,
    TAG_HASH,
    TAG_NAME,
    TAG_PRUNED,
    TAG_PRUNE_REASON,
    TAG_SEED,
    TAG_STAGE,
    TAG_UPSTREAM,
)

STUDY = "repstudy"
NAN = float("nan")
# (backbone key, norm, seed) -> final det/AP50, det/AP, det/AP_small, det/AP_medium, det/AP_large
FINETUNE = {
    ("p30", "frozen_bn", 0): (0.30, 0.12, 0.05, 0.20, 0.40),
    ("p30", "frozen_bn", 1): (0.34, 0.14, NAN, 0.22, 0.42),  # no small objects: NaN stays out of the mean
    ("p30", "frozen_bn", 2): (0.35, 0.15, 0.07, 0.25, 0.41),
    ("p100", "frozen_bn", 0): (0.40, 0.18, 0.08, 0.30, 0.50),
    ("p100", "frozen_bn", 1): (0.44, 0.19, 0.09, 0.31, 0.52),
    ("p100", "frozen_bn", 2): (0.41, 0.17, 0.10, 0.29, 0.49),
    ("p30", "bn", 0): (0.25, 0.10, 0.04, 0.15, 0.30),
    ("p30", "bn", 1): (0.27, 0.11, 0.05, 0.16, 0.33),
    ("scratch", "frozen_bn", 0): (0.20, 0.08, 0.01, 0.10, 0.25),
    ("scratch", "frozen_bn", 1): (0.22, 0.09, 0.02, 0.11, 0.27),
    ("scratch", "frozen_bn", 2): (0.21, 0.07, 0.03, 0.12, 0.26),
}
KEYS = ("det/AP50", "det/AP", "det/AP_small", "det/AP_medium", "det/AP_large")
BACKBONES = {"p30": "res18_ep3_p30", "p100": "res18_ep3_p100", "p300": "res18_ep3_p300", "scratch": "scratch_res18"}


def _finetune(tracker: Tracker, parent: str, pre: dict[str, str], bb: str, norm: str, seed: int,
              values: tuple[float, ...], status: str = "FINISHED", tags: dict[str, str] | None = None) -> str:
    name = f"{BACKBONES[bb]} · {norm} · mlp · 357 · seed{seed}"
    run_id = tracker.create_run(name, {
        TAG_STAGE: "finetune", TAG_NAME: name, TAG_HASH: f"ft-{bb}-{norm}-{seed}", TAG_SEED: str(seed),
        TAG_UPSTREAM: pre[bb] if bb in pre else "scratch", TAG_PRUNED: "false", **(tags or {})}, parent_run_id=parent)
    params = {"finetune.norm": norm, "finetune.head": "mlp", "finetune.lr_scheme": "357", "finetune.seed": str(seed),
              "finetune.arch": "resnet18", "finetune.epochs": "2", "finetune.workers": "0",
              "finetune.train_images": f"/data/{seed}/train"}  # a path differs per run: never a setting
    if bb in pre:
        params.update({"pretrain.prototypes": bb[1:], "pretrain.arch": "resnet18", "pretrain.epochs": "3"})
    tracker.log_params_tags(run_id, params=params)
    for epoch in (1, 2):
        tracker.log_metrics(run_id, {k: v * epoch / 2 for k, v in zip(KEYS, values)}, step=epoch)
    tracker.finish(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root}/mlflow.db"
    tracker = Tracker(uri, STUDY)
    parent = tracker.create_run("launch", {TAG_STAGE: "launch"})
    tracker.log_params_tags(parent, params={"axes.pretrain": "prototypes", "axes.finetune": "norm"})
    tracker.finish(parent)
    pre: dict[str, str] = {}
    for bb, k in (("p30", 30), ("p100", 100), ("p300", 300)):
        run_id = tracker.create_run(BACKBONES[bb], {TAG_STAGE: "pretrain", TAG_NAME: BACKBONES[bb], TAG_HASH: f"pre-{bb}",
                                                    TAG_PRUNED: "false"}, parent_run_id=parent)
        tracker.log_params_tags(run_id, params={"pretrain.prototypes": str(k), "pretrain.arch": "resnet18"})
        collapsed = bb == "p300"
        for epoch in (1, 2, 3):
            loss = math.log(k) if collapsed else math.log(k) * (1.0 - 0.2 * epoch)
            knn = {"swav/knn_top1": 0.512} if bb == "p30" else {}  # p100 predates the kNN monitor: "-"
            tracker.log_metrics(run_id, {"swav/loss": loss, "swav/ln_k": math.log(k), **knn}, step=epoch)
        if collapsed:
            tracker.set_tags(run_id, {TAG_PRUNED: "true", TAG_PRUNE_REASON: "collapse: loss at ln K for 3 epochs"})
        tracker.finish(run_id)
        pre[bb] = run_id
    ids: dict[Any, str] = {"collapsed": pre.pop("p300")}
    ids.update({key: _finetune(tracker, parent, pre, key[0], key[1], key[2], v) for key, v in FINETUNE.items()})
    # High scores that must never reach a mean: a failed run and a pruned one.
    ids["failed"] = _finetune(tracker, parent, pre, "p100", "bn", 0, (0.99,) * 5, status="FAILED",
                              tags={TAG_ERROR: "Traceback ...\nRuntimeError: CUDA out of memory"})
    ids["pruned"] = _finetune(tracker, parent, pre, "p100", "bn", 1, (0.98,) * 5,
                              tags={TAG_PRUNED: "true", TAG_PRUNE_REASON: "AP50 below the median at epoch 1"})
    runs = rep.collect(uri, STUDY)
    return {"root": root, "uri": uri, "parent": parent, "ids": ids, "runs": runs, "tables": rep.build_tables(runs)}


def _expected(keys: list[tuple[str, str, int]], column: int) -> tuple[float, float, int]:
    values = [FINETUNE[k][column] for k in keys if not math.isnan(FINETUNE[k][column])]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else NAN), len(values)


def _check(row: rep.Row, keys: list[tuple[str, str, int]], columns: list[int]) -> None:
    assert row.n == len(keys)
    for cell, column in zip(row.cells, columns):
        mean, std, n = _expected(keys, column)
        assert isinstance(cell, rep.Stat) and cell.n == n
        assert cell.mean == pytest.approx(mean, abs=1e-12)
        assert (math.isnan(std) and math.isnan(cell.std)) or cell.std == pytest.approx(std, abs=1e-12)


def _table(study: dict[str, Any], key: str) -> rep.Table:
    return next(t for t in study["tables"] if t.key == key)


def test_table1_values_by_hand(study: dict[str, Any]) -> None:
    table = _table(study, "table1")
    # the paper's columns plus COCO's AP, labelled as in every other table, and the backbone's kNN top-1
    assert table.columns == ["AP@0.5", "AP@[.5:.95]", "AP[small]", "AP[medium]", "AP[large]", "kNN top-1"]
    # bn runs are a norm ablation: not in Table 1; the scratch baseline comes last.
    assert [r.label for r in table.rows] == ["res18_ep3_p100", "res18_ep3_p30", "scratch_res18"]
    for row, bb in zip(table.rows, ("p100", "p30", "scratch")):
        _check(row, [(bb, "frozen_bn", s) for s in (0, 1, 2)], [0, 1, 2, 3, 4])
    assert table.rows[1].cells[2].n == 2  # the NaN AP_small of seed 1 is left out, not averaged as 0
    assert [r.cells[5] for r in table.rows] == ["-", "0.512", "-"]  # absent on an old backbone and on scratch
    assert table.best(0) == {0} and "9 of 11" in table.notes[0]


def test_axis_tables_hold_other_axes(study: dict[str, Any]) -> None:
    norm = _table(study, "axis:finetune.norm")
    assert [r.label for r in norm.rows] == ["bn", "frozen_bn"]
    assert "pretrain.prototypes=30" in norm.notes[0]  # the most common backbone setting
    _check(norm.rows[0], [("p30", "bn", 0), ("p30", "bn", 1)], [0, 1, 2, 3, 4])
    _check(norm.rows[1], [("p30", "frozen_bn", s) for s in (0, 1, 2)], [0, 1, 2, 3, 4])
    protos = _table(study, "axis:pretrain.prototypes")
    assert [r.label for r in protos.rows] == ["30", "100"]  # numeric order; the pruned K=300 has no run
    _check(protos.rows[0], [("p30", "frozen_bn", s) for s in (0, 1, 2)], [0, 1, 2, 3, 4])
    _check(protos.rows[1], [("p100", "frozen_bn", s) for s in (0, 1, 2)], [0, 1, 2, 3, 4])
    assert any("without pretrain.prototypes" in n for n in protos.notes)  # scratch runs left out, said so


def test_pruned_and_failed_listed_not_averaged(study: dict[str, Any]) -> None:
    excluded = _table(study, "excluded")
    rows = {r.run_ids[0]: r for r in excluded.rows}
    ids = study["ids"]
    assert set(rows) == {ids["failed"], ids["pruned"], ids["collapsed"]}
    assert rows[ids["failed"]].cells[:3] == ["finetune", "failed", "RuntimeError: CUDA out of memory"]
    assert rows[ids["pruned"]].cells[:3] == ["finetune", "pruned", "AP50 below the median at epoch 1"]
    assert rows[ids["collapsed"]].cells[:3] == ["pretrain", "pruned", "collapse: loss at ln K for 3 epochs"]
    for table in study["tables"]:
        for row in table.rows:
            assert ids["failed"] not in row.run_ids or table.key == "excluded"
            assert ids["pruned"] not in row.run_ids or table.key == "excluded"
            for cell in row.cells:
                assert not isinstance(cell, rep.Stat) or all(v < 0.9 for v in cell.values)


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


def test_metric_history_loaded_lazily(study: dict[str, Any]) -> None:
    runs = rep.collect(study["uri"], STUDY)
    assert not runs._histories  # collect reads final metrics only
    pre = runs.stage("pretrain")[0]
    assert [s for s, _ in runs.history(pre.run_id, "swav/loss")] == [1, 2, 3]
    assert (pre.run_id, "swav/loss") in runs._histories


def test_axes_fall_back_to_varying_params(study: dict[str, Any]) -> None:
    runs = rep.collect(study["uri"], STUDY)
    assert runs.axes_source == "launch"
    fallback = rep.varying_axes(runs)
    assert fallback["pretrain"] == ["prototypes"]  # workers and data paths vary too, but are not axes
    assert set(fallback["finetune"]) == {"norm", "backbone"}


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


def test_no_plot_for_an_axis_with_one_value(tmp_path: Path) -> None:
    one = rep.Table("axis:finetune.arch", "finetune.arch — s: AP by value", "arch", ["AP@0.5"],
                    [rep.Row("resnet18", [rep.Stat([0.3, 0.4])], 2)])
    assert rep.plot_bars(one, tmp_path / "one.png") is None and not (tmp_path / "one.png").exists()
    two = rep.Table("table1", "Table 1 — s: AP by backbone", "backbone", ["AP@0.5"],
                    [rep.Row("res18_ep2_p30", [rep.Stat([0.3])], 1), rep.Row("scratch_res18", [rep.Stat([0.4])], 1)],
                    notes=["other axes held at: finetune.norm=bn"])
    assert rep.plot_bars(two, tmp_path / "two.png") == tmp_path / "two.png"
    assert rep._is_baseline("scratch_res18") and rep._is_baseline("scratch") and not rep._is_baseline("res18_ep2_p30")


def _one_backbone(tmp_path: Path, study: str, params: dict[str, str] | None = None,
                  metrics: dict[str, float] | None = None) -> tuple[str, Tracker, str, str]:
    """A store with a finished launch run and one pretraining run (p30): (uri, tracker, launch run, backbone run)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, study)
    parent = tracker.create_run("launch", {TAG_STAGE: "launch"})
    tracker.finish(parent)
    pre = tracker.create_run(BACKBONES["p30"], {TAG_STAGE: "pretrain", TAG_NAME: BACKBONES["p30"], TAG_HASH: "pre",
                                                TAG_PRUNED: "false"}, parent_run_id=parent)
    tracker.log_params_tags(pre, params={"pretrain.prototypes": "30", "pretrain.arch": "resnet18", **(params or {})})
    if metrics:
        tracker.log_metrics(pre, metrics, step=3)
    tracker.finish(pre)
    return uri, tracker, parent, pre


def test_table1_keeps_a_baseline_trained_with_its_own_recipe(tmp_path: Path) -> None:
    """The fair baseline (bn, its own schedule) is a row of Table 1 next to the control at the common settings."""
    uri, tracker, parent, pre = _one_backbone(tmp_path, "ownrecipe")
    for seed in (0, 1):
        _finetune(tracker, parent, {"p30": pre}, "p30", "frozen_bn", seed, (0.30 + seed / 100,) * 5)
        _finetune(tracker, parent, {}, "scratch", "frozen_bn", seed, (0.10,) * 5)  # the control
        _finetune(tracker, parent, {}, "scratch", "bn", seed, (0.20 + seed / 100,) * 5)  # the fair baseline
    table = rep.table1(rep.collect(uri, "ownrecipe"))
    assert [r.label for r in table.rows] == ["res18_ep3_p30", "scratch_res18", "scratch_res18 (norm=bn)"]
    assert [r.n for r in table.rows] == [2, 2, 2]
    assert table.rows[2].cells[0].mean == pytest.approx(0.205)
    assert "4 of 6" in table.notes[0] and "own recipe" in table.notes[1]


def test_a_collapsed_backbone_is_never_shown_without_the_word(tmp_path: Path) -> None:
    """Table 1 names a backbone whose last epoch reported swav/collapsed "collapsed", with the reasons in the notes,
    and shows its kNN beside the random initialisations' spread and the raw pixels."""
    uri, tracker, parent, pre = _one_backbone(tmp_path, "collapsed", {"pretrain.feat_dim": "32"}, {
        "swav/knn_top1": 0.2, "swav/knn_top1_random": 0.3, "swav/knn_top1_random_std": 0.02, "swav/knn_top1_pixels": 0.7,
        "swav/prototype_span": 0.38, "swav/collapsed": 1.0})
    for seed in (0, 1):
        _finetune(tracker, parent, {"p30": pre}, "p30", "frozen_bn", seed, (0.30,) * 5)
        _finetune(tracker, parent, {}, "scratch", "frozen_bn", seed, (0.10,) * 5)
    table = rep.table1(rep.collect(uri, "collapsed"))
    assert [r.label for r in table.rows] == ["res18_ep3_p30 (collapsed)", "scratch_res18"]
    assert table.rows[0].cells[5] == "0.200 (random 0.300 ± 0.020, pixels 0.700)"
    assert any("res18_ep3_p30: collapsed: embeddings outside the prototypes' span" in note for note in table.notes)


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
