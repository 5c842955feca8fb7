"""Steering a launch: notifications (fast), and end to end a launch that is watched with `ablate status`,
has one trial stopped, then the whole launch stopped, with `ablate stop`, and resumes with the same command."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from experiments.store import tracking as T
from experiments.launch.control import ControlError, Notice, check_notify_command, notify
from experiments.results.status import collect
from experiments.testing.spaces import tiny_space, write_space
from trainers import vocabulary as V

# ---------------------------------------------------------------------------
# --notify
# ---------------------------------------------------------------------------


def test_notify_passes_the_event_in_the_environment_and_on_stdin(tmp_path):
    out = tmp_path / "got.txt"
    notice = Notice("trial_failed", "norm_type", "best det/AP50 0.3100: res18", "abc123", "res18_p30",
                    "RuntimeError: loss is nan", "http://user:secret@host:5000")
    cmd = f'env | grep ^ABLATE_ | sort > {out}; cat >> {out}'
    assert notify(cmd, notice, env={"PATH": os.environ["PATH"]}) is None
    lines = out.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line.startswith("ABLATE_"))
    assert env["ABLATE_EVENT"] == "trial_failed" and env["ABLATE_STUDY"] == "norm_type"
    assert env["ABLATE_TRIAL"] == "res18_p30" and env["ABLATE_HEADLINE"] == "best det/AP50 0.3100: res18"
    assert "secret" not in out.read_text()  # the tracking URI arrives redacted
    assert json.loads(env["ABLATE_SLACK_JSON"]) == {"text": env["ABLATE_MESSAGE"]}
    assert env["ABLATE_MESSAGE"].startswith("ablate norm_type: trial FAILED: res18_p30")
    assert lines[-1] == env["ABLATE_MESSAGE"]  # the message on stdin, for `mail`


def test_a_failing_or_hanging_notify_command_is_reported_not_raised():
    notice = Notice("launch_finished", "s", "h")
    assert notify("echo boom >&2; exit 3", notice).startswith("notify: the command exited with 3 (launch_finished): boom")
    assert "did not finish within 1 s" in notify("sleep 5", notice, timeout_s=1)


@pytest.mark.parametrize("command, what", [
    ("curl -d x https://hooks.slack.com/services/T0/B0/XXXX", "a webhook URL"),
    ("curl -d x http://bob:hunter2@mail.example.org/send", "a credential"),
])
def test_secrets_on_the_notify_command_line_are_refused(command, what):
    with pytest.raises(ControlError, match=what + ".*environment variable"):
        check_notify_command(command)
    assert check_notify_command('curl -fsS --data "$ABLATE_SLACK_JSON" "$SLACK_WEBHOOK_URL"')


# ---------------------------------------------------------------------------
# End to end: status while it runs, stop one trial, stop the launch, resume
# ---------------------------------------------------------------------------


def _cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _status(cwd: Path, study: str) -> dict:
    proc = _cli(["status", study, "--format", "json"], cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [launch] = json.loads(proc.stdout)["launches"]
    return launch


def _wait(cwd: Path, study: str, proc: subprocess.Popen, log: Path, until, what: str, timeout_s: float = 300) -> dict:
    from experiments.results.status import launch_status

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert proc.poll() is None, f"the launch ended while waiting for {what}:\n{log.read_text()[-3000:]}"
        exp = client.get_experiment_by_name(study)
        launches = client.search_runs([exp.experiment_id], f"tags.`{V.TAG_STAGE}` = 'launch'") if exp else []
        if launches:
            now = launch_status(client, study, exp.experiment_id, launches[0], None)
            if until(now):
                return now
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_status_stop_trial_stop_launch_notify_and_resume(tmp_path):
    study = "steer_study"
    # Enough epochs that the trial is still running after the status and stop commands start (a few seconds each).
    epochs = 12
    space = write_space(tmp_path, tiny_space(study, pretrain_epochs=epochs, pretrain_grid={"prototypes": [20, 30]}))
    notify_log = tmp_path / "notify.log"
    notify_cmd = f'printf "%s|%s|%s\\n" "$ABLATE_EVENT" "$ABLATE_STUDY" "$ABLATE_HEADLINE" >> {notify_log}'
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = tmp_path / "launch.log"
    with log.open("w") as out:  # a file, not a pipe nobody reads
        proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "launch", str(space), "--notify", notify_cmd],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        # 1. planned trials exist from the start; wait for the first one to be running with an epoch done
        _wait(tmp_path, study, proc, log, lambda ls: any(t.state == "running" and t.epoch for t in ls.trials),
                      "a running trial with an epoch done")
        launch = _status(tmp_path, study)
        states = sorted(t["state"] for t in launch["trials"])
        assert states == ["planned", "planned", "planned", "running"], states
        assert launch["status"] == "RUNNING" and launch["alive"] and launch["host"] == socket.gethostname()
        assert launch["heartbeat_age_s"] < 2 * T.HEARTBEAT_EVERY_S  # fresh
        assert launch["counts"]["trials_planned"] == 4
        running = next(t for t in launch["trials"] if t["state"] == "running")
        assert running["epochs"] == epochs and running["stage"] == "pretrain"

        # 2. stop that trial: it stops within an epoch, checkpointed, and the next trial starts
        stop = _cli(["stop", study, "--trial", running["name"]], tmp_path)
        assert stop.returncode == 0 and "stop requested" in stop.stdout, stop.stderr
        after = _wait(tmp_path, study, proc, log,
                      lambda ls: any(t.name != running["name"] and t.state == "running" and t.epoch
                                     for t in ls.trials), "the second pretraining trial to run an epoch")
        stopped = next(t for t in after.trials if t.name == running["name"])
        assert stopped.state == "stopped" and stopped.epoch < epochs

        # 3. stop the whole launch: the second trial stops too, no fine-tuning starts, the launch ends KILLED
        stop = _cli(["stop", study], tmp_path)
        assert stop.returncode == 0 and "no further trial starts" in stop.stdout, stop.stderr
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=60)
    out = log.read_text()
    assert "STOPPED" in out and "stopped 4 (the same launch command resumes them)" in out, out[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    [launch] = collect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", study)
    assert launch.status == "KILLED" and {t.state for t in launch.trials} == {"stopped"}
    pre = {r.data.tags[V.TAG_NAME]: r for r in client.search_runs(
        [client.get_experiment_by_name(study).experiment_id], f"tags.`{V.TAG_STAGE}` = 'pretrain'")}
    for run in pre.values():  # resumable: KILLED with the checkpoint of its last epoch still there
        assert run.info.status == "KILLED" and Path(run.data.tags[V.TAG_CHECKPOINT]).is_dir()
        assert V.TAG_STOP_REQUESTED not in run.data.tags
    events = notify_log.read_text().splitlines()
    assert events == [f"launch_stopped|{study}|headline: no finished fine-tuning trial with a finite det/AP50 yet"], events

    # 4. the same command resumes both trials from their checkpoints and finishes the study
    done = _cli(["launch", str(space), "--notify", notify_cmd, "--quiet", "--no-register"], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "summary" in done.stdout and "epoch" not in done.stdout.split("summary")[0]  # --quiet: the summary only
    for name, run in pre.items():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "swav/loss")]
        assert sorted(steps) == sorted(set(steps)) == list(range(1, epochs + 1)), (name, steps)  # continued, not restarted
        assert client.get_run(run.info.run_id).data.tags[V.TAG_STATE] == "finished"
    trials = client.search_runs([client.get_experiment_by_name(study).experiment_id],
                                f"tags.`{V.TAG_STAGE}` != 'launch'")
    assert len(trials) == 4 and {r.data.tags[V.TAG_STATE] for r in trials} == {"finished"}  # no duplicates
    events = notify_log.read_text().splitlines()
    assert len(events) == 2 and events[1].startswith(f"launch_finished|{study}|best: res18_ep{epochs}_p"), events
    assert "AP@0.5 " in events[1]
