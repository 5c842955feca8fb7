"""experiments.launch.callbacks: the Tune callback that hands every trial event to the launch, and the stopper.

An epoch's metrics and its checkpoint reach MLflow in an order that a killed driver cannot turn into duplicates.
Ray calls ``on_trial_result`` before ``on_checkpoint``. Logging the metrics first left a window in which a
killed driver had logged epoch N but recorded only checkpoint N-1: the resumed trial trained epoch N again and
logged it a second time. The driver now records the checkpoint first and the metrics right after (a resuming
launch restores the metrics of the checkpoint's epoch: tests/experiments/launch/test_artifacts.py).
Driven by hand like Ray's controller: no Ray cluster, no training.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import cloudpickle

from experiments.launch.callbacks import DriverCallback, StopRequestStopper
from experiments.launch.trial import ARTIFACTS_SUBDIR, TrialPayload
from trainers.vocabulary import DEVICE_KEY, GPUS_KEY, STAGE_PRETRAIN


class _Recorder:
    """The events the callback raises (experiments.launch.callbacks.TrialEvents), recording the order of writes."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.said: list[str] = []  # progress lines; the tests here look only at the order of writes
        self.beats = 0
        self.metrics: dict = {}

    def payload(self, trial):
        return trial.config["trial"]

    def started(self, p, trial) -> None:
        pass

    def log_metrics(self, p, metrics, step) -> None:
        self.events.append(("metrics", step))

    def latest(self, p, metrics) -> None:
        self.metrics[p.config_hash] = metrics

    def placed(self, p, device, gpus) -> None:
        pass

    def log_artifacts(self, p, folder, path) -> None:
        pass

    def checkpointed(self, p, checkpoint) -> None:
        self.events.append(("checkpoint", checkpoint.step))

    def say(self, text: str) -> None:
        self.said.append(text)

    def completed(self, stage, p, trial) -> str:
        self.outcomes = {p.config_hash: SimpleNamespace(status="done")}
        return "done"

    def failed(self, stage, p, trial, error) -> None:
        self.events.append(("failed",))

    def beat(self) -> None:
        self.beats += 1


def _callback() -> tuple[DriverCallback, _Recorder, SimpleNamespace]:
    rec = _Recorder()
    p = TrialPayload(stage=STAGE_PRETRAIN, config={}, config_hash="h1", name="res18_ep3_p20", epochs=3)
    cb = DriverCallback(rec, STAGE_PRETRAIN, {"h1": p}, total=1)  # type: ignore[arg-type]
    return cb, rec, SimpleNamespace(config={"trial": p}, trial_id="t1")


class _Checkpoint:
    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def as_directory(self):
        return contextlib.nullcontext(self.path)


def test_an_epoch_with_a_checkpoint_is_logged_after_its_checkpoint_is_recorded(tmp_path):
    cb, rec, trial = _callback()
    result = {"epoch": 1, "swav/loss": 2.0, "swav/loss_over_lnk": 0.9, "should_checkpoint": True, "time_this_iter_s": 1.0}
    cb.on_trial_result(0, [], trial, result)
    assert rec.events == []  # held back: a driver killed now leaves neither the metrics nor the checkpoint
    cb.on_checkpoint(0, [], trial, _Checkpoint(1, str(tmp_path)))
    assert rec.events == [("checkpoint", 1), ("metrics", 1)]
    assert rec.beats == 1 and "epoch 1/3" in rec.said[0]  # the progress line and heartbeat come at once


def test_a_result_without_a_checkpoint_is_logged_at_once_and_held_metrics_survive_completion():
    cb, rec, trial = _callback()
    cb.on_trial_result(0, [], trial, {"epoch": 1, "swav/loss": 2.0})
    assert rec.events == [("metrics", 1)]
    cb.on_trial_result(0, [], trial, {"epoch": 2, "swav/loss": 1.9, "should_checkpoint": True})
    cb.on_trial_complete(0, [], trial)  # Ray ended the trial without processing its save
    assert rec.events == [("metrics", 1), ("metrics", 2)]


def test_a_crashed_epoch_whose_checkpoint_never_landed_is_dropped_for_the_retry():
    cb, rec, trial = _callback()
    cb.on_trial_result(0, [], trial, {"epoch": 2, "swav/loss": 1.9, "should_checkpoint": True})
    cb.on_trial_error(0, [], trial)  # a resume (or Ray's retry) trains epoch 2 again from checkpoint 1
    cb.on_checkpoint(0, [], trial, _Checkpoint(1, "/nonexistent"))
    assert rec.events == [("failed",), ("checkpoint", 1)]


def test_the_stopper_pickles_without_the_launcher(tmp_path, monkeypatch):
    """Tune pickles the run config (the stopper with it) into tuner.pkl: no store client, URL or option goes along."""
    import cloudpickle

    from experiments.launch import Launcher, LaunchOptions
    from experiments.launch.callbacks import StopRequestStopper
    from experiments.testing.spaces import tiny_space_file

    monkeypatch.chdir(tmp_path)
    launcher = Launcher(tiny_space_file(tmp_path, "pickled_stopper"), LaunchOptions(notify="true"))
    stopper = cloudpickle.loads(cloudpickle.dumps(StopRequestStopper(launcher.ledger, "pretrain")))
    assert stopper.events is None and stopper.stage == "pretrain"
    assert stopper("t1", {"epoch": 1}) is False and stopper.stop_all() is False


# ---------------------------------------------------------------------------
# Where a trial runs, what it carries in its checkpoint, its retries, and the stop requests
# ---------------------------------------------------------------------------


class _Events(_Recorder):
    """The recorder, also keeping where trials were placed, the artifacts logged and the stop questions asked."""

    def __init__(self, stop_at: int = 0, stage_over: bool = False) -> None:
        super().__init__()
        self.placements: list[tuple[str, str]] = []
        self.artifacts: list[tuple[str, list[str]]] = []
        self.asked: list[tuple[str, int]] = []
        self.stop_at, self.stage_over = stop_at, stage_over

    def placed(self, p, device, gpus) -> None:
        self.placements.append((device, gpus))

    def log_artifacts(self, p, folder, path) -> None:
        self.artifacts.append((path, sorted(f.name for f in folder.iterdir())))

    def stop_due(self, trial_id: str, epoch: int) -> bool:
        self.asked.append((trial_id, epoch))
        return bool(self.stop_at) and epoch >= self.stop_at

    def stage_stop_due(self) -> bool:
        return self.stage_over


def test_the_device_is_recorded_once_per_start_and_the_checkpoints_files_by_epoch(tmp_path):
    events = _Events()
    p = TrialPayload(stage=STAGE_PRETRAIN, config={}, config_hash="h1", name="res18_ep3_p20", epochs=3)
    cb = DriverCallback(events, STAGE_PRETRAIN, {}, total=1)  # type: ignore[arg-type]
    trial = SimpleNamespace(config={"trial": p}, trial_id="t1")
    cb.on_trial_start(0, [], trial)
    assert cb.trials == {"h1": p} and cb.state == {"h1": "running"} and events.said[-1].endswith("start   res18_ep3_p20")
    for epoch in (1, 2):
        cb.on_trial_result(0, [], trial, {"epoch": epoch, "swav/loss": 2.0, DEVICE_KEY: "cuda:0", GPUS_KEY: "3"})
    assert events.placements == [("cuda:0", "3")]  # once, not per epoch
    cb.on_trial_start(0, [], trial)  # a retried trial may land on another device
    cb.on_trial_result(0, [], trial, {"epoch": 3, "swav/loss": 1.9, DEVICE_KEY: "cpu"})
    assert events.placements == [("cuda:0", "3"), ("cpu", "")]

    (tmp_path / ARTIFACTS_SUBDIR).mkdir()
    cb.on_checkpoint(0, [], trial, _Checkpoint(3, str(tmp_path)))
    assert events.artifacts == []  # an empty artifacts folder uploads nothing
    (tmp_path / ARTIFACTS_SUBDIR / "figure.png").write_bytes(b"png")
    cb.on_checkpoint(0, [], trial, _Checkpoint(3, str(tmp_path)))
    assert events.artifacts == [("eval/epoch_003", ["figure.png"])]


def test_a_retry_says_why_and_forgets_the_epoch_held_for_its_checkpoint():
    cb, rec, trial = _callback()
    trial.error_msg = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory\n"
    cb.on_trial_result(0, [], trial, {"epoch": 2, "swav/loss": 1.9, "should_checkpoint": True})
    cb.on_trial_recover(0, [], trial)
    assert rec.said[-1] == ("pretrain retry   res18_ep3_p20 (crashed: RuntimeError: CUDA out of memory; resuming "
                            "from its last checkpoint)")
    cb.on_trial_complete(0, [], trial)
    assert rec.events == []  # the retry trains epoch 2 again: the held metrics are not logged
    assert cb.state == {"h1": "done"} and rec.said[-1].startswith("pretrain status  running 0  pending 0  done 1")


def test_the_stopper_asks_with_the_reported_epoch_and_neither_pickles_its_events():
    events = _Events(stop_at=2, stage_over=True)
    stopper = StopRequestStopper(events, STAGE_PRETRAIN)  # type: ignore[arg-type]
    assert stopper("t1", {"epoch": 1}) is False and stopper("t1", {"epoch": 2}) is True
    assert stopper("t2", {"training_iteration": 5}) is False  # no epoch reported: asked as epoch 0
    assert events.asked == [("t1", 1), ("t1", 2), ("t2", 0)]
    assert stopper.stop_all() is True
    cb = DriverCallback(events, STAGE_PRETRAIN, {}, total=1)  # type: ignore[arg-type]
    restored = cloudpickle.loads(cloudpickle.dumps(cb))
    assert restored.events is None and restored.stage == STAGE_PRETRAIN and cb.events is events
