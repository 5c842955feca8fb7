"""experiments/results/report/collect.py: the study's runs read back from MLflow (metric histories on demand, the axes
from the launch or the varying params), and what a run's state says about why it is left out."""

from __future__ import annotations

from typing import Any

from experiments.results import report as rep
from experiments.results.report.collect import StudyRuns, TrialRun
from tests.experiments.results.report.helpers import STUDY
from trainers.vocabulary import TAG_ERROR, TAG_HASH, TAG_PRUNED, TAG_PRUNE_REASON, TAG_STATE, TAG_UPSTREAM


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


def _run(run_id: str, status: str = "FINISHED", start: int = 0, ap50: float | None = 0.3,
         tags: dict[str, str] | None = None) -> TrialRun:
    """A fine-tuning run of config hash ``h``."""
    return TrialRun(run_id, "finetune", f"{run_id} · bn · mlp · 357 · seed0", status, start, {"finetune.arch": "resnet18"},
                    {TAG_HASH: "h", **(tags or {})}, {} if ap50 is None else {"det/AP50": ap50})


def test_a_runs_reason_says_why_it_is_left_out() -> None:
    assert _run("ok").reason == "" and _run("ok").usable
    reasons = {
        "pruned": _run("a", tags={TAG_PRUNED: "true", TAG_PRUNE_REASON: "collapse"}),
        "failed": _run("b", "FAILED", tags={TAG_ERROR: "Traceback ...\nRuntimeError: boom\n"}),
        "stopped": _run("c", "KILLED", tags={TAG_STATE: "stopped"}),
        "running": _run("d", "RUNNING"),
        "no AP50": _run("e", ap50=float("nan")),
    }
    assert {k: r.reason for k, r in reasons.items()} == {
        "pruned": "pruned: collapse", "failed": "failed: RuntimeError: boom",
        "stopped": "stopped: run the launch command again to resume it", "running": "unfinished (status RUNNING)",
        "no AP50": "no finite det/AP50 recorded"}
    assert not any(r.usable for r in reasons.values())
    interrupted = TrialRun("f", "pretrain", "f", "RUNNING", 0, {}, {}, {}, interrupted=True)
    assert interrupted.reason.startswith("interrupted: its launch ended without finishing it")


def test_one_run_per_config_the_newest_usable_and_backbones_by_name() -> None:
    pre = TrialRun("pre", "pretrain", "res18_ep2_p30", "FINISHED", 0, {}, {TAG_HASH: "p"}, {})
    old_ok, new_failed = _run("old", start=1), _run("new", "FAILED", start=2)
    scratch = TrialRun("s", "finetune", "s", "FINISHED", 3, {"finetune.arch": "resnet18"},
                       {TAG_HASH: "s", TAG_UPSTREAM: "scratch"}, {"det/AP50": 0.2})
    runs = StudyRuns("s", "sqlite:///unused.db", "1", [pre, new_failed, old_ok, scratch], {}, "launch", None)
    assert runs.stage("finetune") == [old_ok, scratch]  # a failed re-run does not hide the usable one before it
    assert runs.superseded() == 1
    again = _run("again", start=5)
    assert StudyRuns("s", "", "1", [old_ok, again], {}, "launch", None).stage("finetune") == [again]  # newest usable
    on_pre = TrialRun("t", "finetune", "t", "FINISHED", 4, {}, {TAG_UPSTREAM: "pre"}, {})
    assert runs.backbone_name(on_pre) == "res18_ep2_p30" and runs.backbone_name(scratch) == "scratch_res18"
    assert runs.history("pre", "swav/loss") == []  # no client: no history, and no error
