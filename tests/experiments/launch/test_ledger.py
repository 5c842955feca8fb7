"""experiments.launch.ledger: a trial's MLflow run from planned to how it ended (finished, pruned, failed, stopped),
its resume into an earlier launch's run, and the ``ablate.cell`` tag that groups a cell's seeds.

Driven by hand as the Tune callback drives it, on a fresh MLflow store: no Ray, no training.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

from mlflow.tracking import MlflowClient
from pyarrow import fs

from experiments.launch.artifacts import Housekeeping
from experiments.launch.ledger import TrialLedger, cell_tag, epochs_of
from experiments.launch.trial import TrialPayload
from experiments.spaces import Resources
from experiments.store.tracking import PARENT_TAG
from trainers import vocabulary as V


def test_the_seeds_of_a_cell_share_its_tag():
    def tag(config, name, upstream="u1"):
        return cell_tag(config, upstream, name, "fp", Resources())

    seed0 = tag({"head": "mlp", "seed": 0}, "res18_ep2_p30 · bn · mlp · seed0")
    assert seed0 == tag({"head": "mlp", "seed": 1}, "res18_ep2_p30 · bn · mlp · seed1")
    name, _, digest = seed0.rpartition(" · ")
    assert name == "res18_ep2_p30 · bn · mlp" and len(digest) == 8
    assert tag({"head": "res5", "seed": 0}, "res18_ep2_p30 · bn · mlp · seed0") != seed0  # same name, other config
    assert tag({"head": "mlp", "seed": 0}, "res18_ep2_p30 · bn · mlp · seed0", upstream="u2") != seed0
    assert epochs_of(SimpleNamespace(last_result=None)) == 0
    assert epochs_of(SimpleNamespace(last_result={"epoch": 3, "training_iteration": 9})) == 3


def _ledger(ctx, **callables) -> tuple[TrialLedger, str]:
    parent = ctx.tracker.create_run("launch", {V.TAG_STAGE: "launch"})
    ctx.parent_run_id = parent
    return TrialLedger(ctx, Housekeeping(ctx), **callables), parent


def _payload(epochs: int = 3, h: str = "h1", name: str = "res18_ep3_p20") -> TrialPayload:
    return TrialPayload(V.STAGE_PRETRAIN, {"prototypes": 20, "epochs": epochs}, h, name, epochs)


class _Checkpoint:
    """Ray's checkpoint of a trial: a folder ``checkpoint_*`` inside the trial's folder."""

    def __init__(self, path: Path) -> None:
        self.path, self.filesystem = str(path), fs.LocalFileSystem()

    def as_directory(self):
        return contextlib.nullcontext(self.path)


def test_a_trial_run_goes_from_planned_to_running_to_finished(launch_ctx, tmp_path):
    ctx = launch_ctx("ledger_done")
    changes: list[bool] = []
    ledger, parent = _ledger(ctx, on_change=changes.append)
    p = _payload()
    assert ledger.plan_child(p, p.config, None) is None  # a new run: nothing to resume from
    client = ctx.tracker.client
    run = client.get_run(ledger.run_id_for("h1"))
    assert run.info.status == "SCHEDULED" and run.data.tags[V.TAG_STATE] == "planned"
    assert run.data.tags[PARENT_TAG] == parent and run.data.tags[V.TAG_HASH] == "h1"
    assert run.data.tags[V.TAG_GIT] == "0123abc" and run.data.tags[V.TAG_LAUNCH] == ctx.launch_id
    assert run.data.params == {"pretrain.prototypes": "20", "pretrain.epochs": "3", "pretrain.world_size": "1"}

    trial = SimpleNamespace(trial_id="t1", last_result={"epoch": 3}, checkpoint=None)
    ledger.started(p, trial)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "RUNNING" and run.data.tags[V.TAG_TRIAL] == "t1"
    assert run.data.tags[V.TAG_STATE] == "running" and ledger.budgets == {"t1": 3} and changes == [False]
    ledger.log_metrics(p, {"swav/loss": 1.5}, 3)
    ledger.latest(p, {"swav/loss": 1.5})

    folder = tmp_path / "ray" / "pretrain_t1" / "checkpoint_000002"
    folder.mkdir(parents=True)
    (folder / "backbone.safetensors").write_bytes(b"weights")
    (folder / "backbone.json").write_text("{}")
    trial.checkpoint = _Checkpoint(folder)
    assert ledger.completed(V.STAGE_PRETRAIN, p, trial) == "done"
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[V.TAG_STATE] == "finished"
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "backbone")) == [
        "backbone/backbone.json", "backbone/backbone.safetensors"]
    assert not folder.exists()  # its exported model is in the store: the training state goes
    outcome = ledger.outcomes["h1"]
    assert (outcome.status, outcome.epochs_run, outcome.epochs_budget, outcome.metrics) == ("done", 3, 3,
                                                                                            {"swav/loss": 1.5})
    assert changes == [False, False] and ledger.running == {}  # a pretraining result does not move the headline


def test_pruned_failed_and_stopped_trials_each_end_as_theirs(launch_ctx):
    ctx = launch_ctx("ledger_ends")
    failures: list[tuple[str, str]] = []
    pruned = {"t1": SimpleNamespace(reason="collapse at epoch 2: loss/ln K 0.999")}
    ledger, _ = _ledger(ctx, on_failure=lambda trial, detail: failures.append((trial, detail)),
                        prune_record=lambda stage, trial_id: pruned.get(trial_id))
    payloads = [_payload(h=f"h{i}", name=f"trial{i}") for i in (1, 2, 3)]
    trials = [SimpleNamespace(trial_id=f"t{i}", last_result={"epoch": 2}, checkpoint=None) for i in (1, 2, 3)]
    for p, trial in zip(payloads, trials):
        ledger.plan_child(p, p.config, None)
        ledger.planned[p.config_hash] = p
        ledger.started(p, trial)

    assert ledger.completed(V.STAGE_PRETRAIN, payloads[0], trials[0]) == "pruned"
    ledger.failed(V.STAGE_PRETRAIN, payloads[1], trials[1],
                  "Traceback ...\nRuntimeError: cannot reach http://bob:hunter2@db:5432\n")
    assert failures == [("trial2", "RuntimeError: cannot reach http://bob:hunter2@db:5432")]
    assert "hunter2" not in ctx.options.out.getvalue() and "FAILED  trial2: RuntimeError" in ctx.options.out.getvalue()
    ledger.stop_unfinished("interrupted")  # Ctrl-C: the trial still running keeps its checkpoint for the resume

    runs = {r.data.tags[V.TAG_NAME]: r for r in ctx.tracker.find_runs(V.STAGE_PRETRAIN)}
    assert (runs["trial1"].info.status, runs["trial1"].data.tags[V.TAG_STATE]) == ("FINISHED", "pruned")
    assert runs["trial1"].data.tags[V.TAG_PRUNED] == "true"
    assert runs["trial1"].data.tags[V.TAG_PRUNE_REASON] == "collapse at epoch 2: loss/ln K 0.999"
    assert (runs["trial2"].info.status, runs["trial2"].data.tags[V.TAG_STATE]) == ("FAILED", "failed")
    assert runs["trial2"].data.tags[V.TAG_ERROR] == "Traceback ...\nRuntimeError: cannot reach http://bob:***@db:5432\n"
    assert (runs["trial3"].info.status, runs["trial3"].data.tags[V.TAG_STATE]) == ("KILLED", "stopped")
    assert ledger.counts() == {"done": 0, "reused": 0, "pruned": 1, "failed": 1, "skipped": 0, "stopped": 1}
    assert ledger.outcomes["h1"].reason == "collapse at epoch 2: loss/ln K 0.999"


class _Stops:
    def __init__(self, launch: str | None = None, trials: dict[str, str] | None = None) -> None:
        self.launch, self.trials = launch, trials or {}

    def launch_requested(self, fresh: bool = False) -> str | None:
        return self.launch

    def trial_requested(self, run_id: str) -> str | None:
        return self.trials.get(run_id)


def test_a_stop_request_stops_a_trial_before_its_last_epoch_only(launch_ctx):
    ctx = launch_ctx("ledger_stops")
    beats: list[int] = []
    ledger, _ = _ledger(ctx, heartbeat=lambda: beats.append(1))
    p = _payload(epochs=3)
    ledger.plan_child(p, p.config, None)
    ledger.started(p, SimpleNamespace(trial_id="t1"))
    assert ledger.stop_due("t1", 1) is False  # no request reader yet
    ledger.stops = _Stops(trials={ledger.run_id_for("h1"): "user@host"})  # type: ignore[assignment]
    assert ledger.stop_due("t1", 3) is False  # the last epoch: the trial ends normally
    assert ledger.stop_due("unknown", 1) is False
    assert ledger.stop_due("t1", 1) is True and ledger.stopping == {"t1": "user@host"}
    ledger.stops = _Stops()  # type: ignore[assignment]
    assert ledger.stop_due("t1", 2) is True  # once acting on a request, it stays stopping
    ledger.stops = _Stops(launch="user@host")  # type: ignore[assignment]
    assert ledger.stage_stop_due() is False and beats == [1]  # a launch-wide request waits for the running trial
    trial = SimpleNamespace(trial_id="t1", last_result={"epoch": 1}, checkpoint=None)
    assert ledger.completed(V.STAGE_PRETRAIN, p, trial) == "stopped"
    assert ledger.stage_stop_due() is True
    assert "STOPPED res18_ep3_p20 after epoch 1/3 (stopped by `ablate stop`" in ctx.options.out.getvalue()


def test_an_unfinished_run_of_an_earlier_launch_is_taken_over(launch_ctx, tmp_path):
    ctx = launch_ctx("ledger_resume")
    tracker = ctx.tracker
    earlier = tracker.create_run("launch 1", {V.TAG_STAGE: "launch"})
    old = tracker.create_run("res18_ep3_p20", {V.TAG_STAGE: V.STAGE_PRETRAIN, V.TAG_HASH: "h1",
                                               V.TAG_CHECKPOINT: str(tmp_path / "gone" / "checkpoint_000001"),
                                               V.TAG_STOP_REQUESTED: "user@host"}, parent_run_id=earlier)
    tracker.finish(old, "KILLED")
    ledger, parent = _ledger(ctx)
    p = _payload()
    existing = tracker.client.get_run(old)
    assert ledger.plan_child(p, p.config, existing) == str(tmp_path / "gone" / "checkpoint_000001")
    assert ledger.run_id_for("h1") == old  # the same run, continued
    run = MlflowClient(ctx.tracking_uri).get_run(old)
    assert run.info.status == "SCHEDULED" and run.data.tags[V.TAG_STATE] == "planned"
    assert V.TAG_STOP_REQUESTED not in run.data.tags  # the request that stopped it has been served
    assert run.data.tags[PARENT_TAG] == parent and run.data.tags[V.TAG_PREVIOUS_PARENT] == earlier
    assert tracker.client.get_run(parent).data.tags[V.TAG_RESUMED_FROM] == earlier
    assert f"resume  res18_ep3_p20 into run {old[:8]} from {tmp_path}" in ctx.options.out.getvalue()
