"""experiments.launch.artifacts: what a launch keeps on disk and deletes (training states, fetched backbones),
the storage check before Ray starts, and the metrics a resuming launch restores from a checkpoint.

An epoch's metrics are logged right after its checkpoint is recorded (tests/experiments/launch/test_callbacks.py);
a driver killed between the two leaves a run without the metrics of its last checkpoint's epoch, which a
resuming launch restores from the checkpoint, once.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from pyarrow import fs

from experiments.launch import record_checkpoint_epoch
from experiments.launch.artifacts import Housekeeping, check_storage, delete_trial_checkpoints, fetch_backbone
from experiments.launch.context import LaunchOptions, LaunchSetupError
from experiments.store.tracking import Tracker
from trainers.checkpoints import checkpoint_progress, save_checkpoint
from trainers.vocabulary import STAGE_PRETRAIN, TAG_CHECKPOINT


def test_resume_restores_the_checkpoint_epochs_metrics_once(tmp_path, store_uri):
    uri = store_uri
    tracker = Tracker(uri, "resume_gap")
    run_id = tracker.create_run("res18_ep3_p20", {})
    tracker.log_metrics(run_id, {"swav/loss": 2.0, "swav/loss_over_lnk": 0.95}, 1)
    ckpt = save_checkpoint(tmp_path / "ckpt", {"epoch": 2, "metrics": {"swav/loss": 1.5, "swav/loss_over_lnk": 0.9},
                                               "model": {}})
    assert checkpoint_progress(ckpt) == (2, {"swav/loss": 1.5, "swav/loss_over_lnk": 0.9})
    # killed after recording checkpoint 2 and before logging epoch 2's metrics
    assert record_checkpoint_epoch(tracker, run_id, STAGE_PRETRAIN, str(ckpt)) == 2
    assert record_checkpoint_epoch(tracker, run_id, STAGE_PRETRAIN, str(ckpt)) == 0  # never twice
    history = MlflowClient(uri).get_metric_history(run_id, "swav/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.5)]
    # a checkpoint elsewhere (remote storage) or unreadable is left alone
    assert record_checkpoint_epoch(tracker, run_id, STAGE_PRETRAIN, "s3://bucket/ckpt") == 0
    (tmp_path / "broken").mkdir()
    assert record_checkpoint_epoch(tracker, run_id, STAGE_PRETRAIN, str(tmp_path / "broken")) == 0


# ---------------------------------------------------------------------------
# Training states and backbones
# ---------------------------------------------------------------------------


def _trial_folder(root: Path, *checkpoints: str) -> Path:
    """A Ray trial folder with ``checkpoint_*`` folders and the files Ray keeps beside them."""
    root.mkdir(parents=True)
    for name in checkpoints:
        (root / name).mkdir()
        (root / name / "state.json").write_text("{}")
    (root / "result.json").write_text("{}")
    (root / "checkpoint_notes.txt").write_text("a file, not a checkpoint")
    return root


def test_delete_trial_checkpoints_deletes_only_checkpoint_folders(tmp_path):
    trial = _trial_folder(tmp_path / "pretrain_t1", "checkpoint_000000", "checkpoint_000001")
    gone = delete_trial_checkpoints(fs.LocalFileSystem(), str(trial))
    assert sorted(Path(p).name for p in gone) == ["checkpoint_000000", "checkpoint_000001"]
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_notes.txt", "result.json"]
    assert delete_trial_checkpoints(fs.LocalFileSystem(), str(tmp_path / "never_made")) == []


class _Tracker:
    def __init__(self) -> None:
        self.deleted: list[tuple[str, str]] = []

    def delete_tag(self, run_id: str, key: str) -> None:
        self.deleted.append((run_id, key))


def _housekeeping(tmp_path: Path, keep: bool) -> Housekeeping:
    ctx = SimpleNamespace(options=LaunchOptions(keep_checkpoints=keep), tracker=_Tracker(), local_storage=tmp_path)
    return Housekeeping(ctx)  # type: ignore[arg-type]


def test_a_finished_trial_loses_its_training_states_and_its_checkpoint_tag_unless_kept(tmp_path):
    trial = _trial_folder(tmp_path / "pretrain_t1", "checkpoint_000000", "checkpoint_000001")
    checkpoint = SimpleNamespace(filesystem=fs.LocalFileSystem(), path=str(trial / "checkpoint_000001"))
    kept = _housekeeping(tmp_path, keep=True)
    kept.drop_checkpoints("run1", checkpoint)
    assert (trial / "checkpoint_000000").is_dir() and kept.ctx.tracker.deleted == []
    house = _housekeeping(tmp_path, keep=False)
    house.drop_checkpoints("run1", None)  # a trial that never saved: nothing to do
    house.drop_checkpoints("run1", checkpoint)
    assert not [p for p in trial.glob("checkpoint_*") if p.is_dir()] and (trial / "checkpoint_notes.txt").is_file()
    assert house.ctx.tracker.deleted == [("run1", TAG_CHECKPOINT)]


def test_an_earlier_launchs_checkpoint_goes_once_the_resumed_trial_saved_its_own(tmp_path):
    earlier = _trial_folder(tmp_path / "earlier" / "pretrain_t0", "checkpoint_000003")
    restore = str(earlier / "checkpoint_000003")
    _housekeeping(tmp_path, keep=True).drop_superseded(restore)
    assert Path(restore).is_dir()
    house = _housekeeping(tmp_path, keep=False)
    house.drop_superseded(None)
    house.drop_superseded(str(tmp_path / "gone" / "checkpoint_000001"))  # already gone: nothing to do
    assert house.superseded == set()
    house.drop_superseded(restore)
    assert not Path(restore).exists() and (earlier / "result.json").is_file() and house.superseded == {restore}
    earlier.joinpath("checkpoint_000004").mkdir()  # asked again (every later checkpoint): done once only
    house.drop_superseded(restore)
    assert earlier.joinpath("checkpoint_000004").is_dir()


def test_a_cached_backbone_is_not_downloaded_again_and_is_shared_through_a_remote_storage(tmp_path, monkeypatch):
    import mlflow.artifacts

    def no_download(**kw):
        raise AssertionError(f"downloaded again: {kw}")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    local = tmp_path / "local"
    cached = local / "backbones" / "h1" / "backbone"
    cached.mkdir(parents=True)
    (cached / "backbone.safetensors").write_bytes(b"weights")
    (cached / "backbone.json").write_text("{}")
    assert fetch_backbone(local, "sqlite:///unused.db", "h1", "run1") == str(cached)

    storage = (tmp_path / "shared").as_uri()  # a URI: the trials read the backbone through the storage
    remote = fetch_backbone(local, "sqlite:///unused.db", "h1", "run1", storage)
    assert remote == f"{storage}/backbones/h1/backbone"
    assert sorted(p.name for p in (tmp_path / "shared" / "backbones" / "h1" / "backbone").iterdir()) == [
        "backbone.json", "backbone.safetensors"]

    house = _housekeeping(local, keep=False)
    house.shared_backbones.append(remote)
    house.drop_fetched_backbones()
    assert not (local / "backbones").exists() and house.shared_backbones == []
    assert list((tmp_path / "shared" / "backbones" / "h1").iterdir()) == []  # this launch's copy, emptied


def test_check_storage_passes_a_folder_and_refuses_a_bucket_nobody_serves(monkeypatch):
    from experiments.testing.s3server import free_port

    check_storage("/some/folder")  # a folder (or a shared file system): nothing to check
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with pytest.raises(LaunchSetupError, match=r"^--storage-path s3://team/ray: no S3 server answers at "
                                               r"http://127\.0\.0\.1:\d+; check AWS_ENDPOINT_URL"):
        check_storage("s3://team/ray")
