"""Helpers of the results tests (tests/experiments/results/): the registry study that conftest.py's ``registry_store``
builds (its names, its exported detectors, its runs) and where MLflow's built UI lies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import torch

from experiments.store.tracking import Tracker
from trainers.detection import DetectionConfig, build_detector, export_detector
from trainers.vocabulary import TAG_GIT, TAG_HASH, TAG_NAME, TAG_PRUNED, TAG_SEED, TAG_STAGE

STUDY = "regstudy"
DET, BB = f"{STUDY}-detector", f"{STUDY}-backbone"
CLASSES = ["disc", "square", "triangle"]
CAT_IDS = {1: 1, 2: 3, 3: 7}
BUNDLE = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"  # MLflow's built UI


def export_tiny_detector(root: Path, name: str, seed: int) -> Path:
    """A small random resnet18 detector of :data:`CLASSES`, exported as ``trainers.detection.export_detector`` writes it."""
    data = root / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "ann.json").write_text("{}")
    cfg = DetectionConfig(
        backbone="scratch", arch="resnet18", norm="bn", head="mlp", min_size=64, max_size=96,
        rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, detections_per_img=10, seed=seed,
        train_images=str(data / "images"), train_annotations=str(data / "ann.json"),
        val_images=str(data / "images"), val_annotations=str(data / "ann.json"),
    )
    torch.manual_seed(seed)
    model = build_detector(cfg, num_classes=len(CLASSES))
    return export_detector(root / name, model, cfg, CLASSES, CAT_IDS, {"det/AP50": 0.0})


def log_trial(tracker: Tracker, parent: str, stage: str, name: str, metrics: dict[str, float], tags: dict[str, str],
              artifacts: Path | None = None, status: str = "FINISHED") -> str:
    """A finished trial run of ``stage`` with two epochs of ``metrics`` (the last is final) and its exported model."""
    run_id = tracker.create_run(name, {TAG_STAGE: stage, TAG_NAME: name, TAG_HASH: f"h-{name}", TAG_GIT: "abc123",
                                       TAG_PRUNED: "false", **tags}, parent_run_id=parent)
    tracker.log_params_tags(run_id, params={f"{stage}.arch": "resnet18", f"{stage}.seed": tags.get(TAG_SEED, "0")})
    for epoch in (1, 2):  # the last step's value is the run's final metric
        tracker.log_metrics(run_id, {k: (v / 2 if epoch == 1 else v) for k, v in metrics.items()}, step=epoch)
    if artifacts is not None:
        tracker.log_artifacts(run_id, artifacts, "detector" if stage == "finetune" else "backbone")
    tracker.finish(run_id, status)
    return run_id


def model_dir(store: dict[str, Any], name: str, version: str) -> Path:
    """Where the local store keeps a version's model files."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    return Path(local_file_uri_to_path(store["client"].get_model_version_download_uri(name, version)))
