"""`ablate status` and `ablate stop` on a launch written to the store by hand (no Ray), on sqlite and on an
`ablate server` (MLflow server, 127.0.0.1, sqlite behind it): the same MlflowClient code path either way.

The end-to-end path (a real launch stopped and resumed) is tests/experiments/launch/test_control.py.
"""

from __future__ import annotations

import io
import json
import socket
import time

import pytest
from mlflow.tracking import MlflowClient

from experiments.testing.s3server import free_port
from experiments import cli
from experiments import server as S
from experiments.results import status as ST
from experiments.store import tracking as T
from experiments.launch.control import ControlError, request_stop
from experiments.results.status import CLEAR
from trainers import vocabulary as V

def _layout(uri: str, study: str = "ops") -> dict[str, str]:
    """A running launch (driven by this process, heartbeat now) with one trial in each interesting state."""
    NOW = time.time()
    tracker = T.Tracker(uri, study)
    launch = tracker.create_run("launch x", {V.TAG_STAGE: "launch", V.TAG_DRIVER: T.driver_id(),
                                             V.TAG_HEARTBEAT: f"{NOW - 3:.0f}"})
    tracker.log_params_tags(launch, params={"max_concurrent": "1"})
    tracker.log_metrics(launch, {"launch/trials_planned": 4, "launch/trials_running": 1}, 1)

    def trial(name: str, stage: str, state: str, status: str, epochs: int, tags: dict | None = None) -> str:
        run_id = tracker.create_run(name, {V.TAG_STAGE: stage, V.TAG_NAME: name, V.TAG_STATE: state, **(tags or {})},
                                    parent_run_id=launch)
        tracker.log_params_tags(run_id, params={f"{stage}.epochs": str(epochs),
                                                **({"pretrain.feat_dim": "32"} if stage == "pretrain" else {})})
        if status != "RUNNING":
            tracker.reopen(run_id, status) if status == "SCHEDULED" else tracker.finish(run_id, status)
        return run_id

    ids = {"launch": launch, "now": str(NOW)}
    # running: started 30 s ago, epochs 1 and 2 logged 20 and 10 s ago -> 10 s per epoch, 3 to go
    ids["running"] = trial("res18_p20", "pretrain", "running", "RUNNING", 5, {V.TAG_STARTED: f"{NOW - 30:.0f}"})
    for step, ago in ((1, 20), (2, 10)):
        # its second epoch labelled collapsed by the trainer (trainers/swav/collapse.py)
        tracker.log_metrics(ids["running"], {"swav/loss_over_ln_k": 1.5 / step, "swav/collapsed": float(step == 2),
                                             "swav/embedding_std": 0.001 if step == 2 else 0.1},
                            step, int((NOW - ago) * 1000))
    ids["planned"] = trial("res18_p30", "pretrain", "planned", "SCHEDULED", 5)
    ids["best"] = trial("res18_p10 · mlp · seed0", "finetune", "finished", "FINISHED", 1, {V.TAG_UPSTREAM: "x"})
    tracker.log_metrics(ids["best"], {"det/AP50": 0.31}, 1)
    ids["scratch"] = trial("scratch_res18 · seed0", "finetune", "finished", "FINISHED", 3,
                           {V.TAG_UPSTREAM: T.UPSTREAM_SCRATCH})
    tracker.log_metrics(ids["scratch"], {"det/AP50": 0.12}, 3)
    return ids


@pytest.fixture(scope="module", params=["sqlite", "server"])
def store(request, tmp_path_factory):
    """(tracking URI, run ids) of the hand-made launch, in a sqlite file or behind `ablate server` on 127.0.0.1."""
    folder = tmp_path_factory.mktemp(f"status_{request.param}")
    db = f"sqlite:///{folder}/mlflow.db"
    if request.param == "sqlite":
        yield db, _layout(db)
        return
    server = S.start_server(db, artifacts_destination=str(folder / "artifacts"), port=free_port(), workers=1,
                            log_path=folder / "server.log")
    try:
        yield server.url, _layout(server.url)
    finally:
        server.stop()


def test_status_lists_states_epochs_eta_and_headline(store):
    uri, ids = store
    [launch] = ST.collect(uri, "ops")
    assert launch.run_id == ids["launch"] and launch.status == "RUNNING" and launch.alive
    made = float(ids["now"])
    assert launch.host == socket.gethostname() and 0 <= launch.heartbeat_age_s < 3 + (time.time() - made) + 2
    by_name = {t.name: t for t in launch.trials}
    running, planned = by_name["res18_p20"], by_name["res18_p30"]
    assert (running.state, running.epoch, running.epochs) == ("running", 2, 5)
    assert running.seconds_per_epoch == pytest.approx(10, abs=1.5)
    # 3 epochs x 10 s, less the time the current epoch has run (begun 10 s before the layout was made)
    assert running.eta_s == pytest.approx(max(0.0, 30 - 10 - (time.time() - made)), abs=3)
    assert (planned.state, planned.epoch, planned.eta_s) == ("planned", None, None)
    assert [t.state for t in launch.trials][:2] == ["running", "planned"]  # what is moving comes first
    # the headline: the best usable fine-tuning run, here a pretrained one ahead of the scratch baseline
    assert launch.best_run_id == ids["best"] and launch.headline.startswith("best: res18_p10")
    assert "AP@0.5 0.310" in launch.headline
    # the launch ETA: pretraining epochs left (3 + 5) at the measured 10 s per epoch, one trial at a time
    assert launch.eta_s() == pytest.approx(80, abs=12)
    assert launch.counts["trials_planned"] == 4

    data = json.loads(ST.status(uri, "ops", fmt="json"))
    [entry] = data["launches"]
    assert entry["alive"] and entry["host"] == socket.gethostname() and entry["heartbeat_age_s"] < 120
    assert {t["name"]: t["state"] for t in entry["trials"]} == {
        "res18_p20": "running", "res18_p30": "planned", "res18_p10 · mlp · seed0": "finished",
        "scratch_res18 · seed0": "finished"}

    table = ST.status(uri, "ops")
    assert "driver " + T.driver_id() in table and "heartbeat" in table
    row = next(line for line in table.splitlines() if line.rstrip().endswith("res18_p20"))
    assert "running (collapsed)" in row and "2/5" in row and "loss_over_ln_k 0.7500" in row
    collapsed = {t["name"]: t["collapsed"] for t in entry["trials"]}
    assert collapsed["res18_p20"].startswith("collapsed: embeddings at one point") and collapsed["res18_p30"] is None

    # without a study: every running launch of the store
    assert [ls.run_id for ls in ST.collect(uri)] == [ids["launch"]]


def test_stop_requests_land_on_the_right_runs(store):
    uri, ids = store
    client = MlflowClient(tracking_uri=uri)
    message = request_stop(uri, "ops", "res18_p30")
    assert "res18_p30" in message and "resume" in message
    assert V.TAG_STOP_REQUESTED in client.get_run(ids["planned"]).data.tags
    assert V.TAG_STOP_REQUESTED not in client.get_run(ids["running"]).data.tags
    assert "stop requested" in ST.status(uri, "ops")

    with pytest.raises(ControlError, match=r"no trial 'res18_p2'; did you mean 'res18_p20'"):
        request_stop(uri, "ops", "res18_p2")
    with pytest.raises(ControlError, match="is finished, not running or planned"):
        request_stop(uri, "ops", "res18_p10 · mlp · seed0")
    with pytest.raises(ControlError, match=r"no study 'opz'.*did you mean 'ops'"):
        request_stop(uri, "opz")

    request_stop(uri, "ops")  # the whole launch
    assert V.TAG_STOP_REQUESTED in client.get_run(ids["launch"]).data.tags
    assert "STOP REQUESTED" in ST.status(uri, "ops")


def test_cli_errors_exit_2_with_the_fix(store, capsys):
    uri, _ = store
    assert cli.main(["status", "nope", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "no study 'nope'" in err and "studies here: ops" in err
    assert cli.main(["stop", "ops", "--trial", "nothing-like-it", "--tracking-uri", uri]) == 2
    assert "`ablate status ops` lists its trials" in capsys.readouterr().err
    assert cli.main(["status", "--watch", "--format", "json", "--tracking-uri", uri]) == 2
    assert "--watch redraws a terminal table" in capsys.readouterr().err


def test_watch_redraws_in_place(store):
    uri, _ = store
    out = io.StringIO()
    assert ST.watch(uri, "ops", every_s=0.01, out=out, rounds=2) == 0
    text = out.getvalue()
    assert text.count(CLEAR) == 2 and text.startswith(CLEAR) and "res18_p20" in text


def test_no_running_launch_and_a_missing_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = T.Tracker(uri, "done")
    run = tracker.create_run("launch y", {V.TAG_STAGE: "launch"})
    tracker.set_tags(run, {V.TAG_HEADLINE: "best: res18 · bn · seed0 AP@0.5 0.370; norm bn > gn (decided)"})
    tracker.finish(run)
    # nothing running: the studies the store holds, their state, when they ended, their best, and what to run next
    text = ST.status(uri)
    assert text.startswith(f"no running launch in the tracking store {uri}. Recent studies")
    row = next(line for line in text.splitlines() if line.strip().startswith("done"))
    assert "finished" in row and "ended 20" in row and "best: res18 · bn · seed0 AP@0.5 0.370" in row
    assert "  ablate status done    #" in text and "  ablate report done    #" in text
    last = ST.status(uri, "done")  # a study's last launch, ended: when it ended, not a heartbeat
    assert "launch run " + run[:8] + "  finished" in last and "ended 20" in last and "heartbeat" not in last
    with pytest.raises(ControlError, match="has no running launch: nothing to stop"):
        request_stop(uri, "done")
    with pytest.raises(ST.StatusError, match="no MLflow store at"):
        ST.collect(f"sqlite:///{tmp_path}/missing.db")


def test_status_headline_is_the_study_headline(store):

    from experiments.results.headline import study_headline

    uri, _ = store
    client = MlflowClient(tracking_uri=uri)
    [launch] = ST.collect(uri, "ops")
    exp = client.get_experiment_by_name("ops")
    assert launch.headline == study_headline(client, exp.experiment_id).one_line()