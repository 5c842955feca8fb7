"""What runs inside a Ray worker: the trial's payload, the Reporter adapters, the trainable, DDP start-up.

The driver (:mod:`experiments.launch`) hands every trial a :class:`TrialPayload`; Ray pickles it
into the trial's config and :func:`run_trial` unpacks it in the worker, builds the trainer's
config and calls ``trainers.swav.train`` or ``trainers.detection.train`` with a
:class:`TuneReporter`. A trial with ``processes > 1`` runs the trainer in that many processes
(DDP) and forwards rank 0's reports.

Only the worker imports Ray here, and only inside the functions that call it, so the driver can
import the stage names and key metrics without loading Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import shutil
import socket
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

STAGE_PRETRAIN, STAGE_FINETUNE = "pretrain", "finetune"
STAGES = (STAGE_PRETRAIN, STAGE_FINETUNE)
LOSS_OVER_LN_K = "swav/loss_over_ln_k"  # 1.0 when SwAV has collapsed, comparable across K
AP50 = "det/AP50"  # COCO AP@0.5: ranks detectors (progress, reports, the registry's champion)
# One label per metric wherever a table, plot or headline names it (COCO's names, as pycocotools prints them).
METRIC_LABELS = {AP50: "AP@0.5", "det/AP": "AP@[.5:.95]", "det/AP75": "AP@0.75", "det/AP_small": "AP[small]",
                 "det/AP_medium": "AP[medium]", "det/AP_large": "AP[large]", "swav/knn_top1": "kNN top-1",
                 "swav/knn_top1_random": "kNN top-1 (random inits, mean)"}
# The key metric shown in progress lines and summaries, per stage.
KEY_METRIC = {STAGE_PRETRAIN: LOSS_OVER_LN_K, STAGE_FINETUNE: AP50}
# A supervised pretraining run (the positive control) has no SwAV loss: its cross-entropy / ln(classes) stands in.
SUPERVISED_KEY = "sup/loss_over_ln_c"


def key_metric(stage: str, metrics: Mapping[str, Any]) -> str:
    """The key metric a run of ``stage`` shows: :data:`KEY_METRIC`'s, or a supervised run's :data:`SUPERVISED_KEY`."""
    key = KEY_METRIC[stage]
    return SUPERVISED_KEY if key not in metrics and SUPERVISED_KEY in metrics else key
ARTIFACTS_SUBDIR = "artifacts"  # files a trainer passed to report(), carried inside the checkpoint
CANDIDATE_KEY = "candidate"  # in `tpe` mode: which backbone x cell x seed a sampled trial fine-tunes
# Where a trial ran, sent with its reports (no "/" in the keys: never logged as metrics) and recorded as run tags.
DEVICE_KEY, GPUS_KEY = "ablate_device", "ablate_gpus"


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What a stage trains with: the trainer package, its config class and the folder of its exported model."""

    module: str
    config: str
    export: str

    def load(self) -> tuple[Callable[..., dict[str, float]], type]:
        """The trainer's ``train`` and its config class (imported now: torch and the trainer's packages)."""
        module = importlib.import_module(self.module)
        return module.train, getattr(module, self.config)

    def config_class(self) -> type:
        """The trainer's config class alone (a lazy trainer package loads only its config module: no torch)."""
        return getattr(importlib.import_module(self.module), self.config)


def _trainer(stage: str, default: Trainer) -> Trainer:
    """``ABLATE_TRAINER_PRETRAIN`` / ``ABLATE_TRAINER_FINETUNE`` name another module to train a stage with (it has
    ``train(config, reporter)`` and the stage's config class): a trainer of one's own, or a test's stand-in."""
    module = os.environ.get(f"ABLATE_TRAINER_{stage.upper()}")
    return dataclasses.replace(default, module=module) if module else default


# The stage registry, trainers' side: what differs between pretraining and fine-tuning where a stage is run.
TRAINERS = {STAGE_PRETRAIN: _trainer(STAGE_PRETRAIN, Trainer("trainers.swav", "SwAVConfig", "backbone")),
            STAGE_FINETUNE: _trainer(STAGE_FINETUNE, Trainer("trainers.detection", "DetectionConfig", "detector"))}


@dataclasses.dataclass(frozen=True)
class TrialPayload:
    """One trial as the driver hands it to Ray: what to train, and how the driver tracks it.

    Grid trials carry their payload in the Ray config (``{"trial": payload}``). In `tpe` mode each
    payload is a *candidate* (a backbone x fine-tuning cell x seed) and Optuna samples which one
    a trial fine-tunes and with which values (:func:`sampled_payload`); the candidate fields below
    tell the driver how to name and record the sampled trial.

    Attributes:
        stage: ``pretrain`` or ``finetune``.
        config: the trainer's resolved config (fine-tuning: ``backbone`` is the exported backbone's folder).
        config_hash: the trial's identity (the MLflow run it writes to).
        name: the trial's display name.
        epochs: the trial's budget.
        processes: DDP processes (1: no DDP), the space's ``resources.processes``.
        restore: a checkpoint folder of an earlier launch to resume from.
        upstream_hash: (candidates) the pretraining config hash of the backbone, None for scratch.
        extra_params: (candidates) further MLflow params (the backbone's ``pretrain.*``).
        tags: (candidates) MLflow tags of the run (seed, upstream run).
        dataset: (candidates) the MLflow dataset input: name suffix, digest, source, context.
        backbone_name: (candidates) the backbone's name, for the trial's name.
        seed: (candidates) the seed of the cell.
        sampled: (sampled trials) the values Optuna chose.
    """

    stage: str
    config: dict[str, Any]
    config_hash: str
    name: str
    epochs: int
    processes: int = 1
    restore: str | None = None
    upstream_hash: str | None = None
    extra_params: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    dataset: tuple[str, str, str, str] | None = None
    backbone_name: str = ""
    seed: int | None = None
    sampled: dict[str, Any] = dataclasses.field(default_factory=dict)


def loggable_metrics(result: Mapping[str, Any], stage: str) -> dict[str, float]:
    """The metrics of a trial's result (or checkpoint) that go to MLflow, the stage's key metric first.

    Ray's own bookkeeping (``epoch``, ``time_this_iter_s``, ...) stays out: only ``group/name`` keys and
    ``lr``. The key metric comes first because MLflow's compare page plots a run's first metric by default.
    """
    metrics = {k: float(v) for k, v in result.items()
               if ("/" in k or k == "lr") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return dict(sorted(metrics.items(), key=lambda kv: kv[0] != KEY_METRIC[stage]))


class TuneReporter:
    """Reporter for a trainer running inside a Ray Tune trial.

    Artifacts travel inside the checkpoint (``artifacts/``), so they reach the driver through
    Ray's storage even when the trial runs on another node.
    """

    def __init__(self, restore_from: str | None = None) -> None:
        self._restore_from = restore_from
        self._restored: Path | None = None
        self._downloaded: Path | None = None  # this node's copy of a checkpoint on object storage
        self._placement: dict[str, str] | None = None

    def placement(self) -> dict[str, str]:
        """The trial's device as its trainer picks it, and the GPUs Ray assigned (``CUDA_VISIBLE_DEVICES``)."""
        if self._placement is None:
            from trainers.common import assigned_gpus, default_device, device_note

            self._placement = {DEVICE_KEY: device_note(default_device()), GPUS_KEY: ",".join(assigned_gpus())}
        return self._placement

    def report(self, metrics: dict[str, float], step: int, checkpoint_dir: Path | None = None,
               artifacts: Sequence[Path] = ()) -> None:
        from ray import tune

        with contextlib.ExitStack() as stack:
            ckpt_dir = checkpoint_dir
            if artifacts:
                if ckpt_dir is None:
                    ckpt_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ablate-art-")))
                dest = Path(ckpt_dir) / ARTIFACTS_SUBDIR
                dest.mkdir(parents=True, exist_ok=True)
                for a in artifacts:
                    shutil.copy2(a, dest / Path(a).name)
            payload = {**{k: float(v) for k, v in metrics.items()}, "epoch": int(step), **self.placement()}
            checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir is not None else None
            tune.report(payload, checkpoint=checkpoint)

    def should_stop(self) -> bool:
        # Ray stops a trial itself when the scheduler says STOP; nothing to poll here.
        return False

    def close(self) -> None:
        """Delete this node's copy of a checkpoint downloaded from object storage (the trial has ended)."""
        if self._downloaded is not None:
            shutil.rmtree(self._downloaded, ignore_errors=True)
            self._downloaded = None

    def restore_dir(self) -> Path | None:
        from ray import tune

        if self._restored is not None:
            return self._restored
        ckpt = tune.get_checkpoint()  # set when Ray retries this trial after a crash
        if ckpt is not None:
            self._restored = Path(ckpt.to_directory())
        elif self._restore_from and "://" in self._restore_from:  # an earlier launch's, on object storage
            self._restored = self._downloaded = _download(self._restore_from, "ablate-restore-")
        elif self._restore_from and Path(self._restore_from).is_dir():
            self._restored = Path(self._restore_from)  # an earlier launch's checkpoint
        return self._restored


class _QueueReporter:
    """Rank 0's reporter inside a multi-process (DDP) trial: hands each report to the trial process."""

    def __init__(self, queue: Any, ack: Any, restore: str | None) -> None:
        self.queue, self.ack, self.restore = queue, ack, restore

    def report(self, metrics: dict[str, float], step: int, checkpoint_dir: Path | None = None,
               artifacts: Sequence[Path] = ()) -> None:
        self.queue.put(("report", dict(metrics), int(step), str(checkpoint_dir) if checkpoint_dir else None,
                        [str(a) for a in artifacts]))
        self.ack.get()  # the trial process has copied the checkpoint; the trainer may now delete it

    def should_stop(self) -> bool:
        return False

    def restore_dir(self) -> Path | None:
        return Path(self.restore) if self.restore else None


class _SilentReporter(_QueueReporter):
    """Ranks > 0: they train in lock-step but never report."""

    def report(self, metrics: dict[str, float], step: int, checkpoint_dir: Path | None = None,
               artifacts: Sequence[Path] = ()) -> None:
        return None


def _train_fn(stage: str) -> tuple[Callable[..., dict[str, float]], type]:
    return TRAINERS[stage].load()


def _ddp_worker(rank: int, world: int, port: int, stage: str, cfg: dict[str, Any], queue: Any, ack: Any,
                restore: str | None) -> None:
    import torch.distributed as dist

    from trainers.common import config_from_dict, ddp_backend

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(ddp_backend(), rank=rank, world_size=world)
    try:
        train, cls = _train_fn(stage)
        reporter = _QueueReporter(queue, ack, restore) if rank == 0 else _SilentReporter(queue, ack, restore)
        result = train(config_from_dict(cls, cfg), reporter)
        if rank == 0:
            queue.put(("done", result))
    except BaseException:  # noqa: BLE001 - forwarded to the trial process, which re-raises
        if rank == 0:
            queue.put(("error", traceback.format_exc()))
        raise
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ddp(stage: str, cfg: dict[str, Any], workers: int, reporter: TuneReporter) -> dict[str, float]:
    """Run the trainer in ``workers`` processes (DDP: gloo on CPU, NCCL on GPU); rank 0's reports go to Tune."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue, ack = ctx.Queue(), ctx.Queue()
    restore = reporter.restore_dir()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, workers, port, stage, cfg, queue, ack,
                                                   str(restore) if restore else None), daemon=True)
             for r in range(workers)]
    for p in procs:
        p.start()
    try:
        while True:
            try:
                msg = queue.get(timeout=5)
            except Exception:  # queue.Empty: check the workers are still alive
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"DDP worker exited with code {dead[0].exitcode}") from None
                continue
            if msg[0] == "report":
                _, metrics, step, ckpt, artifacts = msg
                reporter.report(metrics, step, Path(ckpt) if ckpt else None, [Path(a) for a in artifacts])
                ack.put(True)
            elif msg[0] == "done":
                return msg[1]
            else:
                raise RuntimeError(f"DDP trial failed on rank 0:\n{msg[1]}")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def sampled_payload(config: Mapping[str, Any], candidates: Sequence[TrialPayload]) -> TrialPayload:
    """A `tpe` trial: the candidate cell (backbone x fine-tuning cell x seed) Optuna picked, with its sampled values."""
    base = candidates[int(config[CANDIDATE_KEY])]
    sampled = {k: v for k, v in config.items() if k != CANDIDATE_KEY}
    return dataclasses.replace(base, config={**base.config, **sampled}, sampled=sampled)


def _download(uri: str, prefix: str, dest: Path | None = None) -> Path | None:
    """Copy the folder ``uri`` of object storage to this node (``dest``, else a new temporary folder); None if absent."""
    from pyarrow import fs

    remote, path = fs.FileSystem.from_uri(uri)
    if remote.get_file_info(path).type != fs.FileType.Directory:
        return None
    target = dest or Path(tempfile.mkdtemp(prefix=prefix))
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")  # concurrent trials of one node
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    fs.copy_files(path, str(partial), source_filesystem=remote, destination_filesystem=fs.LocalFileSystem())
    try:
        partial.rename(target)  # onto an empty folder, or none
    except OSError:  # another trial of this node finished the same copy first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def local_backbone(config: dict[str, Any]) -> dict[str, Any]:
    """A fine-tuning config whose ``backbone`` on object storage (``s3://...``) is replaced by a copy on this node.

    With S3 storage the driver leaves each backbone next to the trials' folders
    (:func:`experiments.launch.artifacts.fetch_backbone`): a trial on a node without the driver's disk
    reads it from there, into a per-node cache under the temporary folder (one copy per backbone).
    """
    backbone = str(config.get("backbone", ""))
    if "://" not in backbone:
        return config
    import hashlib

    from pyarrow import fs

    from trainers.checkpoints import BACKBONE_CONFIG

    missing = FileNotFoundError(f"the backbone {backbone} is not in the object store (deleted by `ablate gc`?); "
                                "run the launch again to fetch it from the tracking store")
    remote, path = fs.FileSystem.from_uri(backbone)
    try:
        with remote.open_input_stream(f"{path}/{BACKBONE_CONFIG}") as fh:
            record = fh.read()  # its sha256 of the weights: the cached copy is this backbone, or is replaced
    except FileNotFoundError:
        raise missing from None
    cache = Path(tempfile.gettempdir()) / "ablate-backbones" / hashlib.sha256(backbone.encode()).hexdigest()[:16]
    cached = cache / BACKBONE_CONFIG
    if not (cached.is_file() and cached.read_bytes() == record):
        shutil.rmtree(cache, ignore_errors=True)
        if _download(backbone, "", cache) is None:
            raise missing
    return {**config, "backbone": str(cache)}


def run_trial(config: dict[str, Any], candidates: Sequence[TrialPayload] = ()) -> None:
    """The Ray Tune function trainable of both stages.

    Grid trials carry their payload (``config = {"trial": TrialPayload(...)}``); `tpe` trials carry
    the candidate index and the sampled values, resolved with :func:`sampled_payload`.
    """
    from trainers.common import config_from_dict

    trial = config["trial"] if "trial" in config else sampled_payload(config, candidates)
    if trial.stage == STAGE_FINETUNE:
        trial = dataclasses.replace(trial, config=local_backbone(trial.config))
    reporter = TuneReporter(trial.restore)
    try:
        if trial.processes > 1:
            _run_ddp(trial.stage, trial.config, trial.processes, reporter)
            return
        train, cls = _train_fn(trial.stage)
        train(config_from_dict(cls, trial.config), reporter)
    finally:
        reporter.close()
