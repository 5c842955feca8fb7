"""The record of a launch's trials: their MLflow runs, their states, how each ended.

:class:`TrialLedger` is the only code that writes a trial run's ``ablate.state``, ends a trial run and
builds a :class:`~experiments.launch.context.TrialOutcome`: one owner per state change
(:meth:`TrialLedger.settle`). It is what the Tune callback and stopper talk to
(:class:`~experiments.launch.callbacks.TrialEvents`), and it tells the launch run about changes through
the callables it is given (``on_change``, ``on_failure``, ``heartbeat``), never by calling up.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import yaml

from experiments import spaces
from experiments.launch.artifacts import Housekeeping, record_checkpoint_epoch
from experiments.launch.context import LaunchContext, TrialOutcome, stage_section
from experiments.store.redaction import redact
from experiments.store.tracking import PARENT_TAG, flatten_params
from experiments.launch.trial import TrialPayload, sampled_payload
from trainers.vocabulary import (
    STAGE_FINETUNE,
    STAGE_RECORDS,
    TAG_CELL,
    TAG_CHECKPOINT,
    TAG_DEVICE,
    TAG_ERROR,
    TAG_GIT,
    TAG_GPUS,
    TAG_HASH,
    TAG_LAUNCH,
    TAG_NAME,
    TAG_PREVIOUS_PARENT,
    TAG_PRUNED,
    TAG_PRUNE_REASON,
    TAG_RESUMED_FROM,
    TAG_STAGE,
    TAG_STARTED,
    TAG_STATE,
    TAG_STOP_REQUESTED,
    TAG_TRIAL,
)

if TYPE_CHECKING:
    from experiments.launch.control import StopRequests


def cell_tag(config: Mapping[str, Any], upstream_hash: str | None, name: str, data_fingerprint: str,
             resources: spaces.Resources) -> str:
    """The ``ablate.cell`` tag: the trial's name without its seed and the config hash without the seed.

    Seeds of one cell share it, so MLflow's "Group by: ablate.cell" averages them; the name part is
    what the grouped table's rows show (``res18_ep2_p30 · bn · mlp · 357 · 1c2d3e4f``), the hash part
    keeps cells apart whose names agree (other epochs, other fixed fields).
    """
    h = spaces.finetune_hash({k: v for k, v in config.items() if k != "seed"}, data_fingerprint, upstream_hash,
                             resources)
    return f"{re.sub(r' · seed[0-9]+', '', name)} · {h[:8]}"


def trial_cell(ctx: Any, t: Any) -> str:
    """A planned fine-tuning trial's ``ablate.cell`` tag in the launch ``ctx`` (:func:`cell_tag`)."""
    return cell_tag(t.config, t.cell_upstream, t.cell_name, ctx.data_fingerprint, ctx.spec.finetune.resources)


def epochs_of(trial: Any) -> int:
    """The epochs a Ray trial reported."""
    return int((trial.last_result or {}).get("epoch", 0) or 0)


class TrialLedger:
    """The launch's trials: one MLflow run each, its state, its outcome.

    Args:
        ctx: the launch.
        housekeeping: deletes training states once a trial no longer needs them.
        on_change: told after every change the launch run's counts show (``True``: the headline may move too).
        on_failure: told ``(trial name, last error line)`` when a trial fails after its retries.
        heartbeat: keeps the launch run's heartbeat fresh (called on every step of Ray's event loop).
        prune_record: ``(stage, Ray trial id) -> record`` of the pruner's decision, None when not pruned.
    """

    def __init__(self, ctx: LaunchContext, housekeeping: Housekeeping,
                 on_change: Callable[[bool], Any] = lambda headline: None,
                 on_failure: Callable[[str, str], Any] = lambda trial, detail: None,
                 heartbeat: Callable[[], Any] = lambda: None,
                 prune_record: Callable[[str, str], Any] = lambda stage, trial_id: None) -> None:
        self.ctx, self.housekeeping = ctx, housekeeping
        self.on_change, self.on_failure, self.heartbeat, self.prune_record = on_change, on_failure, heartbeat, prune_record
        self.stops: StopRequests | None = None  # `ablate stop` requests (experiments.launch.control), once the launch run exists
        self.run_ids: dict[str, str] = {}  # config hash -> MLflow run id
        self.planned: dict[str, TrialPayload] = {}  # config hash -> payload of each grid trial, its run made at the start
        self.running: dict[str, TrialPayload] = {}  # Ray trial id -> payload of each trial running now
        self.outcomes: dict[str, TrialOutcome] = {}
        self.metrics: dict[str, dict[str, float]] = {}  # config hash -> the trial's latest metrics
        self.checkpoints: dict[str, Any] = {}
        self.budgets: dict[str, int] = {}  # Ray trial id -> epochs budgeted, for the compute pruning saved
        self.stopping: dict[str, str] = {}  # Ray trial id -> the stop request it is acting on
        self.candidates: list[TrialPayload] = []  # `tpe`: the fine-tuning cells Optuna samples from
        self.sampled: dict[str, TrialPayload] = {}  # `tpe`: Ray trial id -> the sampled trial's payload
        self.resumed_from: set[str] = set()  # earlier launch runs whose trials this launch continues

    def run_id_for(self, h: str) -> str:
        """The MLflow run of a trial."""
        return self.run_ids[h]

    def say(self, text: str) -> None:
        self.ctx.say(text)

    # -- runs ----------------------------------------------------------------

    def child_run(self, stage: str, name: str, h: str, config: Mapping[str, Any], existing: Any,
                  extra_params: Mapping[str, str], tags: Mapping[str, str]) -> str:
        """The MLflow run of a trial: its unfinished run from an earlier launch (resume), or a new child."""
        tracker, parent = self.ctx.tracker, self.ctx.parent_run_id
        if existing is not None and existing.info.status != "FINISHED":
            run_id = existing.info.run_id
            restore = existing.data.tags.get(TAG_CHECKPOINT)
            tracker.reopen(run_id, "SCHEDULED")  # RUNNING again when Ray starts it
            tracker.set_tags(run_id, {TAG_STATE: "planned"})
            tracker.delete_tag(run_id, TAG_STOP_REQUESTED)
            old_parent = existing.data.tags.get(PARENT_TAG)
            if old_parent and old_parent != parent:  # it now belongs to the launch that runs it
                tracker.set_tags(run_id, {PARENT_TAG: parent, TAG_PREVIOUS_PARENT: old_parent})
                self.resumed_from.add(old_parent)
                tracker.set_tags(parent, {TAG_RESUMED_FROM: ",".join(sorted(self.resumed_from))})
            self.say(f"{stage:8} resume  {name} into run {run_id[:8]}" + (f" from {restore}" if restore else ""))
        else:
            git = self.ctx.git_sha
            run_id = tracker.create_run(name, {TAG_STAGE: stage, TAG_HASH: h, TAG_NAME: name, TAG_GIT: git,
                                               TAG_LAUNCH: self.ctx.launch_id, TAG_PRUNED: "false",
                                               TAG_STATE: "planned", "mlflow.source.git.commit": git, **tags},
                                        parent_run_id=parent)
            tracker.reopen(run_id, "SCHEDULED")
        processes = stage_section(self.ctx.spec, stage).resources.processes
        params = {**flatten_params(stage, config), f"{stage}.world_size": str(processes), **extra_params}
        tracker.log_params_tags(run_id, params=params)
        tracker.log_text(run_id, yaml.safe_dump(dict(config), sort_keys=True), f"config/{stage}.yaml")
        return run_id

    def plan_child(self, p: TrialPayload, params_config: Mapping[str, Any], existing: Any) -> str | None:
        """A trial's MLflow run, in state ``planned`` (MLflow status SCHEDULED); returns the checkpoint to resume from.

        An unfinished run of an earlier launch is taken over (its checkpoint decides where the trial
        starts); otherwise a new run is made. Either way it exists from the launch's start, with its
        params, so every planned trial is visible at once; ``ablate.started`` records when Ray starts it.
        ``params_config`` is the config recorded as the run's params.
        """
        run_id = self.child_run(p.stage, p.name, p.config_hash, params_config, existing, p.extra_params, p.tags)
        if p.dataset is not None:
            suffix, digest, source, context = p.dataset
            self.ctx.tracker.log_dataset(run_id, self.ctx.spec.name + suffix, digest, source, context)
        self.run_ids[p.config_hash] = run_id
        if existing is not None and existing.info.status != "FINISHED":
            restore = existing.data.tags.get(TAG_CHECKPOINT)
            if restore:
                record_checkpoint_epoch(self.ctx.tracker, run_id, p.stage, restore)
            return restore
        return None

    def payload(self, trial: Any) -> TrialPayload:
        """The payload of a Ray trial: a grid trial carries it; a `tpe` trial is resolved (and its run made) here."""
        if "trial" in trial.config:
            return trial.config["trial"]
        cached = self.sampled.get(trial.trial_id)
        if cached is not None:
            return cached
        spec = self.ctx.spec
        p = sampled_payload(trial.config, self.candidates)
        cfg = {k: v for k, v in p.config.items() if k != "backbone"}
        h = spaces.finetune_hash(cfg, self.ctx.data_fingerprint, p.upstream_hash, spec.finetune.resources)
        # the name shows the values actually trained (a sampled head or norm replaces the cell's)
        in_name = {"norm", "head", "lr_scheme", "seed"}
        shown = ", ".join(f"{k}={spaces.fmt_value(v)}" for k, v in sorted(p.sampled.items()) if k not in in_name)
        name = spaces.finetune_name(p.config, p.backbone_name, p.seed) + (f" · {shown}" if shown else "")
        cell = cell_tag(cfg, p.upstream_hash, name, self.ctx.data_fingerprint, spec.finetune.resources)
        p = dataclasses.replace(p, config_hash=h, name=name, tags={**p.tags, TAG_CELL: cell})
        if h not in self.run_ids:
            self.plan_child(p, cfg, None)
        self.sampled[trial.trial_id] = p
        return p

    # -- what the Tune callback reports (experiments.launch.callbacks.TrialEvents) ----------

    def started(self, p: TrialPayload, trial: Any) -> None:
        """Ray started a trial: its run becomes RUNNING (state ``running``) and records the Ray trial id."""
        self.budgets[trial.trial_id] = p.epochs
        self.running[trial.trial_id] = p
        run_id = self.run_id_for(p.config_hash)
        self.ctx.tracker.reopen(run_id)
        self.ctx.tracker.set_tags(run_id, {TAG_TRIAL: trial.trial_id, TAG_STATE: "running",
                                           TAG_STARTED: f"{time.time():.0f}"})
        self.on_change(False)

    def log_metrics(self, p: TrialPayload, metrics: Mapping[str, float], step: int) -> None:
        self.ctx.tracker.log_metrics(self.run_id_for(p.config_hash), dict(metrics), step)

    def latest(self, p: TrialPayload, metrics: Mapping[str, float]) -> None:
        """The trial's newest metrics (its outcome carries them)."""
        self.metrics[p.config_hash] = dict(metrics)

    def placed(self, p: TrialPayload, device: str, gpus: str) -> None:
        """Where the trial trains: the device its trainer picked and the GPU ids Ray assigned."""
        self.ctx.tracker.set_tags(self.run_id_for(p.config_hash), {TAG_DEVICE: device, TAG_GPUS: gpus})

    def log_artifacts(self, p: TrialPayload, folder: Path, path: str) -> None:
        self.ctx.tracker.log_artifacts(self.run_id_for(p.config_hash), folder, path)

    def checkpointed(self, p: TrialPayload, checkpoint: Any) -> None:
        """A trial saved a checkpoint: its run names it (the state a later launch resumes from)."""
        from experiments.store.objectstore import location_of

        where = location_of(checkpoint.filesystem, checkpoint.path)
        self.ctx.tracker.set_tags(self.run_id_for(p.config_hash), {TAG_CHECKPOINT: where})
        self.checkpoints[p.config_hash] = checkpoint
        self.housekeeping.drop_superseded(p.restore)

    def beat(self) -> None:
        self.heartbeat()

    def stop_due(self, trial_id: str, epoch: int) -> bool:
        """Whether a trial must stop after the epoch it just reported and checkpointed (asked on its run or the launch).

        A request that arrives with the trial's last epoch is left to the trial's normal end.
        """
        if trial_id in self.stopping:
            return True
        p = self.running.get(trial_id)
        if p is None or self.stops is None or epoch >= p.epochs:
            return False
        request = self.stops.launch_requested(fresh=True) or self.stops.trial_requested(self.run_id_for(p.config_hash))
        if request:
            self.stopping[trial_id] = request
        return bool(request)

    def stage_stop_due(self) -> bool:
        """Whether the running stage ends now: a launch-wide stop request, and every running trial has stopped.

        Called on every step of Ray's event loop, so it also keeps the heartbeat fresh during long epochs.
        """
        self.heartbeat()
        return self.stops is not None and self.stops.launch_requested() is not None and not self.running

    def completed(self, stage: str, p: TrialPayload, trial: Any) -> str:
        """A trial ended without error: finished, stopped by the pruner, or stopped on request; returns its status."""
        self.running.pop(trial.trial_id, None)
        self._complete(stage, p, trial)
        self.on_change(stage == STAGE_FINETUNE)  # a new fine-tuning result may move the headline
        return self.outcomes[p.config_hash].status

    def failed(self, stage: str, p: TrialPayload, trial: Any, error: str) -> None:
        """A trial failed after its retries; the grid goes on."""
        self.running.pop(trial.trial_id, None)
        last = error.strip().splitlines()[-1] if error.strip() else "unknown error"
        self.settle(stage, p, "failed", "FAILED", epochs_of(trial), last, tags={TAG_ERROR: error[-5000:]})
        self.say(f"{stage:8} FAILED  {p.name}: {redact(last)}")
        self.on_change(False)
        self.on_failure(p.name, last)

    # -- how trials end ----------------------------------------------------------

    def settle(self, stage: str, p: TrialPayload, state: str, mlflow_status: str, epochs_run: int = 0,
               reason: str = "", tags: Mapping[str, str] | None = None, outcome: str | None = None) -> None:
        """End a trial's run in ``state`` (the ``ablate.state`` tag, with ``tags``), as MLflow's ``mlflow_status``,
        and record its outcome (``outcome``: the summary's word, when it differs from the state)."""
        h = p.config_hash
        run_id = self.run_ids.get(h, "")
        if run_id:
            self.ctx.tracker.set_tags(run_id, {**(tags or {}), TAG_STATE: state})
            self.ctx.tracker.finish(run_id, mlflow_status)
        self.outcomes[h] = TrialOutcome(stage, p.name, h, run_id, outcome or state, self.metrics.get(h, {}),
                                        epochs_run, p.epochs, reason)

    def record(self, outcome: TrialOutcome) -> None:
        """An outcome decided without running the trial (finished in an earlier launch)."""
        self.outcomes[outcome.config_hash] = outcome

    def _complete(self, stage: str, p: TrialPayload, trial: Any) -> None:
        run_id = self.run_id_for(p.config_hash)
        record = self.prune_record(stage, trial.trial_id)
        epochs_run = epochs_of(trial)
        if record is not None:
            self.housekeeping.drop_checkpoints(run_id, trial.checkpoint)
            self.settle(stage, p, "pruned", "FINISHED", epochs_run, record.reason,
                        tags={TAG_PRUNED: "true", TAG_PRUNE_REASON: record.reason[:5000]})
            self.say(f"{stage:8} PRUNED  {p.name}: {record.reason}")
            return
        if trial.trial_id in self.stopping:
            self.stopped(stage, p, epochs_run, "stopped by `ablate stop`")
            return
        ckpt = trial.checkpoint
        if ckpt is None:
            self.settle(stage, p, "failed", "FAILED", epochs_run, "ended without a checkpoint",
                        tags={TAG_ERROR: "trial ended without a checkpoint"})
            return
        info = STAGE_RECORDS[stage]
        with ckpt.as_directory() as d:
            files = sorted(Path(d).glob(f"{info.export}.*"))
            if files:
                with tempfile.TemporaryDirectory() as tmp:
                    for f in files:
                        shutil.copy2(f, Path(tmp) / f.name)
                    self.ctx.tracker.log_artifacts(run_id, tmp, info.export)
        if info.export_required and not files:
            self.settle(stage, p, "failed", "FAILED", epochs_run, f"no exported {info.export}",
                        tags={TAG_ERROR: f"pretraining ended without an exported {info.export}"})
            return
        self.housekeeping.drop_checkpoints(run_id, ckpt)
        self.ctx.tracker.delete_tag(run_id, TAG_STOP_REQUESTED)  # a request that came with the last epoch
        self.settle(stage, p, "finished", "FINISHED", epochs_run, outcome="done")
        self.say(f"{stage:8} done    {p.name}")

    def stopped(self, stage: str, p: TrialPayload, epochs_run: int, why: str) -> None:
        """A trial stopped on request (or by Ctrl-C): KILLED, state ``stopped``, its checkpoint tag kept for the resume."""
        run_id = self.run_ids.get(p.config_hash, "")
        if run_id:
            self.ctx.tracker.delete_tag(run_id, TAG_STOP_REQUESTED)
        self.settle(stage, p, "stopped", "KILLED", epochs_run, why)
        at = f" after epoch {epochs_run}/{p.epochs}" if epochs_run else ""
        self.say(f"{stage:8} STOPPED {p.name}{at} ({why}; the same launch command resumes it)")

    def stop_unfinished(self, why: str) -> None:
        """Every trial of this launch with a run but no outcome yet (planned, or running at Ctrl-C) becomes ``stopped``."""
        for h in list(self.run_ids):
            if h in self.outcomes:
                continue
            p = self.planned.get(h) or next((q for q in self.sampled.values() if q.config_hash == h), None)
            if p is not None:
                self.stopped(p.stage, p, 0, why)

    def skip(self, p: TrialPayload, why: str) -> None:
        """A fine-tuning trial whose backbone did not survive: planned at the start, its run stays, KILLED (a later
        launch takes it over)."""
        self.settle(p.stage, p, "skipped", "KILLED", reason=why)

    def abandon_open(self) -> None:
        """The store failed mid-launch: every run still open is ended as stopped, if the store takes the write."""
        import contextlib

        for run_id in self.run_ids.values():
            with contextlib.suppress(Exception):
                if self.ctx.tracker.client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
                    self.ctx.tracker.set_tags(run_id, {TAG_STATE: "stopped"})
                    self.ctx.tracker.finish(run_id, "KILLED")

    def counts(self) -> dict[str, int]:
        """Outcomes per status (``done``, ``reused``, ``pruned``, ``failed``, ``skipped``, ``stopped``)."""
        outs = list(self.outcomes.values())
        return {s: sum(1 for o in outs if o.status == s) for s in ("done", "reused", "pruned", "failed", "skipped",
                                                                    "stopped")}


__all__: Sequence[str] = ["TrialLedger", "cell_tag", "epochs_of", "trial_cell"]
