"""What a launch keeps on disk and what it deletes: backbones fetched for fine-tuning, trials' training states.

A finished trial's training states are deleted once its exported model is in the artifact store
(``--keep-checkpoints`` keeps them); a trial resumed from an earlier launch's checkpoint has that
checkpoint deleted once it has saved its own. A resuming launch restores the metrics of the epoch its
checkpoint holds when a killed driver never logged them (:func:`record_checkpoint_epoch`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.launch.context import LaunchContext
from experiments.tracking import TAG_CHECKPOINT
from experiments.trial import loggable_metrics

if TYPE_CHECKING:
    from experiments.tracking import Tracker


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


class Housekeeping:
    """Deletes the training states no launch will resume from (nothing when ``--keep-checkpoints``)."""

    def __init__(self, ctx: LaunchContext) -> None:
        self.ctx = ctx
        self.superseded: set[str] = set()  # earlier launches' checkpoints already deleted (their trial resumed)

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
        if self.ctx.options.keep_checkpoints or not restore or restore in self.superseded or not Path(restore).is_dir():
            return
        self.superseded.add(restore)
        from pyarrow import fs as pafs

        delete_trial_checkpoints(pafs.LocalFileSystem(), str(Path(restore).parent))

    def drop_fetched_backbones(self) -> None:
        """The launch's copies of backbones (fetched again when a later launch needs them), unless kept."""
        if not self.ctx.options.keep_checkpoints:
            shutil.rmtree(self.ctx.local_storage / "backbones", ignore_errors=True)
