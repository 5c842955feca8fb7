"""An epoch's metrics and its checkpoint reach MLflow in an order that a killed driver cannot turn into duplicates.

Ray calls ``on_trial_result`` before ``on_checkpoint``. Logging the metrics first left a window in which a
killed driver had logged epoch N but recorded only checkpoint N-1: the resumed trial trained epoch N again and
logged it a second time. The driver now records the checkpoint first and the metrics right after, and a
resuming launch restores the metrics of the checkpoint's epoch from the checkpoint when the window hit.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from experiments.launch import record_checkpoint_epoch
from experiments.launch.callbacks import DriverCallback
from experiments.store.tracking import Tracker
from experiments.launch.trial import TrialPayload, loggable_metrics
from trainers.checkpoints import checkpoint_progress, save_checkpoint
from trainers.vocabulary import STAGE_FINETUNE, STAGE_PRETRAIN


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


def test_loggable_metrics_keeps_named_metrics_key_first_and_drops_ray_bookkeeping():
    got = loggable_metrics({"det/loss": 1.0, "det/AP50": 0.3, "lr": 0.01, "epoch": 3, "done": False,
                            "time_this_iter_s": 2.0, "det/flag": True}, STAGE_FINETUNE)
    assert list(got) == ["det/AP50", "det/loss", "lr"]


def test_resume_restores_the_checkpoint_epochs_metrics_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "resume_gap")
    run_id = tracker.create_run("res18_ep3_p20", {})
    tracker.log_metrics(run_id, {"swav/loss": 2.0, "swav/loss_over_lnk": 0.95}, 1)
    ckpt = save_checkpoint(tmp_path / "ckpt", {"epoch": 2, "metrics": {"swav/loss": 1.5, "swav/loss_over_lnk": 0.9},
                                               "model": {}})
    assert checkpoint_progress(ckpt) == (2, {"swav/loss": 1.5, "swav/loss_over_lnk": 0.9})
    # killed after recording checkpoint 2 and before logging epoch 2's metrics
    assert record_checkpoint_epoch(tracker, run_id, STAGE_PRETRAIN, str(ckpt)) == 2
    assert record_checkpoint_epoch(tracker, run_id, STAGE_PRETRAIN, str(ckpt)) == 0  # never twice
    history = MlflowClient(uri).get_metric_history(run_id, "swav/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.5)]
    # a checkpoint elsewhere (remote storage) or unreadable is left alone
    assert record_checkpoint_epoch(tracker, run_id, STAGE_PRETRAIN, "s3://bucket/ckpt") == 0
    (tmp_path / "broken").mkdir()
    assert record_checkpoint_epoch(tracker, run_id, STAGE_PRETRAIN, str(tmp_path / "broken")) == 0
