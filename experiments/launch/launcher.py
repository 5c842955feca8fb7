"""The launch itself: plan, the two stages, the end.

:class:`Launcher` owns the order of a launch (plan -> pretraining stage -> fine-tuning stage -> finish)
and builds the trials' payloads; what happens to each trial is the ledger's
(:mod:`experiments.launch.ledger`), the launch's own run is :mod:`experiments.launch.launch_run`'s, and
Ray is :mod:`experiments.launch.ray_stage`'s. Those parts are handed callables, never the launcher.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from experiments import spaces
from experiments.results import ui
from experiments.launch.artifacts import Housekeeping, check_storage, fetch_backbone
from experiments.launch.context import LaunchContext, LaunchError, LaunchOptions, LaunchResult, LaunchSetupError, \
    TrialOutcome
from experiments.launch.launch_run import LaunchRun
from experiments.launch.ledger import TrialLedger, trial_cell
from experiments.launch.ray_stage import (init_ray, local_size, make_scheduler, oversized_requests, ray_token_mode,
                                          run_stage)
from experiments.store.redaction import OPTUNA_STORAGE_ENV, redact, use_uri_credentials
from experiments.spaces import Plan, resolve_data
from experiments.store.checks import check_store, failure_text, one_line, store_failure
from experiments.store.tracking import (
    DEFAULT_STORE_DIR,
    UPSTREAM_SCRATCH,
    Tracker,
    configure_client_retries,
    default_tracking_uri,
    flatten_params,
    usable_run,
)
from experiments.launch.trial import TrialPayload
from trainers.common.provenance import git_sha
from trainers.vocabulary import (
    BACKBONE_PARAM,
    STAGE_FINETUNE,
    STAGE_PRETRAIN,
    TAG_CELL,
    TAG_PRETRAIN_SEEDS,
    TAG_PRUNED,
    TAG_PRUNE_REASON,
    TAG_SEED,
    TAG_SEEDS,
    TAG_UPSTREAM,
)


class Launcher:
    """One launch of a study: plan, run both stages, summarise.

    Args:
        space: the space file.
        options: the command line's options.
    """

    def __init__(self, space: str | Path, options: LaunchOptions) -> None:
        if options.notify is not None:
            from experiments.launch.control import check_notify_command

            check_notify_command(options.notify)  # before anything runs: a secret on the command line is refused
        ray_token_mode(options.address or os.environ.get("RAY_ADDRESS"))  # before anything imports ray
        spec = spaces.load_space(space, name=options.name)
        store_dir = DEFAULT_STORE_DIR.resolve()
        tracking_uri = use_uri_credentials(options.tracking_uri or default_tracking_uri(DEFAULT_STORE_DIR))
        if tracking_uri.startswith(("http://", "https://")):
            # within seconds, before the retries below would wait minutes on a server that is not there
            check_store(tracking_uri, LaunchSetupError)
        configure_client_retries()  # ride out a tracking-server restart (one that answered at the start)
        # the command line, then the space's `storage_path:`, then this machine's default
        storage = (options.storage_path or spec.storage_path or os.environ.get("ABLATE_STORAGE_PATH")
                   or str(store_dir / "ray"))
        self.ctx = LaunchContext(
            spec=spec, options=options, tracking_uri=tracking_uri, storage=storage,
            local_storage=Path(storage) if "://" not in storage else store_dir / "cache",
            optuna_storage=(options.optuna_storage or os.environ.get(OPTUNA_STORAGE_ENV)
                            or f"sqlite:///{store_dir / 'optuna.db'}"),
            max_concurrent=options.max_concurrent or spec.max_concurrent,
            launch_id=time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6], git_sha=git_sha())
        self.schedulers: dict[str, Any] = {}  # stage -> its pruning scheduler, if any
        self.housekeeping = Housekeeping(self.ctx)
        self.ledger = TrialLedger(self.ctx, self.housekeeping, prune_record=self._prune_record)
        self.launch_run = LaunchRun(self.ctx, self.ledger, pruned=self._pruned)
        self.ledger.on_change = lambda headline: self.launch_run.update(headline=headline)
        self.ledger.on_failure = lambda trial, detail: self.launch_run.notify("trial_failed", trial, detail)
        self.ledger.heartbeat = self.launch_run.beat

    # what callers (and tests) read of a launch
    spec = property(lambda self: self.ctx.spec)
    options = property(lambda self: self.ctx.options)
    tracking_uri = property(lambda self: self.ctx.tracking_uri)
    max_concurrent = property(lambda self: self.ctx.max_concurrent)

    @property
    def tracker(self) -> Tracker:
        """The study's MLflow writer (opened by :meth:`run`)."""
        return self.ctx.tracker

    @tracker.setter
    def tracker(self, tracker: Tracker) -> None:
        self.ctx.tracker = tracker

    @property
    def parent_run_id(self) -> str | None:
        """The launch's own run."""
        return self.ctx.parent_run_id

    @parent_run_id.setter
    def parent_run_id(self, run_id: str | None) -> None:
        self.ctx.parent_run_id = run_id

    def _pruned(self, stage: str) -> Mapping[str, Any]:
        scheduler = self.schedulers.get(stage)
        return scheduler.pruned if scheduler is not None else {}

    def _prune_record(self, stage: str, trial_id: str) -> Any:
        return self._pruned(stage).get(trial_id)

    # -- planning ----------------------------------------------------------

    def plan(self) -> Plan:
        """Resolve the data (a sample set is generated) and expand the space into the trials of both stages."""
        ctx = self.ctx
        ctx.local_storage.mkdir(parents=True, exist_ok=True)
        ctx.data_paths, ctx.data_fingerprint = resolve_data(ctx.spec, ctx.local_storage)
        return spaces.expand(ctx.spec, ctx.data_fingerprint, ctx.data_paths)

    # -- the launch ----------------------------------------------------------

    def run(self) -> LaunchResult:
        ctx = self.ctx
        ctx.t0 = time.time()
        if not ctx.options.dry_run:
            check_storage(ctx.storage)  # a missing bucket or refused credentials: one line, nothing made
        plan = self.plan()
        self.tracker = Tracker(ctx.tracking_uri, ctx.spec.name, create=not ctx.options.dry_run,
                               read_only=ctx.options.dry_run)
        # existing runs of this study per config hash, for both stages
        pre_runs, ft_runs = self.tracker.runs_by_hash(STAGE_PRETRAIN), self.tracker.runs_by_hash(STAGE_FINETUNE)
        reused = {h: r.info.run_id for h, r in pre_runs.items() if _usable_backbone_run(r)}
        pruned_before = [h for h, r in pre_runs.items() if r.data.tags.get(TAG_PRUNED) == "true"]
        too_big = [] if ctx.options.address or os.environ.get("RAY_ADDRESS") else oversized_requests(
            ctx.spec, *local_size(ctx.spec, ctx.options.num_gpus))
        if ctx.options.dry_run:
            estimate = dry_run_estimate(self.tracker, plan, pre_runs, ft_runs, ctx.max_concurrent)
            print("\n".join([spaces.format_plan(plan, reused, pruned_before), *(f"warning: {w}" for w in too_big), "",
                             *estimate, f"(dry run: nothing trained; tracking store {redact(ctx.tracking_uri)})"]),
                  file=ctx.options.out)
            return LaunchResult(ctx.spec.name, None, [], 0, plan, dict(ctx.data_paths))

        if too_big:
            raise LaunchSetupError("; ".join(too_big))
        self._init_ray()  # a cluster too small for one trial is refused here, before anything is recorded
        self._parent_run(plan)
        experiment_view(self.ctx, plan)
        list(map(ctx.say, where_to_look(self.ctx)))
        for warning in plan.warnings:
            ctx.say(f"warning: {warning}")
        monitor = self.launch_run.system_metrics()
        try:
            from experiments.launch.control import StopRequests

            self.ledger.stops = StopRequests(self.tracker, ctx.parent_run_id)
            self.launch_run.plan = plan
            self._plan_runs(plan, pre_runs, ft_runs)  # every trial visible at once, state `planned`
            self.launch_run.update(headline=True)
            survivors = self._stage_pretrain(plan, pre_runs)
            if self.ledger.stops.launch_requested(fresh=True) is None:
                self._stage_finetune(plan, ft_runs, survivors)
                if ctx.spec.adaptive is not None:
                    self._seed_waves(plan, pre_runs, ft_runs, survivors)
            result = self._finish(plan)
        except BaseException as exc:
            self._abort(exc)
            raise
        finally:
            if monitor is not None:
                monitor.finish()
        return result

    def _abort(self, exc: BaseException) -> None:
        """The launch broke (or Ctrl-C): end its run, notify; a store that stopped taking writes becomes one line."""
        store_exc = store_failure(exc)
        interrupted = isinstance(exc, KeyboardInterrupt)
        with contextlib.suppress(Exception):  # the store itself may be what failed
            self.launch_run.failed(exc)
            if interrupted:  # Ctrl-C: the trials keep their checkpoints; the same command resumes them
                self.ledger.stop_unfinished("interrupted")
            self.launch_run.finish("KILLED" if interrupted or store_exc else "FAILED")
        self.launch_run.notify("launch_stopped" if interrupted else "launch_failed",
                               detail=f"{type(exc).__name__}: {exc}")
        if store_exc is None:
            return
        # Ray's trials were stopped when the exception left tuner.fit(). The runs this launch had open are
        # ended if the store takes the write; if not, the next launch of the study takes them over.
        self.ledger.abandon_open()
        raise LaunchError(one_line(
            f"the tracking store {redact(self.ctx.tracking_uri)} stopped accepting writes "
            f"({failure_text(store_exc)}); the launch stopped its "
            "trials. Make the store writable again (file permissions, disk space, the server), then run the same "
            "command: it resumes from the trials' checkpoints")) from exc

    def _parent_run(self, plan: Plan) -> str:
        """This launch's run, made or taken over (:meth:`LaunchRun.open`)."""
        return self.launch_run.open(plan)

    def _init_ray(self) -> None:
        ctx = self.ctx
        init_ray(ctx.spec, ctx.options.address or os.environ.get("RAY_ADDRESS"), ctx.storage,
                 ctx.options.storage_path or ctx.spec.storage_path, ctx.options.num_gpus)

    # -- the trials' runs ---------------------------------------------------------

    def _plan_runs(self, plan: Plan, pre_runs: dict[str, Any], ft_runs: dict[str, Any]) -> None:
        """Make the run of every trial this launch will train, before any starts (`tpe` samples: when sampled).

        Fine-tuning cells on a backbone already pruned or failed in an earlier launch get none (they
        are skipped, as before); those on a backbone this launch trains are planned, and marked
        ``skipped`` if it does not survive.
        """
        ctx, ledger = self.ctx, self.ledger
        dataset = ("-unlabeled", plan.data_fingerprint, ctx.data_paths["unlabeled"], "pretraining")
        for t in plan.pretrain:
            run = pre_runs.get(t.config_hash)
            if run is not None and run.info.status == "FINISHED":
                continue
            p = TrialPayload(STAGE_PRETRAIN, t.config, t.config_hash, t.name, int(t.config["epochs"]),
                             ctx.spec.pretrain.resources.processes, dataset=dataset)
            ledger.planned[t.config_hash] = dataclasses.replace(p, restore=ledger.plan_child(p, t.config, run))
        if ctx.spec.search["kind"] == "tpe":
            return
        plan_finetune_runs(ctx, ledger, plan, plan.finetune, pre_runs, ft_runs)

    # -- the stages ------------------------------------------------------------

    def _stage(self, stage: str, payloads: dict[str, TrialPayload], candidates: list[TrialPayload] | None = None,
               wave: int = 1) -> None:
        scheduler = make_scheduler(self.ctx, stage)
        if scheduler is not None:
            self.schedulers[stage] = scheduler
        run_stage(self.ctx, stage, payloads, scheduler, self.ledger, candidates or (), wave)

    def _stage_pretrain(self, plan: Plan, existing: dict[str, Any]) -> dict[str, str]:
        """Stage 1. Returns config hash -> the exported backbone of every survivor, where the trials read it
        (a folder of this machine, or a folder of the object store when the storage is one)."""
        ledger = self.ledger
        payloads: dict[str, TrialPayload] = {}
        for t in plan.pretrain:
            run = existing.get(t.config_hash)
            if run is not None and run.info.status == "FINISHED":
                pruned = run.data.tags.get(TAG_PRUNED) == "true"
                status = "pruned" if pruned else ("reused" if _usable_backbone_run(run) else "failed")
                ledger.record(TrialOutcome(
                    STAGE_PRETRAIN, t.name, t.config_hash, run.info.run_id, status, _last_metrics(run),
                    reason=run.data.tags.get(TAG_PRUNE_REASON, "") if pruned else "finished in an earlier launch"))
                self.ctx.say(f"pretrain {status:7} {t.name} (run {run.info.run_id[:8]} of an earlier launch)")
                continue
            payloads[t.config_hash] = ledger.planned[t.config_hash]  # its run was made by _plan_runs
        self._stage(STAGE_PRETRAIN, payloads)
        survivors: dict[str, str] = {}
        for t in plan.pretrain:
            out = ledger.outcomes.get(t.config_hash)
            if out is not None and out.status in ("done", "reused"):
                survivors[t.config_hash] = fetch_backbone(self.ctx.local_storage, self.ctx.tracking_uri,
                                                          t.config_hash, out.run_id, self.ctx.storage)
                if "://" in survivors[t.config_hash]:
                    self.housekeeping.shared_backbones.append(survivors[t.config_hash])
        return survivors

    def _seed_waves(self, plan: Plan, pre_runs: dict[str, Any], ft_runs: dict[str, Any],
                    survivors: dict[str, str]) -> None:
        """Adaptive seeds: one more seed for the cells in contention, wave after wave (``launch/waves.py``)."""
        from experiments.launch.waves import SeedWaves

        def run_wave(trials: list[spaces.FinetuneTrial], wave: int) -> None:
            plan_finetune_runs(self.ctx, self.ledger, plan, trials, pre_runs, ft_runs)
            self._stage_finetune(plan, ft_runs, survivors, trials, wave)

        SeedWaves(self.ctx, plan, lambda t: not t.upstream_hash or t.upstream_hash in survivors, run_wave,
                  lambda: self.ledger.stops.launch_requested(fresh=True) is not None).run()

    def _stage_finetune(self, plan: Plan, existing: dict[str, Any], survivors: dict[str, str],
                        trials: list[spaces.FinetuneTrial] | None = None, wave: int = 1) -> None:
        """Stage 2: every fine-tuning cell x seed on a surviving backbone (or scratch); `tpe` samples them.
        ``trials``: wave ``wave`` of adaptive seeds instead of the plan's initial trials."""
        ledger = self.ledger
        payloads: dict[str, TrialPayload] = {}
        tpe = self.ctx.spec.search["kind"] == "tpe"
        for t in plan.finetune if trials is None else trials:
            upstream = ledger.outcomes.get(t.upstream_hash) if t.upstream_hash else None
            if t.upstream_hash and t.upstream_hash not in survivors:
                why = upstream.status if upstream else "missing"
                p = ledger.planned.get(t.config_hash) or TrialPayload(STAGE_FINETUNE, t.config, t.config_hash, t.name, 0)
                ledger.skip(dataclasses.replace(p, epochs=0), f"backbone {why}")
                continue
            run = existing.get(t.config_hash)
            if not tpe and run is not None and run.info.status == "FINISHED":
                ledger.record(TrialOutcome(STAGE_FINETUNE, t.name, t.config_hash, run.info.run_id, "reused",
                                           _last_metrics(run), reason="finished earlier"))
                self.ctx.say(f"finetune reused  {t.name} (run {run.info.run_id[:8]})")
                continue
            backbone = survivors[t.upstream_hash] if t.upstream_hash else spaces.BACKBONE_SCRATCH
            if tpe:  # sampled later: the run is made when Optuna has chosen the values
                ledger.candidates.append(finetune_payload(self.ctx, t, plan, upstream.run_id if upstream else "",
                                                          backbone))
                continue
            p = ledger.planned[t.config_hash]  # its run was made by _plan_runs
            payloads[t.config_hash] = dataclasses.replace(p, config={**p.config, "backbone": backbone})
        self._stage(STAGE_FINETUNE, payloads, ledger.candidates, wave)

    # -- the end -------------------------------------------------------------

    def _finish(self, plan: Plan) -> LaunchResult:
        from experiments.results.headline import study_headline
        from experiments.launch.progress import format_summary

        ctx, ledger = self.ctx, self.ledger
        stopped = ledger.stops is not None and ledger.stops.launch_requested(fresh=True) is not None
        if stopped:  # trials that never started: stopped too, resumed by the same command
            ledger.stop_unfinished("the launch was stopped by `ablate stop`")
        counts = self.launch_run.update(headline=True)
        outs = list(ledger.outcomes.values())
        headline = study_headline(self.tracker.client, self.tracker.experiment_id)
        feat_dims = {t.config_hash: int(t.config.get("feat_dim", 0)) for t in plan.pretrain}
        summary = format_summary(outs, counts, plan.warnings, feat_dims) + "\n\n" + headline.text()
        self.tracker.set_tags(ctx.parent_run_id, {ui.NOTE_TAG: headline.markdown()})
        print(summary, file=ctx.options.out, flush=True)
        self.tracker.log_text(ctx.parent_run_id, summary, "summary.txt")
        self.housekeeping.drop_fetched_backbones()
        ran_trials = [o for o in outs if o.status in ("done", "pruned", "failed")]
        all_failed = bool(ran_trials) and all(o.status == "failed" for o in ran_trials)
        self.launch_run.finish("KILLED" if stopped else "FAILED" if all_failed else "FINISHED")
        if ctx.options.register and not all_failed:
            self._register()
        event = "launch_stopped" if stopped else "launch_failed" if all_failed else "launch_finished"
        self.launch_run.notify(event, detail=next((ln.strip() for ln in summary.splitlines() if "trials planned" in ln), ""))
        return LaunchResult(ctx.spec.name, ctx.parent_run_id, outs, 1 if all_failed else 0, plan, dict(ctx.data_paths))

    def _register(self) -> None:
        try:
            from experiments.results import registry
        except ImportError:
            return
        try:
            message = registry.register_best(self.ctx.tracking_uri, self.ctx.spec.name)
            self.ctx.say(message)
        except Exception as exc:  # noqa: BLE001 - a registry problem must not hide the results
            self.ctx.say(f"registry: could not register the best model: {exc}")


# ---------------------------------------------------------------------------
# A fine-tuning trial's payload and the experiment's view: what the launch records, from the plan
# ---------------------------------------------------------------------------


def plan_finetune_runs(ctx: LaunchContext, ledger: TrialLedger, plan: Plan, trials: list[spaces.FinetuneTrial],
                   pre_runs: dict[str, Any], ft_runs: dict[str, Any]) -> None:
    """The runs of fine-tuning trials (the initial grid, or an adaptive-seeds wave), state `planned`; none for a
    trial finished earlier or on a backbone an earlier launch pruned or failed."""
    for t in trials:
        run, up = ft_runs.get(t.config_hash), pre_runs.get(t.upstream_hash) if t.upstream_hash else None
        if (run is not None and run.info.status == "FINISHED") or (
                up is not None and up.info.status == "FINISHED" and not _usable_backbone_run(up)):
            continue
        upstream_run = ledger.run_ids.get(t.upstream_hash or "") or (up.info.run_id if up is not None else "")
        p = finetune_payload(ctx, t, plan, upstream_run, spaces.BACKBONE_SCRATCH)
        ledger.planned[t.config_hash] = dataclasses.replace(p, restore=ledger.plan_child(p, t.config, run))


def finetune_payload(ctx: LaunchContext, t: Any, plan: Plan, upstream_run: str, backbone: str) -> TrialPayload:
    """A fine-tuning cell's payload: its config on ``backbone``, its backbone's params and lineage tags."""
    dataset = ("-labeled", plan.data_fingerprint, ctx.data_paths["train_annotations"], "training")
    extra = finetune_params(ctx, plan, t)  # the backbone's name and pretraining params ("none" for scratch)
    # with pretraining seeds the cell spans the backbone's seeds: one cell, its variance in the verdicts
    tags = {TAG_SEED: str(t.seed), TAG_CELL: trial_cell(ctx, t)}
    if t.upstream_hash:
        tags[TAG_UPSTREAM] = upstream_run
        if upstream_run:  # the backbone as a link in the run's description
            tags[ui.NOTE_TAG] = ("Fine-tuned on the SwAV backbone "
                                 + ui.run_link(ctx.tracker.experiment_id, upstream_run, t.backbone_name))
    else:
        tags[TAG_UPSTREAM] = UPSTREAM_SCRATCH
        tags[ui.NOTE_TAG] = "No pretraining: the baseline, trained from random weights."
    return TrialPayload(STAGE_FINETUNE, {**t.config, "backbone": backbone}, t.config_hash, t.name,
                        int(t.config["epochs"]), ctx.spec.finetune.resources.processes,
                        upstream_hash=t.upstream_hash, extra_params=extra, tags=tags, dataset=dataset,
                        backbone_name=t.backbone_name, seed=t.seed)


def finetune_params(ctx: LaunchContext, plan: Plan, t: spaces.FinetuneTrial) -> dict[str, str]:
    """A fine-tuning run's params besides its config: backbone name and pretraining fields (experiments.results.ui)."""
    pre = next((b for b in plan.pretrain if b.config_hash == t.upstream_hash), None)
    fields = [k for b in plan.pretrain for k in b.config]
    return ui.finetune_extra_params(t.backbone_name, pre.config if pre else None, fields,
                                    ctx.spec.pretrain.resources.processes)


def experiment_view(ctx: LaunchContext, plan: Plan) -> None:
    """The experiment's kind, description and leaderboard view (experiments.results.ui), from the planned runs."""
    spec = ctx.spec
    param_sets = [{**flatten_params(STAGE_FINETUNE, t.config), **finetune_params(ctx, plan, t)}
                  for t in plan.finetune]
    declared = [f"{stage}.{a}" for stage, names in spaces.axes_of(spec).items() for a in names]
    axes = ui.varying_params(param_sets, [BACKBONE_PARAM, *declared])
    # `tpe`: the sampled fields vary only once Optuna samples them
    axes += [f"{STAGE_FINETUNE}.{d}" for d in spec.finetune.distributions if f"{STAGE_FINETUNE}.{d}" not in axes]
    tags = ui.experiment_tags(spec.description, axes, param_sets, names=[t.name for t in plan.finetune],
                              cells=[trial_cell(ctx, t) for t in plan.finetune])
    if spec.adaptive is not None:  # the judge of this study looks at every wave: it reads its level from here
        tags[TAG_SEEDS] = spec.adaptive.tag()
    if spec.pretrain.seeds:  # the report says which intervals include the backbones' own variance
        tags[TAG_PRETRAIN_SEEDS] = ",".join(map(str, spec.pretrain.seeds))
    ctx.tracker.set_experiment_tags(tags)


def dry_run_estimate(tracker: Tracker, plan: Plan, pre_runs: Mapping[str, Any], ft_runs: Mapping[str, Any],
                     max_concurrent: int) -> list[str]:
    """The plan's duration from the store's measured epoch times (:mod:`experiments.launch.estimate`)."""
    from experiments.launch.estimate import estimate_lines, measured_rates

    done = {h for runs in (pre_runs, ft_runs) for h, r in runs.items() if r.info.status == "FINISHED"}
    todo = [t.config_hash for t in [*plan.pretrain, *plan.finetune] if t.config_hash not in done]
    rates = measured_rates(tracker.client) if tracker.client is not None else {}  # no store yet: nothing measured
    return estimate_lines(plan, todo, rates, max_concurrent)


def where_to_look(ctx: LaunchContext) -> list[str]:
    """A launch's first lines: how to follow it from another terminal, and its leaderboard in the MLflow UI."""
    base = ctx.tracking_uri if ctx.tracking_uri.startswith(("http://", "https://")) else ui.DEFAULT_UI_URL
    tags = ctx.tracker.client.get_experiment(ctx.tracker.experiment_id).tags
    link = ui.links(base.rstrip("/"), ctx.tracker.experiment_id, ctx.spec.name, tags).leaderboard
    return [f"follow it: ablate status {ctx.spec.name} --watch",
            f"leaderboard{' (after `ablate ui`)' if base == ui.DEFAULT_UI_URL else ''}: {redact(link)}"]


def _usable_backbone_run(run: Any) -> bool:
    return usable_run(run.info.status, run.data.tags, run.data.metrics, STAGE_PRETRAIN)


def _last_metrics(run: Any) -> dict[str, float]:
    return {k: float(v) for k, v in run.data.metrics.items()}


def launch(space: str | Path, options: LaunchOptions | None = None) -> LaunchResult:
    """Run (or dry-run) a study. Raises :class:`~experiments.spaces.SpaceError` for a bad space file."""
    return Launcher(space, options or LaunchOptions()).run()
