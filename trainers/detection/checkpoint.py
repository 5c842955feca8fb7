"""A fine-tuning run's checkpoints, as a hook of the training loop: what it restores before the first epoch and
what it writes after each (torchvision's detection reference saves the same state: model, optimizer, scaler,
epoch, args); the last epoch's also holds the exported detector (``detector.safetensors`` + ``detector.json``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torchvision.models.detection import FasterRCNN

from trainers.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from trainers.common.configs import config_to_dict
from trainers.common.provenance import git_sha, rng_state, set_rng_state
from trainers.detection.config import MODEL_FIELDS, DetectionConfig
from trainers.detection.export import export_detector
from trainers.reporting import Reporter

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "detection-checkpoint/v1"
# What must match between the checkpoint's config and the run's for a resume: the network and the schedule's shape.
RESUME_FIELDS = MODEL_FIELDS + ("lr_scheme", "epochs", "batch_size")


def check_resumable(state: Mapping[str, Any], config: DetectionConfig, directory: Path) -> None:
    """Refuse a checkpoint that is not a fine-tuning one, or whose network or schedule differs from ``config``'s.

    A checkpoint written before the format key (``format`` absent, ``epoch`` and ``model`` present) reads as
    the current format: the state it holds is the same.
    """
    written = state.get("format")
    if written != CHECKPOINT_FORMAT and not (written is None and "epoch" in state and "model" in state):
        raise CheckpointError(f"{directory}: not a fine-tuning checkpoint (format {written!r}, expected "
                              f"{CHECKPOINT_FORMAT!r}); resume a detection run from its own checkpoint")
    stored = state.get("config", {})
    current = config_to_dict(config)
    differing = [k for k in RESUME_FIELDS if stored.get(k) != current.get(k)]
    if differing:
        detail = ", ".join(f"{k}: checkpoint {stored.get(k)!r} vs config {current.get(k)!r}" for k in differing)
        raise ValueError(f"cannot resume from {directory}: the checkpoint was written with a different config ({detail})")


class Checkpoints:
    """The checkpoints of one fine-tuning run: model, optimizer, scaler, epochs done, global iteration, RNG states,
    resolved config, git sha, the epoch's metrics, the evaluation hook's state, and the classes."""

    def __init__(self, config: DetectionConfig, model: FasterRCNN, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, class_names: Sequence[str], label_to_cat_id: Mapping[int, int]) -> None:
        self.config, self.model, self.optimizer, self.scaler = config, model, optimizer, scaler
        self.class_names, self.label_to_cat_id = list(class_names), dict(label_to_cat_id)
        self.resolved = config_to_dict(config)

    def restore(self, directory: Path) -> tuple[int, int, dict[str, float], dict[str, Any]]:
        """Load a checkpoint into the model, optimizer and scaler; restore the RNG states.

        Returns:
            (epochs done, global iteration, the last epoch's metrics, the evaluation hook's state).
        """
        state = load_checkpoint(directory)
        check_resumable(state, self.config, directory)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        log.info("resumed from %s after epoch %d (iteration %d)", directory, state["epoch"], state["iteration"])
        evaluation = {"latest": dict(state.get("eval_metrics", {}))}
        return int(state["epoch"]), int(state["iteration"]), dict(state.get("metrics", {})), evaluation

    def save(self, epoch: int, iteration: int, metrics: Mapping[str, float], evaluation: Mapping[str, Any],
             reporter: Reporter, directory: Path, artifacts: Sequence[Path] = ()) -> None:
        """Write epoch ``epoch``'s checkpoint into ``directory`` (the final one with the exported detector) and
        report the epoch's metrics with it."""
        eval_metrics = {k: float(v) for k, v in evaluation["latest"].items()}
        save_checkpoint(directory, {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch + 1,
            "iteration": iteration,
            "rng": rng_state(),
            "config": self.resolved,
            "git_sha": git_sha(),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "eval_metrics": eval_metrics,
            "class_names": self.class_names,
            "label_to_cat_id": self.label_to_cat_id,
        })
        if epoch + 1 == self.config.epochs:  # training completed: the final checkpoint carries the detector
            export_detector(directory, self.model, self.config, self.class_names, self.label_to_cat_id,
                            {**eval_metrics, **metrics})
        reporter.report(dict(metrics), step=epoch + 1, checkpoint_dir=directory, artifacts=list(artifacts))


__all__ = ["CHECKPOINT_FORMAT", "Checkpoints", "RESUME_FIELDS", "check_resumable"]
