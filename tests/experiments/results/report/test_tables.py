"""experiments/results/report/tables.py: Table 1, the axis tables and the excluded trials of the fabricated study
(conftest.py's ``study``), their values checked by hand; a baseline trained with its own recipe and a collapsed backbone
in small stores of their own."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Callable

import pytest

from experiments.results import report as rep
from experiments.results.report.tables import Row, Stat, Table
from experiments.store.tracking import Tracker
from tests.experiments.results.report.helpers import BACKBONES, FINETUNE, NAN, finetune
from trainers.vocabulary import TAG_HASH, TAG_NAME, TAG_PRUNED, TAG_STAGE


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


def _one_backbone(uri: str, study: str, params: dict[str, str] | None = None,
                  metrics: dict[str, float] | None = None) -> tuple[str, Tracker, str, str]:
    """A finished launch run and one pretraining run (p30) in the store ``uri``: (uri, tracker, launch run, backbone
    run)."""
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


def test_table1_keeps_a_baseline_trained_with_its_own_recipe(tmp_path: Path, new_store: Callable[[Path], str]) -> None:
    """The fair baseline (bn, its own schedule) is a row of Table 1 next to the control at the common settings."""
    uri, tracker, parent, pre = _one_backbone(new_store(tmp_path), "ownrecipe")
    for seed in (0, 1):
        finetune(tracker, parent, {"p30": pre}, "p30", "frozen_bn", seed, (0.30 + seed / 100,) * 5)
        finetune(tracker, parent, {}, "scratch", "frozen_bn", seed, (0.10,) * 5)  # the control
        finetune(tracker, parent, {}, "scratch", "bn", seed, (0.20 + seed / 100,) * 5)  # the fair baseline
    table = rep.table1(rep.collect(uri, "ownrecipe"))
    assert [r.label for r in table.rows] == ["res18_ep3_p30", "scratch_res18", "scratch_res18 (norm=bn)"]
    assert [r.n for r in table.rows] == [2, 2, 2]
    assert table.rows[2].cells[0].mean == pytest.approx(0.205)
    assert "4 of 6" in table.notes[0] and "own recipe" in table.notes[1]


def test_a_collapsed_backbone_is_never_shown_without_the_word(tmp_path: Path,
                                                              new_store: Callable[[Path], str]) -> None:
    """Table 1 names a backbone whose last epoch reported swav/collapsed "collapsed", with the reasons in the notes,
    and shows its kNN beside the random initialisations' spread and the raw pixels."""
    uri, tracker, parent, pre = _one_backbone(new_store(tmp_path), "collapsed", {"pretrain.feat_dim": "32"}, {
        "swav/knn_top1": 0.2, "swav/knn_top1_random": 0.3, "swav/knn_top1_random_std": 0.02, "swav/knn_top1_pixels": 0.7,
        "swav/prototype_span": 0.38, "swav/collapsed": 1.0})
    for seed in (0, 1):
        finetune(tracker, parent, {"p30": pre}, "p30", "frozen_bn", seed, (0.30,) * 5)
        finetune(tracker, parent, {}, "scratch", "frozen_bn", seed, (0.10,) * 5)
    table = rep.table1(rep.collect(uri, "collapsed"))
    assert [r.label for r in table.rows] == ["res18_ep3_p30 (collapsed)", "scratch_res18"]
    assert table.rows[0].cells[5] == "0.200 (random 0.300 ± 0.020, pixels 0.700)"
    assert any("res18_ep3_p30: collapsed: embeddings outside the prototypes' span" in note for note in table.notes)


def test_cells_are_mean_and_sample_std_and_the_best_mean_is_marked_with_its_ties() -> None:
    cell = Stat([0.30, 0.34, 0.35])
    assert cell.n == 3 and cell.mean == pytest.approx(statistics.fmean(cell.values))
    assert cell.std == pytest.approx(statistics.stdev(cell.values))  # n - 1
    assert math.isnan(Stat([0.3]).std) and math.isnan(Stat([]).mean) and Stat([]).n == 0
    table = Table("t", "t", "row", ["AP@0.5", "note"], [
        Row("a", [Stat([0.1, 0.3]), "x"], 2), Row("b", [Stat([0.3]), "y"], 1), Row("c", [Stat([0.3, 0.3]), "z"], 2),
        Row("d", [Stat([]), "w"], 0)])
    assert table.best(0) == {1, 2}  # ties are all best; an empty cell never is
    assert table.best(1) == set()  # a text column has no best
