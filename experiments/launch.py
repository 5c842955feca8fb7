"""The two-stage launch: unique SwAV pretraining runs, then fine-tuning on the survivors.

Data flow (docs/ARCHITECTURE.md)::

    space.yaml -> StudySpec -> pretrain configs (unique by config hash, minus those already
    FINISHED in MLflow) -> Ray Tune stage 1 -> per epoch: trainers.swav.train -> TuneReporter ->
    tune.report -> driver: MLflow log_batch + Optuna pruner -> survivors' backbones ->
    finetune configs x surviving backbones x seeds -> Ray Tune stage 2 -> trainers.detection.train
    -> COCO metrics -> MLflow -> best -> registry

Only the driver (this process) writes to MLflow; trials talk to it through ``tune.report``.
Checkpoints go through Ray's storage (``--storage-path``) and are tagged on the MLflow run, so a
crashed trial resumes from its last checkpoint within a launch (``FailureConfig``) and an
interrupted launch resumes across launches (same config hash -> same MLflow run).

Across the process boundary: :mod:`experiments.trial` is what runs inside a Ray worker (a
:class:`~experiments.trial.TrialPayload` per trial), :mod:`experiments.progress` the driver's
Tune callback and summary, :mod:`experiments.scheduler` the pruning scheduler. Those three import
Ray; this module imports them only when a stage runs, so a dry run never loads Ray.

Size: about 840 lines, past the ~600 aimed for, most of it the :class:`Launcher` (its docstring
says why it stays one class); the rest are the launch's start-up checks (resources, Ray, data).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TextIO

from experiments import spaces, ui
from experiments.redaction import OPTUNA_STORAGE_ENV, redact, use_uri_credentials
from experiments.spaces import Plan, SpaceError, StudySpec, resolve_data
from experiments.store import check_store, failure_text, one_line, store_failure
from experiments.tracking import (
    DEFAULT_STORE_DIR, HEARTBEAT_EVERY_S, PARENT_TAG, TAG_BEST_RUN, TAG_CELL, TAG_CHECKPOINT, TAG_DRIVER, TAG_ERROR,
    TAG_GIT, TAG_HASH, TAG_HEADLINE, TAG_HEARTBEAT, TAG_LAUNCH, TAG_NAME, TAG_PREVIOUS_PARENT, TAG_PRUNE_REASON,
    TAG_PRUNED, TAG_RESUMED_FROM, TAG_SEED, TAG_STAGE, TAG_STARTED, TAG_STATE, TAG_STOP_REQUESTED, TAG_SUPERSEDED_BY,
    TAG_TRIAL, TAG_UPSTREAM, UPSTREAM_SCRATCH, Tracker, configure_client_retries, default_tracking_uri, driver_id,
    flatten_params, launch_alive, usable_run,
)
from experiments.trial import CANDIDATE_KEY, STAGE_FINETUNE, STAGE_PRETRAIN, TrialPayload, loggable_metrics, sampled_payload
from trainers.common import git_sha

if TYPE_CHECKING:  # type hints only: importing the scheduler loads Ray
    from experiments.control import StopRequests
    from experiments.scheduler import OptunaPruningScheduler


class LaunchError(RuntimeError):
    """The launch itself broke (not a single trial)."""


class LaunchSetupError(ValueError):
    """The launch cannot start as asked (unreachable store, a cluster too small); the CLI exits 2."""


@dataclass
class LaunchOptions:
    """Command-line options of ``ablate launch``."""

    tracking_uri: str | None = None
    storage_path: str | None = None
    name: str | None = None
    dry_run: bool = False
    resume: bool = False
    max_concurrent: int | None = None
    address: str | None = None
    optuna_storage: str | None = None
    max_failures: int = 2
    register: bool = True
    keep_checkpoints: bool = False  # keep finished trials' training states (default: exported model only)
    notify: str | None = None  # shell command run when the launch ends or a trial fails (experiments.control.notify)
    quiet: bool = False  # print the summary only, no progress lines
    num_gpus: float | None = None  # GPUs the local Ray node declares (default: those torch sees); --num-gpus
    out: TextIO = field(default_factory=lambda: sys.stdout)


@dataclass
class TrialOutcome:
    """How one trial ended, for the summary and the parent run's counts."""

    stage: str
    name: str
    config_hash: str
    run_id: str
    status: str  # done | reused | pruned | failed | skipped | stopped
    metrics: dict[str, float] = field(default_factory=dict)
    epochs_run: int = 0
    epochs_budget: int = 0
    reason: str = ""


@dataclass
class LaunchResult:
    """What a launch did."""

    study: str
    parent_run_id: str | None
    outcomes: list[TrialOutcome]
    exit_code: int
    plan: Plan | None = None
    data: dict[str, str] | None = None  # the data set's resolved paths (DATA_PATH_KEYS -> path)


# ---------------------------------------------------------------------------
# The launcher
# ---------------------------------------------------------------------------


def record_checkpoint_epoch(tracker: Tracker, run_id: str, stage: str, checkpoint: str) -> int:
    """Log the metrics of the epoch a trial resumes after, if its run lacks them; returns the count logged.

    The driver logs an epoch's metrics just after it records that epoch's checkpoint; a driver killed
    between the two leaves a run whose last checkpoint epoch has no metrics. The checkpoint holds them,
    so a resuming launch restores them from there (once: a step already in the history is left alone).
    A checkpoint that is not a local folder, or not readable, is left to the trainer to judge.
    """
    from trainers.checkpoints import CheckpointError, checkpoint_progress

    if not Path(checkpoint).is_dir():
        return 0
    try:
        epoch, metrics = checkpoint_progress(checkpoint)
    except CheckpointError:
        return 0
    metrics = loggable_metrics(metrics, stage)
    if not metrics:
        return 0
    probe = next(iter(metrics))
    if any(m.step == epoch for m in tracker.client.get_metric_history(run_id, probe)):
        return 0
    return tracker.log_metrics(run_id, metrics, epoch)


class Launcher:
    """One launch of a study: plan, track, run both stages, summarise.

    Longer than a class should be (about 540 lines): one launch's state (MLflow runs per config
    hash, outcomes, checkpoints, budgets, the stages' schedulers) is shared by both stages and by
    the Tune callback's events, and each method reads or writes it. What needs none of it (Ray
    start-up, the `tpe` search, backbone downloads, checkpoint deletion) is in module functions.
    """

    def __init__(self, space: str | Path, options: LaunchOptions) -> None:
        self.options = options
        if options.notify is not None:
            from experiments.control import check_notify_command

            check_notify_command(options.notify)  # before anything runs: a secret on the command line is refused
        _ray_token_mode(options.address or os.environ.get("RAY_ADDRESS"))  # before anything imports ray
        self.spec = spaces.load_space(space, name=options.name)
        self.store_dir = DEFAULT_STORE_DIR.resolve()
        self.tracking_uri = use_uri_credentials(options.tracking_uri or default_tracking_uri(DEFAULT_STORE_DIR))
        if self.tracking_uri.startswith(("http://", "https://")):
            # within seconds, before the retries below would wait minutes on a server that is not there
            check_store(self.tracking_uri, LaunchSetupError)
        configure_client_retries()  # ride out a tracking-server restart (one that answered at the start)
        storage = options.storage_path or os.environ.get("ABLATE_STORAGE_PATH") or str(self.store_dir / "ray")
        self.storage = storage
        self.local_storage = Path(storage) if "://" not in storage else self.store_dir / "cache"
        self.optuna_storage = (options.optuna_storage or os.environ.get(OPTUNA_STORAGE_ENV)
                               or f"sqlite:///{self.store_dir / 'optuna.db'}")
        self.max_concurrent = options.max_concurrent or self.spec.max_concurrent
        self.launch_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.git_sha = git_sha()
        self.data_paths: dict[str, str] = {}  # DATA_PATH_KEYS -> path, set by plan()
        self.data_fingerprint = ""  # set by plan()
        self._tracker: Tracker | None = None  # opened by run(): read-only for a dry run
        self.parent_run_id: str | None = None
        self.outcomes: dict[str, TrialOutcome] = {}
        self.metrics: dict[str, dict[str, float]] = {}
        self.checkpoints: dict[str, Any] = {}
        self.run_ids: dict[str, str] = {}  # config hash -> MLflow run id
        self.planned: dict[str, TrialPayload] = {}  # config hash -> payload of each grid trial, its run made at the start
        self.running: dict[str, TrialPayload] = {}  # Ray trial id -> payload of each trial running now
        self.stops: StopRequests | None = None  # `ablate stop` requests (experiments.control), read by the stopper
        self.stopping: dict[str, str] = {}  # Ray trial id -> the stop request it is acting on
        self.current_plan: Plan | None = None
        self.count_step = 0  # step of the launch run's live `launch/*` counts: one more per update
        self.headline = ""  # the study's headline so far (experiments.headline), one line
        self.budgets: dict[str, int] = {}  # Ray trial id -> epochs budgeted, for the compute pruning saved
        self.schedulers: dict[str, OptunaPruningScheduler] = {}  # stage -> its pruning scheduler, if any
        self.candidates: list[TrialPayload] = []  # `tpe`: the fine-tuning cells Optuna samples from
        self.sampled: dict[str, TrialPayload] = {}  # `tpe`: Ray trial id -> the sampled trial's payload
        self.t0 = time.time()
        self.last_beat = 0.0
        self.resumed_from: set[str] = set()  # earlier launch runs whose trials this launch continues
        self.superseded: set[str] = set()  # earlier launches' checkpoints already deleted (their trial resumed)

    @property
    def tracker(self) -> Tracker:
        """The study's MLflow writer (opened by :meth:`run`)."""
        if self._tracker is None:
            raise LaunchError("the tracking store is not open yet: Launcher.run() opens it")
        return self._tracker

    @tracker.setter
    def tracker(self, tracker: Tracker) -> None:
        self._tracker = tracker

    def say(self, text: str) -> None:
        """One progress line, with the seconds since the launch started."""
        if self.options.quiet:
            return
        elapsed = time.time() - self.t0
        print(f"[{elapsed:6.0f}s] {text}", file=self.options.out, flush=True)

    # -- planning ----------------------------------------------------------

    def plan(self) -> Plan:
        """Resolve the data (a sample set is generated) and expand the space into the trials of both stages."""
        self.local_storage.mkdir(parents=True, exist_ok=True)
        self.data_paths, self.data_fingerprint = resolve_data(self.spec, self.local_storage)
        return spaces.expand(self.spec, self.data_fingerprint, self.data_paths)

    def earlier_runs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Existing runs of this study per config hash, for both stages."""
        return self.tracker.runs_by_hash(STAGE_PRETRAIN), self.tracker.runs_by_hash(STAGE_FINETUNE)

    # -- the launch ----------------------------------------------------------

    def run(self) -> LaunchResult:
        self.t0 = time.time()
        plan = self.plan()
        self.tracker = Tracker(self.tracking_uri, self.spec.name, create=not self.options.dry_run)
        pre_runs, ft_runs = self.earlier_runs()
        reused = {h: r.info.run_id for h, r in pre_runs.items() if _usable_backbone_run(r)}
        pruned_before = [h for h, r in pre_runs.items() if r.data.tags.get(TAG_PRUNED) == "true"]
        too_big = [] if self.options.address or os.environ.get("RAY_ADDRESS") else oversized_requests(
            self.spec, *local_size(self.spec, self.options.num_gpus))
        if self.options.dry_run:
            print(spaces.format_plan(plan, reused, pruned_before), file=self.options.out)
            for line in too_big:
                print(f"warning: {line}", file=self.options.out)
            print(f"\n(dry run: nothing trained; tracking store {redact(self.tracking_uri)})", file=self.options.out)
            return LaunchResult(self.spec.name, None, [], 0, plan, dict(self.data_paths))

        if too_big:
            raise LaunchSetupError("; ".join(too_big))
        self._init_ray()  # a cluster too small for one trial is refused here, before anything is recorded
        self.parent_run_id = self._parent_run(plan)
        self._experiment_view(plan)
        for warning in plan.warnings:
            self.say(f"warning: {warning}")
        monitor = self._system_metrics()
        try:
            from experiments.control import StopRequests

            self.stops = StopRequests(self.tracker, self.parent_run_id)
            self.current_plan = plan
            self._plan_runs(plan, pre_runs, ft_runs)  # every trial visible at once, state `planned`
            self._update_launch(headline=True)
            survivors = self._stage_pretrain(plan, pre_runs)
            if self.stops.launch_requested(fresh=True) is None:
                self._stage_finetune(plan, ft_runs, survivors)
            result = self._finish(plan)
        except BaseException as exc:
            store_exc = store_failure(exc)
            interrupted = isinstance(exc, KeyboardInterrupt)
            status = "KILLED" if interrupted or store_exc else "FAILED"
            with contextlib.suppress(Exception):  # the store itself may be what failed
                self.tracker.set_tags(self.parent_run_id, {TAG_ERROR: f"{type(exc).__name__}: {exc}"[:5000]})
                if interrupted:  # Ctrl-C: the trials keep their checkpoints; the same command resumes them
                    self._stop_unfinished("interrupted")
                self.tracker.finish(self.parent_run_id, status)
            self._notify("launch_stopped" if interrupted else "launch_failed", detail=f"{type(exc).__name__}: {exc}")
            if store_exc is None:
                raise
            # Ray's trials were stopped when the exception left tuner.fit(). The runs this launch
            # had open are ended if the store takes the write; if not, the next launch of the study
            # takes them over (a dead launch's trials resume from their checkpoints).
            for run_id in self.run_ids.values():
                with contextlib.suppress(Exception):
                    if self.tracker.client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
                        self.tracker.set_tags(run_id, {TAG_STATE: "stopped"})
                        self.tracker.finish(run_id, "KILLED")
            raise LaunchError(one_line(
                f"the tracking store {redact(self.tracking_uri)} stopped accepting writes "
                f"({failure_text(store_exc)}); the launch stopped its "
                "trials. Make the store writable again (file permissions, disk space, the server), then run the same "
                "command: it resumes from the trials' checkpoints")) from exc
        finally:
            if monitor is not None:
                monitor.finish()
        return result

    def _parent_run(self, plan: Plan) -> str:
        """This launch's run: a new one, or (``--resume``) the study's last unfinished one.

        Launch runs left RUNNING by a driver that died (``kill -9``, a lost machine) are ended as
        KILLED with ``ablate.superseded_by`` naming the run that takes over; their unfinished
        trials move under it when they resume (``ablate.previous_parent_run_id`` keeps the link).
        A launch of the same study whose driver is still alive is left alone, and ``--resume``
        refuses to take its run over.
        """
        launches = self.tracker.find_runs(extra_filter=f"tags.`{TAG_STAGE}` = 'launch'")
        alive = {r.info.run_id for r in launches if launch_alive(r)}
        parent = None
        if self.options.resume:
            candidates = [r for r in launches if r.info.status != "FINISHED"]
            if candidates and launch_alive(candidates[0]):
                r = candidates[0]
                raise LaunchSetupError(
                    f"launch run {r.info.run_id} of study {self.spec.name!r} is still running (driver "
                    f"{r.data.tags.get(TAG_DRIVER, 'unknown')}); stop it before resuming it, or launch without --resume")
            parent = candidates[0].info.run_id if candidates else None
        driver = {TAG_DRIVER: driver_id(), TAG_HEARTBEAT: f"{time.time():.0f}"}
        if parent:
            self.tracker.reopen(parent)
            self.tracker.set_tags(parent, driver)
            self.tracker.delete_tag(parent, TAG_STOP_REQUESTED)  # the request that stopped it has been served
            self.say(f"resuming launch run {parent}")
        else:
            parent = self.tracker.create_run(f"launch {self.launch_id}", {
                TAG_STAGE: "launch", TAG_LAUNCH: self.launch_id, TAG_GIT: self.git_sha,
                "mlflow.source.git.commit": self.git_sha, **driver})
        dead = [r.info.run_id for r in launches if r.info.status == "RUNNING" and r.info.run_id != parent
                and r.info.run_id not in alive]
        for run_id in dead:
            self.tracker.set_tags(run_id, {TAG_SUPERSEDED_BY: parent})
            self.tracker.finish(run_id, "KILLED")
            self.say(f"launch run {run_id[:8]} had lost its driver: ended as KILLED, taken over by {parent[:8]}")
        self.last_beat = time.time()
        self.tracker.log_text(parent, self.spec.text, f"space/{self.spec.path.name}")
        self.tracker.log_params_tags(parent, params={
            "space": str(self.spec.path), "search": self.spec.search["kind"], "seeds": str(list(self.spec.seeds)),
            "max_concurrent": str(self.max_concurrent), "storage_path": self.storage,
            "axes.pretrain": ",".join(spaces.axes_of(self.spec)["pretrain"]),
            "axes.finetune": ",".join(spaces.axes_of(self.spec)["finetune"])})
        self.tracker.log_dataset(parent, self.spec.name + "-data", plan.data_fingerprint,
                                 str(Path(self.data_paths["train_annotations"]).parent.parent), "training")
        self.tracker.log_metrics(parent, {"launch/pretrain_planned": len(plan.pretrain),
                                          "launch/finetune_planned": len(plan.finetune)}, 0)
        return parent

    def beat(self, force: bool = False) -> None:
        """Refresh the launch run's heartbeat (at most every HEARTBEAT_EVERY_S): a driver that stops beating is dead."""
        now = time.time()
        if self.parent_run_id and (force or now - self.last_beat >= HEARTBEAT_EVERY_S):
            self.last_beat = now
            self.tracker.set_tags(self.parent_run_id, {TAG_HEARTBEAT: f"{now:.0f}"})

    def _system_metrics(self) -> Any:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.parent_run_id, sampling_interval=10, tracking_uri=self.tracking_uri)
            monitor.start()
            return monitor
        except Exception as exc:  # noqa: BLE001 - system metrics are a nicety; never block a launch
            self.say(f"system metrics disabled: {exc}")
            return None

    def _init_ray(self) -> None:
        init_ray(self.spec, self.options.address or os.environ.get("RAY_ADDRESS"), self.storage,
                 self.options.storage_path, self.options.num_gpus)

    # -- trial runs in MLflow -------------------------------------------------

    def _child(self, stage: str, name: str, h: str, config: Mapping[str, Any], existing: Any,
               extra_params: Mapping[str, str], tags: Mapping[str, str]) -> str:
        """The MLflow run of a trial: its unfinished run from an earlier launch (resume), or a new child."""
        if existing is not None and existing.info.status != "FINISHED":
            run_id = existing.info.run_id
            restore = existing.data.tags.get(TAG_CHECKPOINT)
            self.tracker.reopen(run_id, "SCHEDULED")  # RUNNING again when Ray starts it
            self.tracker.set_tags(run_id, {TAG_STATE: "planned"})
            self.tracker.delete_tag(run_id, TAG_STOP_REQUESTED)
            old_parent = existing.data.tags.get(PARENT_TAG)
            if old_parent and old_parent != self.parent_run_id:  # it now belongs to the launch that runs it
                self.tracker.set_tags(run_id, {PARENT_TAG: self.parent_run_id, TAG_PREVIOUS_PARENT: old_parent})
                self.resumed_from.add(old_parent)
                self.tracker.set_tags(self.parent_run_id, {TAG_RESUMED_FROM: ",".join(sorted(self.resumed_from))})
            self.say(f"{stage:8} resume  {name} into run {run_id[:8]}" + (f" from {restore}" if restore else ""))
        else:
            run_id = self.tracker.create_run(name, {TAG_STAGE: stage, TAG_HASH: h, TAG_NAME: name, TAG_GIT: self.git_sha,
                                                    TAG_LAUNCH: self.launch_id, TAG_PRUNED: "false",
                                                    TAG_STATE: "planned", "mlflow.source.git.commit": self.git_sha,
                                                    **tags},
                                             parent_run_id=self.parent_run_id)
            self.tracker.reopen(run_id, "SCHEDULED")
        processes = (self.spec.pretrain if stage == STAGE_PRETRAIN else self.spec.finetune).resources.processes
        params = {**flatten_params(stage, config), f"{stage}.world_size": str(processes), **extra_params}
        self.tracker.log_params_tags(run_id, params=params)
        self.tracker.log_text(run_id, _yaml(config), f"config/{stage}.yaml")
        return run_id

    def _plan_child(self, p: TrialPayload, params_config: Mapping[str, Any], existing: Any) -> str | None:
        """A trial's MLflow run, in state ``planned`` (MLflow status SCHEDULED); returns the checkpoint to resume from.

        An unfinished run of an earlier launch is taken over (its checkpoint decides where the trial
        starts); otherwise a new run is made. Either way it exists from the launch's start, with its
        params, so every planned trial is visible at once; ``ablate.started`` records when Ray starts it.
        ``params_config`` is the config recorded as the run's params.
        """
        run_id = self._child(p.stage, p.name, p.config_hash, params_config, existing, p.extra_params, p.tags)
        if p.dataset is not None:
            suffix, digest, source, context = p.dataset
            self.tracker.log_dataset(run_id, self.spec.name + suffix, digest, source, context)
        self.run_ids[p.config_hash] = run_id
        if existing is not None and existing.info.status != "FINISHED":
            restore = existing.data.tags.get(TAG_CHECKPOINT)
            if restore:
                record_checkpoint_epoch(self.tracker, run_id, p.stage, restore)
            return restore
        return None

    def _plan_runs(self, plan: Plan, pre_runs: dict[str, Any], ft_runs: dict[str, Any]) -> None:
        """Make the run of every trial this launch will train, before any starts (`tpe` samples: when sampled).

        Fine-tuning cells on a backbone already pruned or failed in an earlier launch get none (they
        are skipped, as before); those on a backbone this launch trains are planned, and marked
        ``skipped`` if it does not survive.
        """
        pre_by_hash = {t.config_hash: t for t in plan.pretrain}
        dataset = ("-unlabeled", plan.data_fingerprint, self.data_paths["unlabeled"], "pretraining")
        for t in plan.pretrain:
            run = pre_runs.get(t.config_hash)
            if run is not None and run.info.status == "FINISHED":
                continue
            p = TrialPayload(STAGE_PRETRAIN, t.config, t.config_hash, t.name, int(t.config["epochs"]),
                             self.spec.pretrain.resources.processes, dataset=dataset)
            self.planned[t.config_hash] = dataclasses.replace(p, restore=self._plan_child(p, t.config, run))
        if self.spec.search["kind"] == "tpe":
            return
        for t in plan.finetune:
            run, up = ft_runs.get(t.config_hash), pre_runs.get(t.upstream_hash) if t.upstream_hash else None
            if (run is not None and run.info.status == "FINISHED") or (
                    up is not None and up.info.status == "FINISHED" and not _usable_backbone_run(up)):
                continue
            upstream_run = self.run_ids.get(t.upstream_hash or "") or (up.info.run_id if up is not None else "")
            p = self._finetune_payload(t, plan, pre_by_hash, upstream_run, spaces.BACKBONE_SCRATCH)
            self.planned[t.config_hash] = dataclasses.replace(p, restore=self._plan_child(p, t.config, run))

    def _finetune_payload(self, t: Any, plan: Plan, pre_by_hash: Mapping[str, Any], upstream_run: str,
                          backbone: str) -> TrialPayload:
        """A fine-tuning cell's payload: its config on ``backbone``, its backbone's params and lineage tags."""
        dataset = ("-labeled", plan.data_fingerprint, self.data_paths["train_annotations"], "training")
        extra = self._finetune_params(plan, t)  # the backbone's name and pretraining params ("none" for scratch)
        tags = {TAG_SEED: str(t.seed), TAG_CELL: self._cell(t.config, t.upstream_hash, t.name)}
        if t.upstream_hash:
            tags[TAG_UPSTREAM] = upstream_run
            if upstream_run:  # the backbone as a link in the run's description
                tags[ui.NOTE_TAG] = ("Fine-tuned on the SwAV backbone "
                                     + ui.run_link(self.tracker.experiment_id, upstream_run, t.backbone_name))
        else:
            tags[TAG_UPSTREAM] = UPSTREAM_SCRATCH
            tags[ui.NOTE_TAG] = "No pretraining: the baseline, trained from random weights."
        return TrialPayload(STAGE_FINETUNE, {**t.config, "backbone": backbone}, t.config_hash, t.name,
                            int(t.config["epochs"]), self.spec.finetune.resources.processes,
                            upstream_hash=t.upstream_hash, extra_params=extra, tags=tags, dataset=dataset,
                            backbone_name=t.backbone_name, seed=t.seed)

    def run_id_for(self, h: str) -> str:
        """The MLflow run of a trial."""
        return self.run_ids[h]

    def sampled_trial(self, trial: Any) -> TrialPayload:
        """The payload of a `tpe` trial (driver side): identity, name and MLflow run of the sampled config."""
        cached = self.sampled.get(trial.trial_id)
        if cached is not None:
            return cached
        p = sampled_payload(trial.config, self.candidates)
        cfg = {k: v for k, v in p.config.items() if k != "backbone"}
        h = spaces.finetune_hash(cfg, self.data_fingerprint, p.upstream_hash, self.spec.finetune.resources)
        # the name shows the values actually trained (a sampled head or norm replaces the cell's)
        in_name = {"norm", "head", "lr_scheme", "seed"}
        shown = ", ".join(f"{k}={spaces.fmt_value(v)}" for k, v in sorted(p.sampled.items()) if k not in in_name)
        name = spaces.finetune_name(p.config, p.backbone_name, p.seed) + (f" · {shown}" if shown else "")
        p = dataclasses.replace(p, config_hash=h, name=name,
                                tags={**p.tags, TAG_CELL: self._cell(cfg, p.upstream_hash, name)})
        if h not in self.run_ids:
            self._plan_child(p, cfg, None)
        self.sampled[trial.trial_id] = p
        return p

    # -- trial events (called by the Tune callback) ---------------------------

    def trial_started(self, p: TrialPayload, trial: Any) -> None:
        """Ray started a trial: its run becomes RUNNING (state ``running``) and records the Ray trial id."""
        self.budgets[trial.trial_id] = p.epochs
        self.running[trial.trial_id] = p
        run_id = self.run_id_for(p.config_hash)
        self.tracker.reopen(run_id)
        self.tracker.set_tags(run_id, {TAG_TRIAL: trial.trial_id, TAG_STATE: "running", TAG_STARTED: f"{time.time():.0f}"})
        self._update_launch()

    # -- steering (experiments.control: `ablate stop`, --notify) ----------------

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
        self.beat()
        return self.stops is not None and self.stops.launch_requested() is not None and not self.running

    def _stopped(self, stage: str, p: TrialPayload, run_id: str, epochs_run: int, why: str) -> None:
        """A trial stopped on request (or by Ctrl-C): KILLED, state ``stopped``, its checkpoint tag kept for the resume."""
        self.tracker.set_tags(run_id, {TAG_STATE: "stopped"})
        self.tracker.delete_tag(run_id, TAG_STOP_REQUESTED)
        self.tracker.finish(run_id, "KILLED")
        self.outcomes[p.config_hash] = TrialOutcome(stage, p.name, p.config_hash, run_id, "stopped",
                                                    self.metrics.get(p.config_hash, {}), epochs_run, p.epochs, why)
        at = f" after epoch {epochs_run}/{p.epochs}" if epochs_run else ""
        self.say(f"{stage:8} STOPPED {p.name}{at} ({why}; the same launch command resumes it)")

    def _stop_unfinished(self, why: str) -> None:
        """Every trial of this launch with a run but no outcome yet (planned, or running at Ctrl-C) becomes ``stopped``."""
        for h, run_id in list(self.run_ids.items()):
            if h in self.outcomes:
                continue
            p = self.planned.get(h) or next((q for q in self.sampled.values() if q.config_hash == h), None)
            if p is not None:
                self._stopped(p.stage, p, run_id, 0, why)

    def _counts(self, plan: Plan) -> dict[str, float]:
        """The launch run's ``launch/*`` counts as they stand (live during the launch, final at its end)."""
        from experiments.scheduler import saved_compute

        outs = list(self.outcomes.values())
        count = {s: sum(1 for o in outs if o.status == s)
                 for s in ("done", "reused", "pruned", "failed", "skipped", "stopped")}
        pre_scheduler = self.schedulers.get(STAGE_PRETRAIN)
        saved = saved_compute(pre_scheduler.pruned if pre_scheduler is not None else {}, self.budgets)
        n_finetune = int(self.spec.search["num_samples"]) if self.spec.search["kind"] == "tpe" else len(plan.finetune)
        return {"launch/trials_planned": len(plan.pretrain) + n_finetune,
                "launch/trials_running": len(self.running),
                "launch/trials_run": count["done"] + count["pruned"] + count["failed"],
                "launch/trials_reused": count["reused"], "launch/trials_pruned": count["pruned"],
                "launch/trials_failed": count["failed"], "launch/trials_stopped": count["stopped"],
                "launch/finetune_skipped": count["skipped"],
                "launch/pruned_epochs_budgeted": saved["epochs_budgeted"],
                "launch/pruned_epochs_saved": saved["epochs_saved"],
                "launch/pruned_fraction_saved": saved["fraction_saved"]}

    def _update_launch(self, headline: bool = False) -> dict[str, float]:
        """Log the live counts on the launch run (one step further each time) and, if asked, the study's headline."""
        if self.current_plan is None or not self.parent_run_id:
            return {}
        counts = self._counts(self.current_plan)
        self.count_step += 1
        self.tracker.log_metrics(self.parent_run_id, counts, self.count_step)
        if headline:
            from experiments.status import current_headline

            found = current_headline(self.tracker.client, self.tracker.experiment_id)
            best = found.best
            self.headline = found.one_line()
            self.tracker.set_tags(self.parent_run_id, {TAG_HEADLINE: self.headline,
                                                       **({TAG_BEST_RUN: best.run_id} if best else {})})
            if best is not None:
                self.tracker.log_metrics(self.parent_run_id, {"launch/best_AP50": best.value}, self.count_step)
        return counts

    def _notify(self, event: str, trial: str = "", detail: str = "") -> None:
        """Run the ``--notify`` command for an event; a failing command is reported, never fatal."""
        if not self.options.notify:
            return
        from experiments.control import Notice, notify

        problem = notify(self.options.notify, Notice(event, self.spec.name, self.headline, self.parent_run_id or "",
                                                     trial, redact(detail), self.tracking_uri))
        if problem:
            print(f"warning: {problem}", file=self.options.out, flush=True)

    def checkpointed(self, p: TrialPayload, checkpoint: Any) -> None:
        """A trial saved a checkpoint: its run names it (the state a later launch resumes from)."""
        self.tracker.set_tags(self.run_id_for(p.config_hash), {TAG_CHECKPOINT: checkpoint.path})
        self.checkpoints[p.config_hash] = checkpoint
        self.drop_superseded(p)

    def _prune_record(self, stage: str, trial: Any) -> Any:
        sched = self.schedulers.get(stage)
        return sched.pruned.get(trial.trial_id) if sched is not None else None

    def complete(self, stage: str, p: TrialPayload, trial: Any) -> None:
        """A trial ended without error: finished, stopped by the pruner, or stopped on request."""
        self.running.pop(trial.trial_id, None)
        self._complete(stage, p, trial)
        self._update_launch(headline=stage == STAGE_FINETUNE)

    def _complete(self, stage: str, p: TrialPayload, trial: Any) -> None:
        h = p.config_hash
        run_id = self.run_id_for(h)
        metrics = self.metrics.get(h, {})
        record = self._prune_record(stage, trial)
        epochs_run = self.epochs_of(trial)
        if record is not None:
            self.tracker.set_tags(run_id, {TAG_PRUNED: "true", TAG_PRUNE_REASON: record.reason[:5000],
                                           TAG_STATE: "pruned"})
            self.drop_checkpoints(run_id, trial.checkpoint)
            self.tracker.finish(run_id, "FINISHED")
            self.outcomes[h] = TrialOutcome(stage, p.name, h, run_id, "pruned", metrics, epochs_run, p.epochs,
                                            record.reason)
            self.say(f"{stage:8} PRUNED  {p.name}: {record.reason}")
            return
        if trial.trial_id in self.stopping:
            self._stopped(stage, p, run_id, epochs_run, "stopped by `ablate stop`")
            return
        ckpt = trial.checkpoint
        if ckpt is None:
            self.tracker.set_tags(run_id, {TAG_ERROR: "trial ended without a checkpoint", TAG_STATE: "failed"})
            self.tracker.finish(run_id, "FAILED")
            self.outcomes[h] = TrialOutcome(stage, p.name, h, run_id, "failed", metrics, epochs_run, p.epochs,
                                            "ended without a checkpoint")
            return
        with ckpt.as_directory() as d:
            d = Path(d)
            export = "backbone" if stage == STAGE_PRETRAIN else "detector"
            files = sorted(d.glob(f"{export}.*"))
            if files:
                with tempfile.TemporaryDirectory() as tmp:
                    for f in files:
                        shutil.copy2(f, Path(tmp) / f.name)
                    self.tracker.log_artifacts(run_id, tmp, export)
        if stage == STAGE_PRETRAIN and not files:
            self.tracker.set_tags(run_id, {TAG_ERROR: "pretraining ended without an exported backbone",
                                           TAG_STATE: "failed"})
            self.tracker.finish(run_id, "FAILED")
            self.outcomes[h] = TrialOutcome(stage, p.name, h, run_id, "failed", metrics, epochs_run, p.epochs,
                                            "no exported backbone")
            return
        self.drop_checkpoints(run_id, ckpt)
        self.tracker.set_tags(run_id, {TAG_STATE: "finished"})
        self.tracker.delete_tag(run_id, TAG_STOP_REQUESTED)  # a request that came with the last epoch
        self.tracker.finish(run_id, "FINISHED")
        self.outcomes[h] = TrialOutcome(stage, p.name, h, run_id, "done", metrics, epochs_run, p.epochs)
        self.say(f"{stage:8} done    {p.name}")

    def fail(self, stage: str, p: TrialPayload, trial: Any) -> None:
        """A trial failed after its retries; the grid goes on."""
        from experiments.progress import trial_error

        self.running.pop(trial.trial_id, None)
        error = trial_error(trial)
        h = p.config_hash
        run_id = self.run_id_for(h)
        self.tracker.set_tags(run_id, {TAG_ERROR: error[-5000:], TAG_STATE: "failed"})
        self.tracker.finish(run_id, "FAILED")
        last = error.strip().splitlines()[-1] if error.strip() else "unknown error"
        self.outcomes[h] = TrialOutcome(stage, p.name, h, run_id, "failed", self.metrics.get(h, {}),
                                        self.epochs_of(trial), p.epochs, last)
        self.say(f"{stage:8} FAILED  {p.name}: {redact(last)}")
        self._update_launch()
        self._notify("trial_failed", trial=p.name, detail=last)

    def drop_checkpoints(self, run_id: str, checkpoint: Any) -> None:
        """A finished trial's training states: deleted (its exported model is in the artifact store) unless kept.

        Every ``checkpoint_*`` folder of the trial goes, and the run's ``ablate.checkpoint`` tag
        with them: a FINISHED run is never resumed. ``--keep-checkpoints`` keeps them all.
        """
        if checkpoint is None or self.options.keep_checkpoints:
            return
        delete_trial_checkpoints(checkpoint.filesystem, checkpoint.path.rsplit("/", 1)[0])
        self.tracker.delete_tag(run_id, TAG_CHECKPOINT)

    def drop_superseded(self, p: TrialPayload) -> None:
        """Once a trial resumed from an earlier launch's checkpoint has saved its own, delete the earlier ones."""
        restore = p.restore
        if self.options.keep_checkpoints or not restore or restore in self.superseded or not Path(restore).is_dir():
            return
        self.superseded.add(restore)
        from pyarrow import fs as pafs

        delete_trial_checkpoints(pafs.LocalFileSystem(), str(Path(restore).parent))

    @staticmethod
    def epochs_of(trial: Any) -> int:
        return int((trial.last_result or {}).get("epoch", 0) or 0)

    # -- the stages ------------------------------------------------------------

    def _stage_pretrain(self, plan: Plan, existing: dict[str, Any]) -> dict[str, str]:
        """Stage 1. Returns config hash -> local folder of the exported backbone, for every survivor."""
        payloads: dict[str, TrialPayload] = {}
        for t in plan.pretrain:
            run = existing.get(t.config_hash)
            if run is not None and run.info.status == "FINISHED":
                pruned = run.data.tags.get(TAG_PRUNED) == "true"
                status = "pruned" if pruned else ("reused" if _usable_backbone_run(run) else "failed")
                self.outcomes[t.config_hash] = TrialOutcome(
                    STAGE_PRETRAIN, t.name, t.config_hash, run.info.run_id, status, _last_metrics(run),
                    reason=run.data.tags.get(TAG_PRUNE_REASON, "") if pruned else "finished in an earlier launch")
                self.say(f"pretrain {status:7} {t.name} (run {run.info.run_id[:8]} of an earlier launch)")
                continue
            payloads[t.config_hash] = self.planned[t.config_hash]  # its run was made by _plan_runs
        self._tune(STAGE_PRETRAIN, payloads, self._scheduler(STAGE_PRETRAIN))
        survivors: dict[str, str] = {}
        for t in plan.pretrain:
            out = self.outcomes.get(t.config_hash)
            if out is not None and out.status in ("done", "reused"):
                survivors[t.config_hash] = fetch_backbone(self.local_storage, self.tracking_uri, t.config_hash,
                                                          out.run_id)
        return survivors

    def _stage_finetune(self, plan: Plan, existing: dict[str, Any], survivors: dict[str, str]) -> None:
        """Stage 2: every fine-tuning cell x seed on a surviving backbone (or scratch); `tpe` samples them."""
        payloads: dict[str, TrialPayload] = {}
        tpe = self.spec.search["kind"] == "tpe"
        pre_by_hash = {t.config_hash: t for t in plan.pretrain}
        for t in plan.finetune:
            upstream = self.outcomes.get(t.upstream_hash) if t.upstream_hash else None
            if t.upstream_hash and t.upstream_hash not in survivors:
                why = upstream.status if upstream else "missing"
                run_id = self.run_ids.get(t.config_hash, "")
                if run_id:  # planned at the start: it stays, KILLED, and a later launch takes it over
                    self.tracker.set_tags(run_id, {TAG_STATE: "skipped"})
                    self.tracker.finish(run_id, "KILLED")
                self.outcomes[t.config_hash] = TrialOutcome(STAGE_FINETUNE, t.name, t.config_hash, run_id, "skipped",
                                                            reason=f"backbone {why}")
                continue
            run = existing.get(t.config_hash)
            if not tpe and run is not None and run.info.status == "FINISHED":
                self.outcomes[t.config_hash] = TrialOutcome(STAGE_FINETUNE, t.name, t.config_hash, run.info.run_id,
                                                            "reused", _last_metrics(run), reason="finished earlier")
                self.say(f"finetune reused  {t.name} (run {run.info.run_id[:8]})")
                continue
            backbone = survivors[t.upstream_hash] if t.upstream_hash else spaces.BACKBONE_SCRATCH
            if tpe:  # sampled later: the run is made when Optuna has chosen the values
                self.candidates.append(self._finetune_payload(t, plan, pre_by_hash, upstream.run_id if upstream else "",
                                                              backbone))
                continue
            p = self.planned[t.config_hash]  # its run was made by _plan_runs
            payloads[t.config_hash] = dataclasses.replace(p, config={**p.config, "backbone": backbone})
        self._tune(STAGE_FINETUNE, payloads, self._scheduler(STAGE_FINETUNE), self.candidates)

    def _finetune_params(self, plan: Plan, t: spaces.FinetuneTrial) -> dict[str, str]:
        """A fine-tuning run's params besides its config: backbone name and pretraining fields (experiments.ui)."""
        pre = next((b for b in plan.pretrain if b.config_hash == t.upstream_hash), None)
        fields = [k for b in plan.pretrain for k in b.config]
        return ui.finetune_extra_params(t.backbone_name, pre.config if pre else None, fields,
                                        self.spec.pretrain.resources.processes)

    def _cell(self, config: Mapping[str, Any], upstream_hash: str | None, name: str) -> str:
        """The ``ablate.cell`` tag: the trial's name without its seed and the config hash without the seed.

        Seeds of one cell share it, so MLflow's "Group by: ablate.cell" averages them; the name part is
        what the grouped table's rows show (``res18_ep2_p30 · bn · mlp · 357 · 1c2d3e4f``), the hash part
        keeps cells apart whose names agree (other epochs, other fixed fields).
        """
        h = spaces.finetune_hash({k: v for k, v in config.items() if k != "seed"}, self.data_fingerprint,
                                 upstream_hash, self.spec.finetune.resources)
        return f"{re.sub(r' · seed[0-9]+', '', name)} · {h[:8]}"

    def _experiment_view(self, plan: Plan) -> None:
        """The experiment's kind, description and leaderboard view (experiments.ui), from the planned runs."""
        param_sets = [{**flatten_params(STAGE_FINETUNE, t.config), **self._finetune_params(plan, t)}
                      for t in plan.finetune]
        declared = [f"{stage}.{a}" for stage, names in spaces.axes_of(self.spec).items() for a in names]
        axes = ui.varying_params(param_sets, [ui.BACKBONE_PARAM, *declared])
        # `tpe`: the sampled fields vary only once Optuna samples them
        axes += [f"{STAGE_FINETUNE}.{d}" for d in self.spec.finetune.distributions if f"{STAGE_FINETUNE}.{d}" not in axes]
        self.tracker.set_experiment_tags(ui.experiment_tags(self.spec.description, axes, param_sets))

    def _tune(self, stage: str, payloads: dict[str, TrialPayload], scheduler: Any,
              candidates: Sequence[TrialPayload] = ()) -> None:
        """One Ray Tune stage: a grid over ``payloads``, or (`tpe`) Optuna samples over ``candidates``."""
        from ray import tune

        from experiments.progress import DriverCallback
        from experiments.trial import run_trial

        if not payloads and not candidates:
            return
        res = self.spec.pretrain.resources if stage == STAGE_PRETRAIN else self.spec.finetune.resources
        # A DDP trial's processes all live in the trial's bundle: ask for the CPUs/GPUs of every worker.
        resources = {"cpu": res.cpu * res.processes, "gpu": res.gpu * res.processes}
        search_alg, num_samples = None, 1
        if candidates:
            param_space, search_alg = tpe_search(self.spec, candidates, self.optuna_storage,
                                                 self._optuna_study(STAGE_FINETUNE))
            num_samples = int(self.spec.search["num_samples"])
            trainable = tune.with_parameters(run_trial, candidates=list(candidates))
        else:
            param_space = {"trial": tune.grid_search(list(payloads.values()))}
            trainable = run_trial
        from experiments.stopping import StopRequestStopper

        callback = DriverCallback(self, stage, dict(payloads), len(payloads) or num_samples)
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                max_concurrent_trials=self.max_concurrent, scheduler=scheduler, search_alg=search_alg,
                # One worker process serves the stage's trials in turn: a new Ray actor per trial
                # re-imports torch and the trainers (~8 s each on a 2-core CPU). Every trial seeds its
                # RNGs and builds its model, data and optimizer afresh, so reuse carries nothing over.
                num_samples=num_samples, reuse_actors=True,
                trial_name_creator=lambda t: f"{stage}_{t.trial_id}",
                trial_dirname_creator=lambda t: f"{stage}_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=f"{self.spec.name}-{stage}-{self.launch_id}", storage_path=self.storage,
                failure_config=tune.FailureConfig(max_failures=self.options.max_failures),
                # the newest state only: an exact resume needs no more (DESIGN: a launch leaves little disk)
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[callback], verbose=0,
                stop=StopRequestStopper(self, stage),  # `ablate stop`, read from the tracking store once per epoch
            ),
        )
        tuner.fit()

    def _optuna_study(self, stage: str) -> str:
        # tpe: one Optuna study per launch (its sampler learns from this launch's trials); grid: per study
        if stage == STAGE_FINETUNE and self.spec.search["kind"] == "tpe":
            return f"{self.spec.name}-{stage}-{self.launch_id}"
        return f"{self.spec.name}-{stage}"

    def _scheduler(self, stage: str) -> OptunaPruningScheduler | None:
        from optuna.pruners import NopPruner

        from experiments.pruning import STAGE_OBJECTIVES, make_pruner
        from experiments.scheduler import OptunaPruningScheduler

        pruner = make_pruner(stage, self.spec.pruning)
        if isinstance(pruner, NopPruner):
            return None
        metric, direction = STAGE_OBJECTIVES[stage]
        shared = stage == STAGE_FINETUNE and self.spec.search["kind"] == "tpe"  # the trials OptunaSearch opened
        scheduler = OptunaPruningScheduler(
            storage_url=self.optuna_storage, study_name=self._optuna_study(stage), pruner=pruner,
            metric_key=self.spec.search["metric"] if shared else metric, direction=direction,
            param_prefix="" if shared else "trial.config.", step_key="training_iteration" if shared else "epoch",
            share_optuna_search=shared,
        )
        self.schedulers[stage] = scheduler
        return scheduler

    # -- the end -------------------------------------------------------------

    def _finish(self, plan: Plan) -> LaunchResult:
        from experiments.headline import study_headline
        from experiments.progress import format_summary

        stopped = self.stops is not None and self.stops.launch_requested(fresh=True) is not None
        if stopped:  # trials that never started: stopped too, resumed by the same command
            self._stop_unfinished("the launch was stopped by `ablate stop`")
        counts = self._update_launch(headline=True)
        outs = list(self.outcomes.values())
        headline = study_headline(self.tracker.client, self.tracker.experiment_id)
        feat_dims = {t.config_hash: int(t.config.get("feat_dim", 0)) for t in plan.pretrain}
        summary = format_summary(outs, counts, plan.warnings, feat_dims) + "\n\n" + headline.text()
        self.tracker.set_tags(self.parent_run_id, {ui.NOTE_TAG: headline.markdown()})
        print(summary, file=self.options.out, flush=True)
        self.tracker.log_text(self.parent_run_id, summary, "summary.txt")
        if not self.options.keep_checkpoints:  # copies of artifacts, fetched again when a later launch needs them
            shutil.rmtree(self.local_storage / "backbones", ignore_errors=True)
        ran_trials = [o for o in outs if o.status in ("done", "pruned", "failed")]
        all_failed = bool(ran_trials) and all(o.status == "failed" for o in ran_trials)
        self.tracker.finish(self.parent_run_id, "KILLED" if stopped else "FAILED" if all_failed else "FINISHED")
        if self.options.register and not all_failed:
            self._register()
        event = "launch_stopped" if stopped else "launch_failed" if all_failed else "launch_finished"
        self._notify(event, detail=next((ln.strip() for ln in summary.splitlines() if "trials planned" in ln), ""))
        return LaunchResult(self.spec.name, self.parent_run_id, outs, 1 if all_failed else 0, plan,
                            dict(self.data_paths))

    def _register(self) -> None:
        try:
            from experiments import registry
        except ImportError:
            return
        try:
            message = registry.register_best(self.tracking_uri, self.spec.name)
            self.say(message)
        except Exception as exc:  # noqa: BLE001 - a registry problem must not hide the results
            self.say(f"registry: could not register the best model: {exc}")


# ---------------------------------------------------------------------------
# What the launch needs that holds no launch state
# ---------------------------------------------------------------------------


def init_ray(spec: StudySpec, address: str | None, storage: str, storage_path: str | None,
             num_gpus: float | None = None) -> None:
    """Start (or join, with ``address``) the Ray this launch runs on; refuse a cluster too small for one trial.

    A local Ray declares ``num_gpus`` GPUs when given (``--num-gpus``), else the GPUs Ray detects. Ray hands
    each trial the ids of the GPUs it may use in ``CUDA_VISIBLE_DEVICES`` (shared for fractional requests),
    whether or not torch can use them there (trainers.common.default_device falls back to the CPU, warning).

    Raises:
        LaunchError: a multi-node cluster with a storage path its nodes cannot share.
        LaunchSetupError: a trial asks for more than the cluster's largest node has.
    """
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) > 1 and "://" not in storage and not storage_path:
            raise LaunchError(f"the Ray cluster at {address} has {len(nodes)} nodes: pass --storage-path on a "
                              "shared file system or an s3:// URI so every node can read the checkpoints")
    else:
        # "local": a new Ray of our own, never a cluster someone started on this machine, and
        # reachable from this machine only (see loopback_only_ray)
        loopback_only_ray()
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **({"num_gpus": num_gpus} if num_gpus is not None else {}))
    if address:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        largest = (max((n.get("CPU", 0.0) for n in nodes), default=0.0),
                   max((n.get("GPU", 0.0) for n in nodes), default=0.0))
        too_big = oversized_requests(spec, *largest, where=f"the largest node of the Ray cluster at {address}")
        if too_big:
            raise LaunchSetupError("; ".join(too_big))
    # Trial tracebacks go to the MLflow run (tag ablate.error) and one FAILED/retry line here,
    # not as pages of Ray log output in the terminal.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)


def tpe_search(spec: StudySpec, candidates: Sequence[TrialPayload], optuna_storage: str,
               study_name: str) -> tuple[dict[str, Any], Any]:
    """Ray's search space for `tpe` mode and the OptunaSearch that samples it (TPE, in our Optuna DB)."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from experiments.pruning import EnvRDBStorage

    space: dict[str, Any] = {CANDIDATE_KEY: tune.choice(list(range(len(candidates))))}
    for name, dist in spec.finetune.distributions.items():
        lo_hi = dist.args
        space[name] = {"choice": lambda: tune.choice(list(lo_hi)), "uniform": lambda: tune.uniform(*lo_hi),
                       "loguniform": lambda: tune.loguniform(*lo_hi),
                       "int": lambda: tune.randint(int(lo_hi[0]), int(lo_hi[1]) + 1)}[dist.kind]()
    search = OptunaSearch(
        metric=spec.search["metric"], mode=spec.search["mode"],
        sampler=optuna.samplers.TPESampler(seed=spec.seeds[0]),
        storage=EnvRDBStorage(optuna_storage), study_name=study_name,
    )
    return space, search


def fetch_backbone(local_storage: Path, tracking_uri: str, h: str, run_id: str) -> str:
    """The exported backbone of a pretraining run as a local folder (downloaded once, cached)."""
    import mlflow

    dest = local_storage / "backbones" / h
    if (dest / "backbone" / "backbone.safetensors").is_file():
        return str(dest / "backbone")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="backbone", dst_path=str(tmp),
                                        tracking_uri=tracking_uri)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return str(dest / "backbone")


def delete_trial_checkpoints(filesystem: Any, trial_dir: str) -> list[str]:
    """Delete every ``checkpoint_*`` folder of a Ray trial folder (local or remote, via pyarrow); returns their paths."""
    from pyarrow.fs import FileSelector, FileType

    gone = []
    for info in filesystem.get_file_info(FileSelector(trial_dir, allow_not_found=True)):
        if info.type == FileType.Directory and info.base_name.startswith("checkpoint_"):
            filesystem.delete_dir(info.path)
            gone.append(info.path)
    return gone


def loopback_only_ray() -> None:
    """Make the local Ray this launch starts bind to 127.0.0.1 only.

    Ray resolves "127.0.0.1" to the machine's network address unless it believes it is on a
    single-machine platform; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is that switch (read by the
    Ray processes this starts) and ``ray_constants.ENABLE_RAY_CLUSTER`` its already-imported copy.
    tests/experiments/test_launch.py checks the addresses the Ray processes listen on, so a Ray
    release that changes this fails there.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def local_size(spec: StudySpec, num_gpus: float | None = None) -> tuple[float, float]:
    """CPUs and GPUs of this machine: ``num_gpus`` when declared, else the GPUs torch sees (counted only when the
    space asks for some: torch is slow to import)."""
    if num_gpus is not None:
        return float(os.cpu_count() or 1), float(num_gpus)
    gpus = 0.0
    if spec.pretrain.resources.gpu > 0 or spec.finetune.resources.gpu > 0:
        import torch

        gpus = float(torch.cuda.device_count())
    return float(os.cpu_count() or 1), gpus


def oversized_requests(spec: StudySpec, cpus: float, gpus: float, where: str = "this machine") -> list[str]:
    """One message per resource a single trial asks for beyond what one node has (Ray would wait forever)."""
    problems = []
    for stage, sec in ((STAGE_PRETRAIN, spec.pretrain), (STAGE_FINETUNE, spec.finetune)):
        r = sec.resources
        for key, per_worker, have in (("cpu", r.cpu, cpus), ("gpu", r.gpu, gpus)):
            need = per_worker * r.processes
            if need > have:
                workers = f" ({per_worker:g} x {r.processes} processes)" if r.processes > 1 else ""
                problems.append(f"{spec.path}: {stage}.resources.{key}: one trial asks for {need:g} {key.upper()}s"
                                f"{workers} but {where} has {have:g}; set {stage}.resources.{key} to at most "
                                f"{have / r.processes:g}, or launch on a bigger cluster with --address")
    return problems


def _ray_token_mode(address: str | None) -> None:
    """Present the cluster's token when joining an existing Ray cluster.

    `ray start --head` enables token authentication and writes the token to ~/.ray/auth_token; a
    driver sends it only in token mode, which Ray reads when it is imported.
    """
    if not address or "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def _usable_backbone_run(run: Any) -> bool:
    return usable_run(run.info.status, run.data.tags, run.data.metrics, STAGE_PRETRAIN)


def _last_metrics(run: Any) -> dict[str, float]:
    return {k: float(v) for k, v in run.data.metrics.items()}


def _yaml(config: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=True)


def launch(space: str | Path, options: LaunchOptions | None = None) -> LaunchResult:
    """Run (or dry-run) a study. Raises :class:`SpaceError` for a bad space file."""
    return Launcher(space, options or LaunchOptions()).run()
