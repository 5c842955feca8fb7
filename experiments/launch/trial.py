"""What runs inside a Ray worker: the trial's payload, the Reporter adapters, the trainable, DDP start-up.

The driver (:mod:`experiments.launch`) hands every trial a :class:`TrialPayload`; Ray pickles it
into the trial's config and :func:`run_trial` unpacks it in the worker, builds the trainer's
config and calls ``trainers.swav.train`` or ``trainers.detection.train`` with a
:class:`TuneReporter`. A trial with ``processes > 1`` runs the trainer in that many processes
(DDP) and forwards rank 0's reports.

Only the worker imports Ray here, and only inside the functions that call it, so the driver can
import this module without loading Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from trainers.stages import TRAINERS
from trainers.vocabulary import (
    DET_AP50,
    DET_PREFIX,
    DEVICE_KEY,
    GPUS_KEY,
    LR,
    METRIC_LABELS,
    STAGE_FINETUNE,
    STAGE_RECORDS,
    SUPERVISED_KEY_METRIC,
)



def key_metric(stage: str, metrics: Mapping[str, Any]) -> str:
    """The key metric a run of ``stage`` shows: its stage record's, or a supervised run's
    :data:`~trainers.vocabulary.SUPERVISED_KEY_METRIC`."""
    key = STAGE_RECORDS[stage].key_metric
    return SUPERVISED_KEY_METRIC if key not in metrics and SUPERVISED_KEY_METRIC in metrics else key


ARTIFACTS_SUBDIR = "artifacts"  # files a trainer passed to report(), carried inside the checkpoint
CANDIDATE_KEY = "candidate"  # in `tpe` mode: which backbone x cell x seed a sampled trial fine-tunes




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
               if ("/" in k or k == LR) and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return dict(sorted(metrics.items(), key=lambda kv: kv[0] != STAGE_RECORDS[stage].key_metric))


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
            from trainers.common.devices import assigned_gpus, default_device, device_note

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

    from trainers.common.configs import config_from_dict

    from trainers.common.devices import ddp_backend

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
    from trainers.common.configs import config_from_dict

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


# ---------------------------------------------------------------------------
# Outside Ray: `ablate pretrain` / `ablate finetune` run one trainer, `ablate data sample` writes its data
# ---------------------------------------------------------------------------


def register_single(subparsers: Any, name: str, summary: str, common: Any) -> None:
    """``ablate pretrain CONFIG`` or ``ablate finetune CONFIG`` (``name``: the stage; experiments/cli.py wires it)."""
    p = subparsers.add_parser(name, help=summary)
    p.add_argument("config", type=Path, help="YAML file of config fields")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field (value read as YAML); repeatable")
    p.add_argument("--out", type=Path, default=None,
                   help=f"folder for checkpoints and the exported {STAGE_RECORDS[name].export}")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint folder to resume from")
    p.set_defaults(run=lambda args: run_single(args, name))


def run_single(args: Any, stage: str) -> int:
    """One run of ``stage``'s trainer in this process: checkpoints and the export under ``--out``."""
    import json
    import sys

    from trainers.common.configs import load_config_file
    from trainers.reporting import InMemoryReporter

    train, cls = TRAINERS[stage].load()
    export = STAGE_RECORDS[stage].export
    config = load_config_file(cls, args.config, args.overrides)
    out = args.out or Path(f"{stage}_out")
    reporter = InMemoryReporter(root=out, resume_from=args.resume, echo=sys.stdout)
    result = train(config, reporter, progress=True)
    last = reporter.last_checkpoint
    if last is not None and any(last.glob(f"{export}.*")):
        dest = out / export
        dest.mkdir(parents=True, exist_ok=True)
        for f in last.glob(f"{export}.*"):
            shutil.copy2(f, dest / f.name)
        print(f"exported {export}: {dest}")
    if stage == STAGE_FINETUNE:
        summaries = sorted(out.glob("artifacts/step_*/coco_summary.txt"))
        if summaries:
            print(summaries[-1].read_text())
        print(format_ap_table(result))
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def format_ap_table(metrics: Mapping[str, float]) -> str:
    """The COCO numbers a researcher reads first, one per line (NaN: no ground truth in that size range)."""
    keys = (DET_AP50, *(k for k in METRIC_LABELS if k.startswith(DET_PREFIX) and k != DET_AP50))
    return "\n".join(f"{METRIC_LABELS[key]:18} {metrics.get(key, float('nan')):.4f}" for key in keys)


def register_data(subparsers: Any, name: str, summary: str, common: Any) -> None:
    """``ablate data sample --out DIR`` (experiments/cli.py wires it)."""
    p = subparsers.add_parser(name, help=summary)
    tools = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    s = tools.add_parser("sample", help="write the deterministic sample data set (COCO format + unlabeled folder)")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--seed", type=int, default=0, help="generator seed (same seed -> identical files)")
    s.add_argument("--size", default="small", choices=["small", "medium", "large"],
                   help="small: tests; medium: the demo; large (digits only): 16,384 unlabeled images, for GPU runs")
    s.add_argument("--kind", default="shapes", choices=["shapes", "digits"],
                   help="shapes: coloured shapes on clutter; digits: real handwritten digits on real photographs")
    s.set_defaults(run=run_data_sample)


def run_data_sample(args: Any) -> int:
    """Write the sample data set and list its parts."""
    from trainers.data import generate_sample

    paths = generate_sample(args.out, seed=args.seed, size=args.size, kind=args.kind)
    print(f"sample data ({args.kind}, {args.size}, seed {args.seed}) in {paths.root}")
    names = ["unlabeled", "train_images", "train_annotations", "val_images", "val_annotations"]
    if paths.monitor() is not None:
        names += ["monitor_bank_images", "monitor_bank_annotations", "monitor_query_images", "monitor_query_annotations"]
    for name in names:
        print(f"  {name:25} {getattr(paths, name)}")
    return 0
