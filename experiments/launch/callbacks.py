"""Ray Tune's side of a launch: the callback that hears every trial event, the stopper that acts on `ablate stop`.

Both talk to the launch through :class:`TrialEvents`, the few events they raise (the
:class:`~experiments.launch.ledger.TrialLedger` implements it), never to the launcher. Ray calls
``on_trial_result`` before ``on_checkpoint``: an epoch's metrics are held back until its checkpoint is
recorded, so a driver killed in between never leaves an epoch logged that the resumed trial trains again.

:class:`StopRequestStopper` answers True for a trial whose run, or whose launch run, carries
``ablate.stop_requested`` (:mod:`experiments.launch.control`); that result's checkpoint is kept, Ray ends the
trial as TERMINATED and the ledger records it as ``stopped``. ``stop_all`` ends the stage once a
launch-wide request is in and no trial is running any more; Ray calls it on every step of its event
loop, so it is also where the driver's heartbeat is refreshed while epochs are long.

This module imports Ray: the launch imports it only when a stage runs, never for a dry run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Protocol

from ray import tune

from experiments.launch.progress import status_line, trial_error
from experiments.launch.trial import ARTIFACTS_SUBDIR, TrialPayload, key_metric, loggable_metrics
from trainers.vocabulary import DET_LOSS, DEVICE_KEY, GPUS_KEY, LOSS_METRICS

STATUS_EVERY_S = 15  # a status line at most this often, besides one when the stage's last trial ends


class TrialEvents(Protocol):
    """What the callback and the stopper tell the launch, and the little they ask of it."""

    def say(self, text: str) -> None: ...
    def payload(self, trial: Any) -> TrialPayload: ...
    def started(self, p: TrialPayload, trial: Any) -> None: ...
    def log_metrics(self, p: TrialPayload, metrics: Mapping[str, float], step: int) -> None: ...
    def latest(self, p: TrialPayload, metrics: Mapping[str, float]) -> None: ...
    def placed(self, p: TrialPayload, device: str, gpus: str) -> None: ...
    def log_artifacts(self, p: TrialPayload, folder: Path, path: str) -> None: ...
    def checkpointed(self, p: TrialPayload, checkpoint: Any) -> None: ...
    def completed(self, stage: str, p: TrialPayload, trial: Any) -> str: ...
    def failed(self, stage: str, p: TrialPayload, trial: Any, error: str) -> None: ...
    def beat(self) -> None: ...
    def stop_due(self, trial_id: str, epoch: int) -> bool: ...
    def stage_stop_due(self) -> bool: ...


class DriverCallback(tune.Callback):
    """Hands every Tune event of a stage to the launch and prints progress.

    Args:
        events: the launch's trial record.
        stage: ``pretrain`` or ``finetune``.
        trials: config hash -> payload of the stage's grid trials (`tpe` trials are added as sampled).
        total: the stage's number of trials.
        max_concurrent: trials at once (the ETA divides by it).
    """

    def __init__(self, events: TrialEvents, stage: str, trials: dict[str, TrialPayload], total: int,
                 max_concurrent: int = 1) -> None:
        self.events: TrialEvents | None = events
        self.stage = stage
        self.trials = trials
        self.total = total
        self.max_concurrent = max_concurrent
        self.started = time.time()
        self.last_status = 0.0
        self.state: dict[str, str] = {}  # config hash -> running | done | pruned | failed | stopped
        self.epochs: dict[str, int] = {}
        self.epoch_time: list[float] = []
        self.last_epoch_at: dict[str, float] = {}
        self.pending: dict[str, tuple[TrialPayload, int, dict[str, float]]] = {}  # held for a checkpoint
        self.placed: set[str] = set()  # config hashes whose device tags are recorded for their current start

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into tuner.pkl on the storage path; the launch (store clients, URLs,
        # options) stays out of it. Resuming goes through MLflow, not tuner.pkl.
        return {**self.__dict__, "events": None}

    def _payload(self, trial: Any) -> TrialPayload:
        p = self.events.payload(trial)
        self.trials.setdefault(p.config_hash, p)
        return p

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        p = self._payload(trial)
        self.state[p.config_hash] = "running"
        self.placed.discard(p.config_hash)  # a retried trial may land elsewhere
        self.last_epoch_at[p.config_hash] = time.time()
        self.events.started(p, trial)
        self.events.say(f"{self.stage:8} start   {p.name}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        p = self._payload(trial)
        h = p.config_hash
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = loggable_metrics(result, self.stage)
        if DEVICE_KEY in result and h not in self.placed:  # where the trial runs: once per start
            self.placed.add(h)
            self.events.placed(p, str(result[DEVICE_KEY]), str(result.get(GPUS_KEY, "")))
        if result.get("should_checkpoint"):
            # Logged once the checkpoint is recorded (on_checkpoint, which Ray calls after this): a driver
            # killed in between leaves neither, so a resumed trial never logs this epoch twice.
            self.pending[h] = (p, step, metrics)
        else:
            self.events.log_metrics(p, metrics, step)
        now = time.time()
        self.epoch_time.append(now - self.last_epoch_at.get(h, now))
        self.last_epoch_at[h] = now
        self.epochs[h] = step
        self.events.latest(p, metrics)
        key = key_metric(self.stage, metrics)
        shown = f"{key} {metrics[key]:.4f}" if key in metrics else f"{self.stage}/loss"
        loss_key = LOSS_METRICS.get(key, DET_LOSS)  # shown beside the key metric
        if loss_key in metrics:
            shown += f"  {loss_key} {metrics[loss_key]:.4f}"
        self.events.say(f"{self.stage:8} epoch {step}/{p.epochs}  {p.name}  {shown}")
        self._status()
        self.events.beat()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        p = self._payload(trial)
        self.events.checkpointed(p, checkpoint)
        self._flush(p.config_hash)
        with checkpoint.as_directory() as d:
            art = Path(d) / ARTIFACTS_SUBDIR
            if art.is_dir() and any(art.iterdir()):
                step = self.epochs.get(p.config_hash, 0)
                self.events.log_artifacts(p, art, f"eval/epoch_{step:03d}")

    def _flush(self, h: str) -> None:
        """Log the metrics held back for a trial's checkpoint (see on_trial_result)."""
        if h in self.pending:
            p, step, metrics = self.pending.pop(h)
            self.events.log_metrics(p, metrics, step)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        p = self._payload(trial)
        self._flush(p.config_hash)  # a checkpoint Ray could not save: the epoch's metrics are kept all the same
        self.state[p.config_hash] = self.events.completed(self.stage, p, trial)
        self._status(force=self._stage_over())

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        p = self._payload(trial)
        # an epoch whose checkpoint never landed is not part of the run: resuming trains it again
        self.pending.pop(p.config_hash, None)
        self.events.failed(self.stage, p, trial, trial_error(trial))
        self.state[p.config_hash] = "failed"
        self._status(force=self._stage_over())

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        p = self._payload(trial)
        self.pending.pop(p.config_hash, None)  # the retry starts from the last checkpoint that landed
        error = trial_error(trial).strip().splitlines()
        why = f": {error[-1]}" if error else ""
        self.events.say(f"{self.stage:8} retry   {p.name} (crashed{why}; resuming from its last checkpoint)")

    def _stage_over(self) -> bool:
        """Every trial of the stage has ended: its closing status line (others come at most every 15 s, so that
        short trials do not print a status line after every epoch line)."""
        return sum(1 for v in self.state.values() if v not in ("running", "pending")) >= self.total

    def _status(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last_status < STATUS_EVERY_S:
            return
        self.last_status = now
        remaining = sum(max(0, p.epochs - self.epochs.get(h, 0)) for h, p in self.trials.items()
                        if self.state.get(h, "pending") in ("running", "pending"))
        per_epoch = (sum(self.epoch_time) / len(self.epoch_time)) if self.epoch_time else float("nan")
        self.events.say(status_line(self.stage, self.state.values(), self.total, remaining, per_epoch,
                                    self.max_concurrent))


class StopRequestStopper(tune.Stopper):
    """Stops trials (and the stage) that ``ablate stop`` asked to stop.

    Args:
        events: the launch's trial record; it reads the requests and records the outcome.
        stage: ``pretrain`` or ``finetune``.
    """

    def __init__(self, events: TrialEvents, stage: str) -> None:
        self.events: TrialEvents | None = events
        self.stage = stage

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the run config (stopper included) into tuner.pkl; the launch stays out of it
        return {**self.__dict__, "events": None}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return self.events is not None and self.events.stop_due(trial_id, int(result.get("epoch", 0) or 0))

    def stop_all(self) -> bool:
        return self.events is not None and self.events.stage_stop_due()
