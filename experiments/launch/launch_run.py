"""The launch's own MLflow run: made or taken over, kept alive, counting, heading, notifying, ended.

A launch run left RUNNING by a driver that died is ended as KILLED and its unfinished trials move to
the run that takes over (:meth:`LaunchRun.open`); a live driver refreshes ``ablate.heartbeat``; the
``launch/*`` counts and the study's headline are logged live; ``--notify`` hears of the launch's end and
of failed trials.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

from experiments import spaces
from experiments.launch.context import LaunchContext, LaunchSetupError
from experiments.launch.ledger import TrialLedger
from experiments.store.redaction import redact
from experiments.spaces import Plan
from experiments.store.tracking import HEARTBEAT_EVERY_S, driver_id, launch_alive
from trainers.vocabulary import (
    LAUNCH_BEST_AP50,
    LAUNCH_FINETUNE_PLANNED,
    LAUNCH_FINETUNE_SKIPPED,
    LAUNCH_PRETRAIN_PLANNED,
    LAUNCH_PRUNED_EPOCHS_BUDGETED,
    LAUNCH_PRUNED_EPOCHS_SAVED,
    LAUNCH_PRUNED_FRACTION_SAVED,
    LAUNCH_TRIALS_FAILED,
    LAUNCH_TRIALS_PLANNED,
    LAUNCH_TRIALS_PRUNED,
    LAUNCH_TRIALS_REUSED,
    LAUNCH_TRIALS_RUN,
    LAUNCH_TRIALS_RUNNING,
    LAUNCH_TRIALS_STOPPED,
    STAGE_FINETUNE,
    STAGE_PRETRAIN,
    TAG_BEST_RUN,
    TAG_DRIVER,
    TAG_ERROR,
    TAG_GIT,
    TAG_HEADLINE,
    TAG_HEARTBEAT,
    TAG_LAUNCH,
    TAG_STAGE,
    TAG_STOP_REQUESTED,
    TAG_SUPERSEDED_BY,
)


class LaunchRun:
    """The launch run of one launch.

    Args:
        ctx: the launch (its ``parent_run_id`` is set by :meth:`open`).
        ledger: the trials whose outcomes the counts are made of.
        pruned: ``stage -> {Ray trial id: record}`` of the trials the pruner stopped so far.
    """

    def __init__(self, ctx: LaunchContext, ledger: TrialLedger,
                 pruned: Callable[[str], Mapping[str, Any]] = lambda stage: {}) -> None:
        self.ctx, self.ledger, self.pruned = ctx, ledger, pruned
        self.plan: Plan | None = None
        self.count_step = 0  # step of the live `launch/*` counts: one more per update
        self.headline = ""  # the study's headline so far (experiments.results.headline), one line
        self.last_beat = 0.0

    def open(self, plan: Plan) -> str:
        """This launch's run: a new one, or (``--resume``) the study's last unfinished one.

        Launch runs left RUNNING by a driver that died (``kill -9``, a lost machine) are ended as
        KILLED with ``ablate.superseded_by`` naming the run that takes over; their unfinished
        trials move under it when they resume (``ablate.previous_parent_run_id`` keeps the link).
        A launch of the same study whose driver is still alive is left alone, and ``--resume``
        refuses to take its run over.
        """
        ctx, tracker = self.ctx, self.ctx.tracker
        launches = tracker.find_runs(extra_filter=f"tags.`{TAG_STAGE}` = 'launch'")
        alive = {r.info.run_id for r in launches if launch_alive(r)}
        parent = None
        if ctx.options.resume:
            candidates = [r for r in launches if r.info.status != "FINISHED"]
            if candidates and launch_alive(candidates[0]):
                r = candidates[0]
                raise LaunchSetupError(
                    f"launch run {r.info.run_id} of study {ctx.spec.name!r} is still running (driver "
                    f"{r.data.tags.get(TAG_DRIVER, 'unknown')}); stop it before resuming it, or launch without --resume")
            parent = candidates[0].info.run_id if candidates else None
        driver = {TAG_DRIVER: driver_id(), TAG_HEARTBEAT: f"{time.time():.0f}"}
        if parent:
            tracker.reopen(parent)
            tracker.set_tags(parent, driver)
            tracker.delete_tag(parent, TAG_STOP_REQUESTED)  # the request that stopped it has been served
            ctx.say(f"resuming launch run {parent}")
        else:
            parent = tracker.create_run(f"launch {ctx.launch_id}", {
                TAG_STAGE: "launch", TAG_LAUNCH: ctx.launch_id, TAG_GIT: ctx.git_sha,
                "mlflow.source.git.commit": ctx.git_sha, **driver})
        dead = [r.info.run_id for r in launches if r.info.status == "RUNNING" and r.info.run_id != parent
                and r.info.run_id not in alive]
        for run_id in dead:
            tracker.set_tags(run_id, {TAG_SUPERSEDED_BY: parent})
            tracker.finish(run_id, "KILLED")
            ctx.say(f"launch run {run_id[:8]} had lost its driver: ended as KILLED, taken over by {parent[:8]}")
        self.last_beat = time.time()
        axes = spaces.axes_of(ctx.spec)
        tracker.log_text(parent, ctx.spec.text, f"space/{ctx.spec.path.name}")
        tracker.log_params_tags(parent, params={
            "space": str(ctx.spec.path), "search": ctx.spec.search["kind"], "seeds": str(list(ctx.spec.seeds)),
            "max_concurrent": str(ctx.max_concurrent), "storage_path": ctx.storage,
            "axes.pretrain": ",".join(axes["pretrain"]), "axes.finetune": ",".join(axes["finetune"])})
        tracker.log_dataset(parent, ctx.spec.name + "-data", plan.data_fingerprint,
                            str(Path(ctx.data_paths["train_annotations"]).parent.parent), "training")
        tracker.log_metrics(parent, {LAUNCH_PRETRAIN_PLANNED: len(plan.pretrain),
                                     LAUNCH_FINETUNE_PLANNED: len(plan.finetune)}, 0)
        ctx.parent_run_id = parent
        return parent

    def beat(self, force: bool = False) -> None:
        """Refresh the launch run's heartbeat (at most every HEARTBEAT_EVERY_S): a driver that stops beating is dead."""
        now = time.time()
        if self.ctx.parent_run_id and (force or now - self.last_beat >= HEARTBEAT_EVERY_S):
            self.last_beat = now
            self.ctx.tracker.set_tags(self.ctx.parent_run_id, {TAG_HEARTBEAT: f"{now:.0f}"})

    def system_metrics(self) -> Any:
        """MLflow's system-metrics monitor on the launch run (None, said once, where it cannot start)."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.ctx.parent_run_id, sampling_interval=10,
                                           tracking_uri=self.ctx.tracking_uri)
            monitor.start()
            return monitor
        except Exception as exc:  # noqa: BLE001 - system metrics are a nicety; never block a launch
            self.ctx.say(f"system metrics disabled: {exc}")
            return None

    def counts(self) -> dict[str, float]:
        """The launch run's ``launch/*`` counts as they stand (live during the launch, final at its end)."""
        from experiments.pruning.scheduler import saved_compute

        assert self.plan is not None
        spec, ledger = self.ctx.spec, self.ledger
        count = ledger.counts()
        saved = saved_compute(self.pruned(STAGE_PRETRAIN), ledger.budgets)
        # grid: the plan's trials and any adaptive-seeds wave added since (planned, or reused from an earlier launch)
        waves = {h for h, o in ledger.outcomes.items() if o.stage == STAGE_FINETUNE} | {
            h for h, p in ledger.planned.items() if p.stage == STAGE_FINETUNE}
        n_finetune = (int(spec.search["num_samples"]) if spec.search["kind"] == "tpe"
                      else len({t.config_hash for t in self.plan.finetune} | waves))
        return {LAUNCH_TRIALS_PLANNED: len(self.plan.pretrain) + n_finetune,
                LAUNCH_TRIALS_RUNNING: len(ledger.running),
                LAUNCH_TRIALS_RUN: count["done"] + count["pruned"] + count["failed"],
                LAUNCH_TRIALS_REUSED: count["reused"], LAUNCH_TRIALS_PRUNED: count["pruned"],
                LAUNCH_TRIALS_FAILED: count["failed"], LAUNCH_TRIALS_STOPPED: count["stopped"],
                LAUNCH_FINETUNE_SKIPPED: count["skipped"],
                LAUNCH_PRUNED_EPOCHS_BUDGETED: saved["epochs_budgeted"],
                LAUNCH_PRUNED_EPOCHS_SAVED: saved["epochs_saved"],
                LAUNCH_PRUNED_FRACTION_SAVED: saved["fraction_saved"]}

    def update(self, headline: bool = False) -> dict[str, float]:
        """Log the live counts on the launch run (one step further each time) and, if asked, the study's headline."""
        parent = self.ctx.parent_run_id
        if self.plan is None or not parent:
            return {}
        counts = self.counts()
        self.count_step += 1
        tracker = self.ctx.tracker
        tracker.log_metrics(parent, counts, self.count_step)
        if headline:
            from experiments.results.headline import study_headline

            found = study_headline(tracker.client, tracker.experiment_id)
            best = found.best
            self.headline = found.one_line()
            tracker.set_tags(parent, {TAG_HEADLINE: self.headline, **({TAG_BEST_RUN: best.run_id} if best else {})})
            if best is not None:
                tracker.log_metrics(parent, {LAUNCH_BEST_AP50: best.value}, self.count_step)
        return counts

    def notify(self, event: str, trial: str = "", detail: str = "") -> None:
        """Run the ``--notify`` command for an event; a failing command is reported, never fatal."""
        options = self.ctx.options
        if not options.notify:
            return
        from experiments.launch.control import Notice, notify

        problem = notify(options.notify, Notice(event, self.ctx.spec.name, self.headline, self.ctx.parent_run_id or "",
                                                trial, redact(detail), self.ctx.tracking_uri))
        if problem:
            print(f"warning: {problem}", file=options.out, flush=True)

    def failed(self, exc: BaseException) -> None:
        """Record what broke the launch on its run."""
        self.ctx.tracker.set_tags(self.ctx.parent_run_id, {TAG_ERROR: f"{type(exc).__name__}: {exc}"[:5000]})

    def finish(self, status: str) -> None:
        self.ctx.tracker.finish(self.ctx.parent_run_id, status)
