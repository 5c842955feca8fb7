"""The driver's view of a running launch: the Tune callback, progress lines and the summary.

:class:`DriverCallback` receives every Ray Tune event of a stage on the driver, writes it to
MLflow through the :class:`~experiments.launch.Launcher` (the only writer of the store) and
prints progress; :func:`status_line` and :func:`format_summary` are the texts it and the launch
print. This module imports Ray (the callback is a ``tune.Callback``): the launch imports it only
when it runs a stage, never for a dry run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ray import tune

from experiments.tracking import TAG_DEVICE, TAG_GPUS
from experiments.trial import (ARTIFACTS_SUBDIR, DEVICE_KEY, GPUS_KEY, KEY_METRIC, METRIC_LABELS, STAGE_PRETRAIN,
                               TrialPayload, loggable_metrics)

if TYPE_CHECKING:  # type hints only: the launch imports this module, not the other way round
    from experiments.launch import Launcher, TrialOutcome

STATUS_EVERY_S = 15  # a status line at most this often, besides one at every trial's end
STATES = ("running", "done", "pruned", "failed", "stopped")


class DriverCallback(tune.Callback):
    """Writes every Tune event of a stage to MLflow (through the launcher) and prints progress.

    Args:
        launcher: the launch this stage belongs to.
        stage: ``pretrain`` or ``finetune``.
        trials: config hash -> payload of the stage's grid trials (`tpe` trials are added as sampled).
        total: the stage's number of trials.
    """

    def __init__(self, launcher: Launcher, stage: str, trials: dict[str, TrialPayload], total: int) -> None:
        self.launcher = launcher
        self.stage = stage
        self.trials = trials
        self.total = total
        self.started = time.time()
        self.last_status = 0.0
        self.state: dict[str, str] = {}  # config hash -> running | done | pruned | failed
        self.epochs: dict[str, int] = {}
        self.epoch_time: list[float] = []
        self.last_epoch_at: dict[str, float] = {}
        self.pending: dict[str, tuple[int, dict[str, float]]] = {}  # config hash -> (step, metrics) awaiting a checkpoint
        self.placed: set[str] = set()  # config hashes whose device tags are recorded for their current start

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into tuner.pkl on the storage path; the launcher (store
        # clients, URLs, options) stays out of it. Resuming goes through MLflow, not tuner.pkl.
        return {**self.__dict__, "launcher": None}

    def _payload(self, trial: Any) -> TrialPayload:
        if "trial" in trial.config:
            return trial.config["trial"]
        p = self.launcher.sampled_trial(trial)
        self.trials.setdefault(p.config_hash, p)
        return p

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        p = self._payload(trial)
        self.state[p.config_hash] = "running"
        self.placed.discard(p.config_hash)  # a retried trial may land elsewhere
        self.last_epoch_at[p.config_hash] = time.time()
        self.launcher.trial_started(p, trial)
        self.launcher.say(f"{self.stage:8} start   {p.name}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        p = self._payload(trial)
        h = p.config_hash
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = loggable_metrics(result, self.stage)
        if DEVICE_KEY in result and h not in self.placed:  # where the trial runs: once per start
            self.placed.add(h)
            self.launcher.tracker.set_tags(self.launcher.run_id_for(h), {
                TAG_DEVICE: str(result[DEVICE_KEY]), TAG_GPUS: str(result.get(GPUS_KEY, ""))})
        if result.get("should_checkpoint"):
            # Logged once the checkpoint is recorded (on_checkpoint, which Ray calls after this): a driver
            # killed in between leaves neither, so a resumed trial never logs this epoch twice.
            self.pending[h] = (step, metrics)
        else:
            self.launcher.tracker.log_metrics(self.launcher.run_id_for(h), metrics, step)
        now = time.time()
        self.epoch_time.append(now - self.last_epoch_at.get(h, now))
        self.last_epoch_at[h] = now
        self.epochs[h] = step
        self.launcher.metrics[h] = metrics
        key = KEY_METRIC[self.stage]
        shown = f"{key} {metrics[key]:.4f}" if key in metrics else f"{self.stage}/loss"
        loss_key = "swav/loss" if self.stage == STAGE_PRETRAIN else "det/loss"
        if loss_key in metrics:
            shown += f"  {loss_key} {metrics[loss_key]:.4f}"
        self.launcher.say(f"{self.stage:8} epoch {step}/{p.epochs}  {p.name}  {shown}")
        self._status()
        self.launcher.beat()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        p = self._payload(trial)
        self.launcher.checkpointed(p, checkpoint)
        self._flush(p.config_hash)
        with checkpoint.as_directory() as d:
            art = Path(d) / ARTIFACTS_SUBDIR
            if art.is_dir() and any(art.iterdir()):
                step = self.epochs.get(p.config_hash, 0)
                self.launcher.tracker.log_artifacts(self.launcher.run_id_for(p.config_hash), art, f"eval/epoch_{step:03d}")

    def _flush(self, h: str) -> None:
        """Log the metrics held back for a trial's checkpoint (see on_trial_result)."""
        if h in self.pending:
            step, metrics = self.pending.pop(h)
            self.launcher.tracker.log_metrics(self.launcher.run_id_for(h), metrics, step)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        p = self._payload(trial)
        self._flush(p.config_hash)  # a checkpoint Ray could not save: the epoch's metrics are kept all the same
        self.launcher.complete(self.stage, p, trial)
        self.state[p.config_hash] = self.launcher.outcomes[p.config_hash].status
        self._status(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        p = self._payload(trial)
        # an epoch whose checkpoint never landed is not part of the run: resuming trains it again
        self.pending.pop(p.config_hash, None)
        self.launcher.fail(self.stage, p, trial)
        self.state[p.config_hash] = "failed"
        self._status(force=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        p = self._payload(trial)
        self.pending.pop(p.config_hash, None)  # the retry starts from the last checkpoint that landed
        error = trial_error(trial).strip().splitlines()
        why = f": {error[-1]}" if error else ""
        self.launcher.say(f"{self.stage:8} retry   {p.name} (crashed{why}; resuming from its last checkpoint)")

    def _status(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last_status < STATUS_EVERY_S:
            return
        self.last_status = now
        remaining = sum(max(0, p.epochs - self.epochs.get(h, 0)) for h, p in self.trials.items()
                        if self.state.get(h, "pending") in ("running", "pending"))
        per_epoch = (sum(self.epoch_time) / len(self.epoch_time)) if self.epoch_time else math.nan
        self.launcher.say(status_line(self.stage, self.state.values(), self.total, remaining, per_epoch,
                                      self.launcher.max_concurrent))


def status_line(stage: str, states: Iterable[str], total: int, remaining_epochs: int, per_epoch_s: float,
                max_concurrent: int) -> str:
    """``pretrain status  running 1  pending 2  done 3  pruned 0  failed 0  of 6  ETA 1.5 min``.

    Args:
        stage: the stage.
        states: the state of every trial seen so far (running, done, pruned, failed).
        total: the stage's number of trials; those not seen yet are pending.
        remaining_epochs: epochs the running and pending trials still have to train.
        per_epoch_s: mean seconds per epoch so far (NaN before the first: ETA ``?``).
        max_concurrent: trials run at once.
    """
    states = list(states)
    counts = {s: states.count(s) for s in STATES}
    pending = total - sum(counts.values())
    conc = max(1, min(max_concurrent, counts["running"] + pending))
    eta = remaining_epochs * per_epoch_s / conc
    eta_s = f"{eta / 60:.1f} min" if math.isfinite(eta) else "?"
    stopped = f"  stopped {counts['stopped']}" if counts["stopped"] else ""
    return (f"{stage:8} status  running {counts['running']}  pending {pending}  done {counts['done']}"
            f"  pruned {counts['pruned']}  failed {counts['failed']}{stopped}  of {total}  ETA {eta_s}")


def format_summary(outcomes: Sequence[TrialOutcome], counts: Mapping[str, float], warnings: Sequence[str] = (),
                   feat_dims: Mapping[str, int] | None = None) -> str:
    """The table printed at the end of a launch (with the plan's warnings, which the results carry).

    A pretraining run whose last epoch reported ``swav/collapsed`` is marked "collapsed" with its reasons
    (``feat_dims``: config hash -> the run's feat_dim, which the reasons' thresholds scale with), and its
    kNN figure is shown beside its references (random-init spread, raw pixels).
    """
    from trainers.swav.collapse import collapse_label
    from trainers.swav.knn import monitor_text

    lines = ["", "summary", f"  {'stage':8}  {'status':8}  {'epochs':>7}  {'key metric':>18}  name / reason"]
    order = {"done": 0, "reused": 1, "pruned": 2, "failed": 3, "skipped": 4}
    for o in sorted(outcomes, key=lambda o: (o.stage != STAGE_PRETRAIN, order.get(o.status, 9), o.name)):
        key = KEY_METRIC[o.stage]
        val = o.metrics.get(key)
        label = METRIC_LABELS.get(key, key.split("/")[-1])  # one label per metric, as in the report
        shown = f"{label} {val:.4f}" if isinstance(val, float) and math.isfinite(val) else "-"
        epochs = f"{o.epochs_run}/{o.epochs_budget}" if o.epochs_budget else "-"
        reason = f"  ({o.reason})" if o.reason and o.status != "done" else ""
        if o.stage == STAGE_PRETRAIN:
            collapsed = collapse_label(o.metrics, (feat_dims or {}).get(o.config_hash))
            reason += f"  {collapsed.replace('collapsed', 'COLLAPSED', 1)}" if collapsed else ""
            reason += f"  kNN {monitor_text(o.metrics)}" if "swav/knn_top1" in o.metrics else ""
        lines.append(f"  {o.stage:8}  {o.status:8}  {epochs:>7}  {shown:>18}  {o.name}{reason}")
    lines.append("")
    lines.append("  trials planned {launch/trials_planned:.0f}, run {launch/trials_run:.0f}, reused "
                 "{launch/trials_reused:.0f}, pruned {launch/trials_pruned:.0f}, failed {launch/trials_failed:.0f}, "
                 "fine-tunes skipped {launch/finetune_skipped:.0f}".format_map(counts)
                 + (", stopped {:.0f} (the same launch command resumes them)".format(counts["launch/trials_stopped"])
                    if counts.get("launch/trials_stopped") else ""))
    if counts.get("launch/pruned_epochs_budgeted"):
        lines.append("  pruning saved {saved:.0f} of {budget:.0f} budgeted epochs ({frac:.0%}) and {skip:.0f} fine-tuning "
                     "trials".format(saved=counts["launch/pruned_epochs_saved"],
                                     budget=counts["launch/pruned_epochs_budgeted"],
                                     frac=counts["launch/pruned_fraction_saved"], skip=counts["launch/finetune_skipped"]))
    lines += [f"  warning: {w}" for w in warnings]
    return "\n".join(lines)


def trial_error(trial: Any) -> str:
    """A failed Ray trial's error text: its message, else its error file, else a line saying there is none."""
    for attr in ("error_msg",):
        msg = getattr(trial, attr, None)
        if msg:
            return str(msg)
    path = getattr(trial, "error_file", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return "trial failed (no error text recorded by Ray)"
