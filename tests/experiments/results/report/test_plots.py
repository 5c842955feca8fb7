"""experiments/results/report/plots.py: a bar chart only where two rows compare something, and no curve without
metric histories (the PNGs of a whole report: test_report.py)."""

from __future__ import annotations

from pathlib import Path

from experiments.results import report as rep
from experiments.results.report.collect import StudyRuns, TrialRun
from experiments.results.report.plots import plot_ap50_curves, plot_swav_loss, write_plots
from trainers.vocabulary import TAG_UPSTREAM


def test_no_plot_for_an_axis_with_one_value(tmp_path: Path) -> None:
    one = rep.Table("axis:finetune.arch", "finetune.arch — s: AP by value", "arch", ["AP@0.5"],
                    [rep.Row("resnet18", [rep.Stat([0.3, 0.4])], 2)])
    assert rep.plot_bars(one, tmp_path / "one.png") is None and not (tmp_path / "one.png").exists()
    two = rep.Table("table1", "Table 1 — s: AP by backbone", "backbone", ["AP@0.5"],
                    [rep.Row("res18_ep2_p30", [rep.Stat([0.3])], 1), rep.Row("scratch_res18", [rep.Stat([0.4])], 1)],
                    notes=["other axes held at: finetune.norm=bn"])
    assert rep.plot_bars(two, tmp_path / "two.png") == tmp_path / "two.png"
    assert rep._is_baseline("scratch_res18") and rep._is_baseline("scratch") and not rep._is_baseline("res18_ep2_p30")


def test_no_curve_without_metric_histories(tmp_path: Path) -> None:
    pre = TrialRun("p", "pretrain", "res18_ep2_p30", "FINISHED", 0, {"pretrain.prototypes": "30"}, {}, {})
    ft = TrialRun("f", "finetune", "res18_ep2_p30 · bn · mlp · 357 · seed0", "FINISHED", 1, {"finetune.norm": "bn"},
                  {TAG_UPSTREAM: "p"}, {"det/AP50": 0.3})
    runs = StudyRuns("s", "sqlite:///unused.db", "1", [pre, ft], {"pretrain": [], "finetune": []}, "launch", None)
    assert plot_swav_loss(runs, tmp_path / "loss.png") is None
    assert plot_ap50_curves(runs, tmp_path / "ap50.png") is None
    assert write_plots(runs, tmp_path / "out") == []  # one row per table: no bar chart either
    assert list(tmp_path.iterdir()) == [tmp_path / "out"]
