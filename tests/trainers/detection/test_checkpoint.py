"""trainers/detection/checkpoint.py: the fine-tuning loop's checkpoint hook: what it writes after an epoch, what it
restores (a checkpoint from before the format key included), and the checkpoints it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from trainers.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from trainers.common.configs import config_to_dict
from trainers.detection.checkpoint import CHECKPOINT_FORMAT, Checkpoints, check_resumable
from trainers.reporting import InMemoryReporter
from tests.trainers.detection.helpers import tiny_config


def hook(config: Any, seed: int = 0) -> Checkpoints:
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()  # a momentum buffer to restore
    return Checkpoints(config, model, optimizer, torch.amp.GradScaler("cpu", enabled=False), ["bg", "circle"], {1: 7})


def test_a_saved_epoch_restores_model_optimizer_metrics_and_the_evaluation(sample_data: Any, tmp_path: Path) -> None:
    config = tiny_config(sample_data, epochs=2)
    written, reporter = hook(config, seed=1), InMemoryReporter(root=tmp_path / "runs")
    written.save(0, 5, {"det/loss": 1.5}, {"latest": {"det/AP50": 0.25}}, reporter, tmp_path / "ckpt")
    assert [(r.step, r.metrics) for r in reporter.reports] == [(1, {"det/loss": 1.5})]  # the step: epochs done
    state = load_checkpoint(tmp_path / "ckpt")
    assert (state["format"], state["epoch"], state["iteration"]) == (CHECKPOINT_FORMAT, 1, 5)
    assert state["class_names"] == ["bg", "circle"] and state["label_to_cat_id"] == {1: 7}
    assert not (tmp_path / "ckpt" / "detector.json").exists()  # only the final epoch's exports the detector

    read = hook(config, seed=2)
    done, iteration, metrics, evaluation = read.restore(tmp_path / "ckpt")
    assert (done, iteration, metrics, evaluation) == (1, 5, {"det/loss": 1.5}, {"latest": {"det/AP50": 0.25}})
    for key, value in written.model.state_dict().items():
        assert torch.equal(value, read.model.state_dict()[key]), key
    assert torch.equal(read.optimizer.state_dict()["state"][0]["momentum_buffer"],
                       written.optimizer.state_dict()["state"][0]["momentum_buffer"])


def test_a_checkpoint_from_before_the_format_key_still_resumes(sample_data: Any) -> None:
    config = tiny_config(sample_data, epochs=2)
    check_resumable({"epoch": 1, "model": {}, "config": config_to_dict(config)}, config, Path("old"))


def test_a_foreign_or_differently_configured_checkpoint_is_refused(sample_data: Any, tmp_path: Path) -> None:
    config = tiny_config(sample_data, epochs=2)
    with pytest.raises(CheckpointError, match="not a fine-tuning checkpoint \\(format 'swav-checkpoint/v1'"):
        check_resumable({"format": "swav-checkpoint/v1", "epoch": 1, "model": {}}, config, tmp_path)
    save_checkpoint(tmp_path / "other", {"format": CHECKPOINT_FORMAT, "epoch": 1, "model": {},
                                         "config": config_to_dict(tiny_config(sample_data, epochs=3))})
    with pytest.raises(ValueError, match="different config \\(epochs: checkpoint 3 vs config 2\\)"):
        hook(config).restore(tmp_path / "other")
