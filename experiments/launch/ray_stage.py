"""Ray for a launch: starting or joining it, refusing a cluster too small for one trial, running one stage.

:func:`run_stage` is one Ray Tune stage of a launch: a grid over the stage's trial payloads, or (`tpe`)
Optuna samples over fine-tuning candidates, with the launch's Tune callback and stopper
(:mod:`experiments.launch.callbacks`) and, when pruning is on, the Optuna pruning scheduler. Ray,
Optuna and the callbacks are imported only inside the functions that use them, so planning a launch
never loads them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from experiments.launch.context import LaunchContext, LaunchError, LaunchSetupError, stage_section
from experiments.spaces import StudySpec
from experiments.launch.trial import CANDIDATE_KEY, TrialPayload
from trainers.vocabulary import STAGE_FINETUNE, STAGE_PRETRAIN, STAGE_RECORDS

if TYPE_CHECKING:
    from experiments.launch.callbacks import TrialEvents
    from experiments.pruning.scheduler import OptunaPruningScheduler


def init_ray(spec: StudySpec, address: str | None, storage: str, storage_path: str | None,
             num_gpus: float | None = None) -> None:
    """Start (or join, with ``address``) the Ray this launch runs on; refuse a cluster too small for one trial.

    A local Ray declares ``num_gpus`` GPUs when given (``--num-gpus``), else the GPUs Ray detects. Ray hands
    each trial the ids of the GPUs it may use in ``CUDA_VISIBLE_DEVICES`` (shared for fractional requests),
    whether or not torch can use them there (trainers.common.devices.default_device falls back to the CPU, warning).

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


def loopback_only_ray() -> None:
    """Make the local Ray this launch starts bind to 127.0.0.1 only.

    Ray resolves "127.0.0.1" to the machine's network address unless it believes it is on a
    single-machine platform; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is that switch (read by the
    Ray processes this starts) and ``ray_constants.ENABLE_RAY_CLUSTER`` its already-imported copy.
    tests/e2e/test_launch.py checks the addresses the Ray processes listen on, so a Ray
    release that changes this fails there.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def local_size(spec: StudySpec, num_gpus: float | None = None) -> tuple[float, float]:
    """CPUs and GPUs of this machine: ``num_gpus`` when declared, else the NVIDIA GPUs the driver lists (what Ray
    detects too; read from /proc, so that a dry run loads no torch), within ``CUDA_VISIBLE_DEVICES`` when set."""
    cpus = float(os.cpu_count() or 1)
    if num_gpus is not None:
        return cpus, float(num_gpus)
    if spec.pretrain.resources.gpu <= 0 and spec.finetune.resources.gpu <= 0:
        return cpus, 0.0
    listed = Path("/proc/driver/nvidia/gpus")
    gpus = len(list(listed.iterdir())) if listed.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = min(gpus, len([v for v in visible.split(",") if v.strip() and not v.strip().startswith("-")]))
    return cpus, float(gpus)


def _count(n: float, unit: str) -> str:
    return f"{n:g} {unit}{'' if n == 1 else 's'}"


def oversized_requests(spec: StudySpec, cpus: float, gpus: float, where: str = "this machine") -> list[str]:
    """One message per resource a single trial asks for beyond what one node has (Ray would wait forever): it names
    what the node has and what the space asks, and points at a cluster that has it (``--address``); lowering the
    request is offered only where the node has some of the resource."""
    problems = []
    has = f"{_count(cpus, 'CPU')} and {_count(gpus, 'GPU') if gpus else 'no GPU'}"
    for stage, sec in ((STAGE_PRETRAIN, spec.pretrain), (STAGE_FINETUNE, spec.finetune)):
        r = sec.resources
        for key, per_worker, have in (("cpu", r.cpu, cpus), ("gpu", r.gpu, gpus)):
            need = per_worker * r.processes
            if need > have:
                workers = f" ({per_worker:g} x {r.processes} processes)" if r.processes > 1 else ""
                lower = (f", or set {stage}.resources.{key} to at most {have / r.processes:g} to run it here"
                         if have > 0 else "")
                problems.append(f"{spec.path}: {stage}.resources.{key}: one trial asks for "
                                f"{_count(need, key.upper())}{workers} but {where} has {have:g} ({has}): run it with "
                                f"--address on a Ray cluster whose nodes have them{lower}")
    return problems


def ray_token_mode(address: str | None) -> None:
    """Present the cluster's token when joining an existing Ray cluster.

    `ray start --head` enables token authentication and writes the token to ~/.ray/auth_token; a
    driver sends it only in token mode, which Ray reads when it is imported.
    """
    if not address or "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def tpe_search(spec: StudySpec, candidates: Sequence[TrialPayload], optuna_storage: str,
               study_name: str) -> tuple[dict[str, Any], Any]:
    """Ray's search space for `tpe` mode and the OptunaSearch that samples it (TPE, in our Optuna DB)."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from experiments.pruning.pruner import EnvRDBStorage

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


def optuna_study(ctx: LaunchContext, stage: str) -> str:
    """The Optuna study of a stage: per launch for `tpe` fine-tuning (its sampler learns from this launch's
    trials), per study otherwise."""
    if stage == STAGE_FINETUNE and ctx.spec.search["kind"] == "tpe":
        return f"{ctx.spec.name}-{stage}-{ctx.launch_id}"
    return f"{ctx.spec.name}-{stage}"


def make_scheduler(ctx: LaunchContext, stage: str) -> OptunaPruningScheduler | None:
    """The stage's pruning scheduler (None when the space's pruning leaves the stage alone)."""
    from optuna.pruners import NopPruner

    from experiments.pruning.pruner import make_pruner
    from experiments.pruning.scheduler import OptunaPruningScheduler

    spec = ctx.spec
    pruner = make_pruner(stage, spec.pruning)
    if isinstance(pruner, NopPruner):
        return None
    metric, direction = STAGE_RECORDS[stage].key_metric, STAGE_RECORDS[stage].direction
    shared = stage == STAGE_FINETUNE and spec.search["kind"] == "tpe"  # the trials OptunaSearch opened
    return OptunaPruningScheduler(
        storage_url=ctx.optuna_storage, study_name=optuna_study(ctx, stage), pruner=pruner,
        metric_key=spec.search["metric"] if shared else metric, direction=direction,
        param_prefix="" if shared else "trial.config.", step_key="training_iteration" if shared else "epoch",
        share_optuna_search=shared,
    )


def run_stage(ctx: LaunchContext, stage: str, payloads: dict[str, TrialPayload], scheduler: Any,
              events: TrialEvents, candidates: Sequence[TrialPayload] = (), wave: int = 1) -> None:
    """One Ray Tune stage: a grid over ``payloads``, or (`tpe`) Optuna samples over ``candidates``; ``wave`` > 1:
    an adaptive-seeds wave of fine-tuning, a Tune run (and storage folder) of its own."""
    from ray import tune

    from experiments.launch.callbacks import DriverCallback, StopRequestStopper
    from experiments.launch.trial import run_trial

    if not payloads and not candidates:
        return
    spec, options = ctx.spec, ctx.options
    res = stage_section(spec, stage).resources
    # A DDP trial's processes all live in the trial's bundle: ask for the CPUs/GPUs of every worker.
    resources = {"cpu": res.cpu * res.processes, "gpu": res.gpu * res.processes}
    search_alg, num_samples = None, 1
    if candidates:
        param_space, search_alg = tpe_search(spec, candidates, ctx.optuna_storage, optuna_study(ctx, STAGE_FINETUNE))
        num_samples = int(spec.search["num_samples"])
        trainable = tune.with_parameters(run_trial, candidates=list(candidates))
    else:
        param_space = {"trial": tune.grid_search(list(payloads.values()))}
        trainable = run_trial
    callback = DriverCallback(events, stage, dict(payloads), len(payloads) or num_samples, ctx.max_concurrent)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=ctx.max_concurrent, scheduler=scheduler, search_alg=search_alg,
            # One worker process serves the stage's trials in turn: a new Ray actor per trial
            # re-imports torch and the trainers (~8 s each on a 2-core CPU). Every trial seeds its
            # RNGs and builds its model, data and optimizer afresh, so reuse carries nothing over.
            num_samples=num_samples, reuse_actors=True,
            trial_name_creator=lambda t: f"{stage}_{t.trial_id}",
            trial_dirname_creator=lambda t: f"{stage}_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{stage}-{ctx.launch_id}" + (f"-wave{wave}" if wave > 1 else ""),
            storage_path=ctx.storage,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            # the newest state only: an exact resume needs no more: a launch leaves little disk behind
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[callback], verbose=0,
            stop=StopRequestStopper(events, stage),  # `ablate stop`, read from the tracking store once per epoch
        ),
    )
    tuner.fit()
