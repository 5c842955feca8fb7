"""What a launch keeps on disk and what it deletes: backbones fetched for fine-tuning, trials' training states.

A finished trial's training states are deleted once its exported model is in the artifact store
(``--keep-checkpoints`` keeps them); a trial resumed from an earlier launch's checkpoint has that
checkpoint deleted once it has saved its own. A resuming launch restores the metrics of the epoch its
checkpoint holds when a killed driver never logged them (:func:`record_checkpoint_epoch`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.launch.context import LaunchContext, LaunchSetupError
from experiments.launch.trial import loggable_metrics
from trainers.vocabulary import TAG_CHECKPOINT

if TYPE_CHECKING:
    from experiments.store.tracking import Tracker


def record_checkpoint_epoch(tracker: Tracker, run_id: str, stage: str, checkpoint: str) -> int:
    """Log the metrics of the epoch a trial resumes after, if its run lacks them; returns the count logged.

    The driver logs an epoch's metrics just after it records that epoch's checkpoint; a driver killed
    between the two leaves a run whose last checkpoint epoch has no metrics. The checkpoint holds them,
    so a resuming launch restores them from there (once: a step already in the history is left alone).
    A checkpoint on object storage (``s3://...``) is read there (its ``state.json`` only); one that cannot
    be read is left to the trainer to judge.
    """
    import tempfile

    from pyarrow import fs

    from experiments.store.objectstore import filesystem
    from trainers.checkpoints import STATE_JSON, CheckpointError, checkpoint_progress

    with tempfile.TemporaryDirectory(prefix="ablate-state-") as tmp:
        if "://" in checkpoint:  # object storage: read its state.json only
            try:
                remote, path = filesystem(checkpoint)
                fs.copy_files(f"{path}/{STATE_JSON}", str(Path(tmp) / STATE_JSON), source_filesystem=remote,
                              destination_filesystem=fs.LocalFileSystem())
            except (OSError, ValueError):
                return 0
            checkpoint = tmp
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


def check_storage(storage: str) -> None:
    """Refuse (exit 2) an S3 storage whose bucket is missing or refuses the credentials, before Ray starts.

    Also makes pyarrow (Ray's storage, in this process and the local Ray's workers) reach the endpoint
    named by MLflow's ``MLFLOW_S3_ENDPOINT_URL`` when ``AWS_ENDPOINT_URL`` is not set, and moves the keys
    into a private credentials file (:func:`experiments.store.objectstore.keys_to_private_file`).
    """
    from experiments.store.objectstore import ObjectStoreError, check_bucket, is_s3, keys_to_private_file, pyarrow_env

    if not is_s3(storage):
        return
    os.environ.update(pyarrow_env())
    try:
        check_bucket(storage, "--storage-path")
    except ObjectStoreError as e:
        raise LaunchSetupError(str(e)) from None
    keys_to_private_file()  # before Ray starts: Ray Tune would copy the variables into every trial's logged env


def fetch_backbone(local_storage: Path, tracking_uri: str, h: str, run_id: str, storage: str | None = None) -> str:
    """The exported backbone of a pretraining run, where every fine-tuning trial can read it.

    Downloaded once from the tracking store into ``local_storage/backbones/HASH`` (a cache). With a
    remote Ray storage (``s3://...``: nodes without a shared disk) it is copied next to the trials'
    folders, ``STORAGE/backbones/HASH/backbone``, and that URI is returned: a trial on any node reads it
    through the object store (:func:`experiments.launch.trial.local_backbone`), never through this machine's disk.
    """
    import mlflow

    dest = local_storage / "backbones" / h
    if not (dest / "backbone" / "backbone.safetensors").is_file():
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="backbone", dst_path=str(tmp),
                                            tracking_uri=tracking_uri)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    if storage is None or "://" not in storage:
        return str(dest / "backbone")
    from pyarrow import fs

    remote = f"{storage.rstrip('/')}/backbones/{h}/backbone"
    filesystem, path = fs.FileSystem.from_uri(remote)
    filesystem.create_dir(path, recursive=True)
    fs.copy_files(str(dest / "backbone"), path, source_filesystem=fs.LocalFileSystem(),
                  destination_filesystem=filesystem)
    return remote


def delete_trial_checkpoints(filesystem: Any, trial_dir: str) -> list[str]:
    """Delete every ``checkpoint_*`` folder of a Ray trial folder (local or remote, via pyarrow); returns their paths."""
    from pyarrow.fs import FileSelector, FileType

    gone = []
    for info in filesystem.get_file_info(FileSelector(trial_dir, allow_not_found=True)):
        if info.type == FileType.Directory and info.base_name.startswith("checkpoint_"):
            filesystem.delete_dir(info.path)
            gone.append(info.path)
    return gone


class Housekeeping:
    """Deletes the training states no launch will resume from (nothing when ``--keep-checkpoints``)."""

    def __init__(self, ctx: LaunchContext) -> None:
        self.ctx = ctx
        self.superseded: set[str] = set()  # earlier launches' checkpoints already deleted (their trial resumed)
        self.shared_backbones: list[str] = []  # this launch's backbone copies on object storage (fetch_backbone)

    def drop_checkpoints(self, run_id: str, checkpoint: Any) -> None:
        """A finished trial's training states: deleted (its exported model is in the artifact store) unless kept.

        Every ``checkpoint_*`` folder of the trial goes, and the run's ``ablate.checkpoint`` tag
        with them: a FINISHED run is never resumed. ``--keep-checkpoints`` keeps them all.
        """
        if checkpoint is None or self.ctx.options.keep_checkpoints:
            return
        delete_trial_checkpoints(checkpoint.filesystem, checkpoint.path.rsplit("/", 1)[0])
        self.ctx.tracker.delete_tag(run_id, TAG_CHECKPOINT)

    def drop_superseded(self, restore: str | None) -> None:
        """Once a trial resumed from an earlier launch's checkpoint has saved its own, delete the earlier ones."""
        if self.ctx.options.keep_checkpoints or not restore or restore in self.superseded:
            return
        if "://" not in restore and not Path(restore).is_dir():
            return
        self.superseded.add(restore)
        from experiments.store.objectstore import filesystem

        storage, path = filesystem(restore)
        delete_trial_checkpoints(storage, path.rstrip("/").rsplit("/", 1)[0])

    def drop_fetched_backbones(self) -> None:
        """The launch's copies of backbones (fetched again when a later launch needs them), unless kept."""
        if self.ctx.options.keep_checkpoints:
            return
        shutil.rmtree(self.ctx.local_storage / "backbones", ignore_errors=True)
        from experiments.store.objectstore import filesystem

        for uri in self.shared_backbones:  # only this launch's: another study's launch may share the bucket
            storage, path = filesystem(uri.rstrip("/").rsplit("/", 1)[0])  # .../backbones/HASH
            storage.delete_dir_contents(path, missing_dir_ok=True)  # a copy: fetched again when needed
        self.shared_backbones.clear()
