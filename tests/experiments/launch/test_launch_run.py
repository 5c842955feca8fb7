"""experiments.launch.launch_run: the launch's own MLflow run, made or taken over (a dead driver's run ended, a live
one's refused), its heartbeat, its live ``launch/*`` counts and its ``--notify`` warnings. On a fresh MLflow store."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

from experiments.launch.context import LaunchOptions, LaunchSetupError, TrialOutcome
from experiments.launch.launch_run import LaunchRun
from experiments.launch.artifacts import Housekeeping
from experiments.launch.ledger import TrialLedger
from experiments.pruning.scheduler import PruneRecord
from experiments.store.tracking import HEARTBEAT_EVERY_S, driver_id
from trainers import vocabulary as V


def _plan() -> SimpleNamespace:
    return SimpleNamespace(data_fingerprint="fp", pretrain=[SimpleNamespace(config_hash="p1")],
                           finetune=[SimpleNamespace(config_hash="f1"), SimpleNamespace(config_hash="f2")])


def _launch_run(ctx, tmp_path, **kw) -> LaunchRun:
    ctx.data_paths = {"train_annotations": str(tmp_path / "data" / "annotations" / "train.json")}
    return LaunchRun(ctx, TrialLedger(ctx, Housekeeping(ctx)), **kw)


def _launch(tracker, driver: str, beat: float) -> str:
    """An earlier launch run of the study, RUNNING, last beaten at ``beat`` by ``driver`` (host:pid)."""
    return tracker.create_run("launch old", {V.TAG_STAGE: "launch", V.TAG_DRIVER: driver, V.TAG_HEARTBEAT: f"{beat:.0f}"})


def test_a_new_launch_run_records_the_space_the_plan_and_ends_a_dead_drivers_run(launch_ctx, tmp_path):
    ctx = launch_ctx("run_new")
    tracker = ctx.tracker
    dead = _launch(tracker, "otherhost:123", time.time() - 3600)  # no heartbeat for an hour
    alive = _launch(tracker, driver_id(), time.time())  # this very process: a live driver
    launch_run = _launch_run(ctx, tmp_path)
    parent = launch_run.open(_plan())
    assert ctx.parent_run_id == parent and parent not in (dead, alive)
    run = tracker.client.get_run(parent)
    assert run.info.status == "RUNNING" and run.data.tags[V.TAG_STAGE] == "launch"
    assert run.data.tags[V.TAG_DRIVER] == driver_id() and run.data.tags[V.TAG_LAUNCH] == ctx.launch_id
    assert run.data.params["search"] == "grid" and run.data.params["seeds"] == "[0]"
    assert run.data.params["storage_path"] == ctx.storage and run.data.params["space"] == str(ctx.spec.path)
    assert run.data.metrics == {V.LAUNCH_PRETRAIN_PLANNED: 1.0, V.LAUNCH_FINETUNE_PLANNED: 2.0}
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.name == "run_new-data" and dataset.dataset.digest == "fp"
    assert f"{tmp_path / 'data'}" in dataset.dataset.source
    old = tracker.client.get_run(dead)
    assert old.info.status == "KILLED" and old.data.tags[V.TAG_SUPERSEDED_BY] == parent
    assert tracker.client.get_run(alive).info.status == "RUNNING"  # another live launch of the study: left alone
    assert f"launch run {dead[:8]} had lost its driver: ended as KILLED, taken over by {parent[:8]}" \
        in ctx.options.out.getvalue()


def test_resume_takes_over_the_last_unfinished_launch_run_unless_its_driver_lives(launch_ctx, tmp_path):
    import io

    ctx = launch_ctx("run_resume", options=LaunchOptions(resume=True, out=io.StringIO()))
    tracker = ctx.tracker
    stopped = _launch(tracker, "otherhost:123", time.time() - 3600)
    tracker.set_tags(stopped, {V.TAG_STOP_REQUESTED: "user@host"})
    tracker.finish(stopped, "KILLED")
    assert _launch_run(ctx, tmp_path).open(_plan()) == stopped
    run = tracker.client.get_run(stopped)
    assert run.info.status == "RUNNING" and V.TAG_STOP_REQUESTED not in run.data.tags
    assert run.data.tags[V.TAG_DRIVER] == driver_id()
    assert f"resuming launch run {stopped}" in ctx.options.out.getvalue()
    # that launch run is now this live driver's: another --resume must not take it over
    with pytest.raises(LaunchSetupError, match=f"launch run {stopped} of study 'run_resume' is still running "
                                               rf"\(driver {socket.gethostname()}:\d+\); stop it before resuming it"):
        _launch_run(ctx, tmp_path).open(_plan())


def test_the_heartbeat_and_the_live_counts(launch_ctx, tmp_path):
    ctx = launch_ctx("run_counts")
    pruned = {V.STAGE_PRETRAIN: {"t1": PruneRecord("t1", 2, "collapse", {})}}
    launch_run = _launch_run(ctx, tmp_path, pruned=lambda stage: pruned.get(stage, {}))
    assert launch_run.update() == {}  # nothing planned yet: nothing to count
    parent = launch_run.open(_plan())
    launch_run.plan = _plan()
    ledger = launch_run.ledger
    ledger.budgets["t1"] = 8
    for h, status in (("p1", "pruned"), ("f1", "skipped"), ("f2", "failed")):
        stage = V.STAGE_PRETRAIN if h.startswith("p") else V.STAGE_FINETUNE
        ledger.record(TrialOutcome(stage, h, h, "", status))
    counts = launch_run.update()
    assert counts[V.LAUNCH_TRIALS_PLANNED] == 3 and counts[V.LAUNCH_TRIALS_RUN] == 2
    assert (counts[V.LAUNCH_TRIALS_PRUNED], counts[V.LAUNCH_TRIALS_FAILED], counts[V.LAUNCH_FINETUNE_SKIPPED]) == (1, 1, 1)
    assert (counts[V.LAUNCH_PRUNED_EPOCHS_BUDGETED], counts[V.LAUNCH_PRUNED_EPOCHS_SAVED]) == (8, 6)
    launch_run.update()
    history = ctx.tracker.client.get_metric_history(parent, V.LAUNCH_TRIALS_RUN)
    assert [m.step for m in history] == [1, 2]  # one step further per update

    beat = ctx.tracker.client.get_run(parent).data.tags[V.TAG_HEARTBEAT]
    launch_run.last_beat = time.time() - 5
    launch_run.beat()  # beaten 5 s ago: not yet
    assert ctx.tracker.client.get_run(parent).data.tags[V.TAG_HEARTBEAT] == beat
    launch_run.last_beat = time.time() - HEARTBEAT_EVERY_S - 10
    launch_run.beat()
    assert float(ctx.tracker.client.get_run(parent).data.tags[V.TAG_HEARTBEAT]) >= float(beat)
    assert launch_run.last_beat > time.time() - 5


def test_a_failing_notify_command_is_a_warning_and_none_is_silent(launch_ctx, tmp_path):
    import io

    out = io.StringIO()
    ctx = launch_ctx("run_notify", options=LaunchOptions(notify="echo broken >&2; exit 4", out=out))
    launch_run = _launch_run(ctx, tmp_path)
    launch_run.notify("launch_finished", detail="trials planned 3")
    assert out.getvalue() == "warning: notify: the command exited with 4 (launch_finished): broken\n"
    silent = io.StringIO()
    _launch_run(launch_ctx("run_quiet", options=LaunchOptions(out=silent)), tmp_path).notify("launch_failed")
    assert silent.getvalue() == ""
