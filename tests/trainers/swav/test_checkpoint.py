"""trainers/swav/checkpoint.py: the run's checkpoints as a hook of the loop: this process's queue, what a checkpoint
holds and what restoring it brings back, and the checkpoints it refuses. A two-layer stand-in for the network; the
whole loop's exact resume is tests/trainers/swav/test_engine.py's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from trainers.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from trainers.reporting import InMemoryReporter
from trainers.swav.checkpoint import CHECKPOINT_FORMAT, Checkpoints, gather_queue, make_queue
from tests.trainers.swav.helpers import tiny_config

CPU = torch.device("cpu")


class TwoLayers(nn.Module):
    """What the hook needs of a SwAV network: a ``trunk`` (exported at the end) and more weights beside it."""

    def __init__(self, prototypes: int = 3) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 4)
        self.prototypes = nn.Linear(4, prototypes, bias=False)


def hook(config, model: nn.Module | None = None) -> Checkpoints:
    model = model or TwoLayers()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.trunk(torch.ones(2, 3)).sum().backward()
    optimizer.step()  # a momentum buffer to save
    return Checkpoints(config, model, optimizer, torch.amp.GradScaler("cpu", enabled=False), 0, 1, CPU)


def test_the_queue_is_this_process_share_or_none_under_the_global_batch(caplog: pytest.LogCaptureFixture) -> None:
    config = tiny_config(queue_length=8, queue_start_epoch=0, feat_dim=5)  # batch_size 4
    queue = make_queue(config, 2, CPU)
    assert queue is not None and tuple(queue.embeddings.shape) == (2, 4, 5)  # 2 assignment views, 8 rows / 2
    assert tuple(make_queue(config, 1, CPU).embeddings.shape) == (2, 8, 5)
    with caplog.at_level(logging.WARNING, logger="trainers.swav.checkpoint"):
        assert make_queue(config, 4, CPU) is None  # 8 rows < 4 images x 4 processes
    assert "queue_length=8 is shorter than the global batch (4 x 4): no queue" in caplog.text
    queue.embeddings.normal_()
    gathered = gather_queue(queue, 1)  # one process: its own, with the process axis
    assert gathered.shape == (1, 2, 4, 5) and torch.equal(gathered[0], queue.embeddings)
    assert gather_queue(None, 1) is None


def test_save_then_restore_brings_back_the_state(tmp_path: Path) -> None:
    config = tiny_config(queue_length=8, queue_start_epoch=0, feat_dim=4, epochs=2)
    saver = hook(config)
    queue = make_queue(config, 1, CPU)
    queue.push([torch.randn(4, 4), torch.randn(4, 4)])
    reporter = InMemoryReporter(root=tmp_path / "run")
    torch.manual_seed(3)
    saver.save(0, 7, queue, {"swav/loss": 1.5}, reporter)
    expected_draw = torch.rand(3)  # the RNG state was saved before this draw
    first = reporter.reports[0]
    assert first.step == 1 and first.metrics == {"swav/loss": 1.5}
    state = load_checkpoint(first.checkpoint)
    assert state["format"] == CHECKPOINT_FORMAT and state["epoch"] == 1 and state["iteration"] == 7
    assert state["world_size"] == 1 and state["config"]["queue_length"] == 8 and state["git_sha"]
    assert not (first.checkpoint / "backbone.safetensors").exists()  # not the last epoch: no export

    restored = hook(config)  # other weights, other momentum
    assert not torch.equal(restored.model.trunk.weight, saver.model.trunk.weight)
    epoch, iteration, back, metrics = restored.restore(first.checkpoint)
    assert (epoch, iteration, metrics) == (1, 7, {"swav/loss": 1.5})
    assert back is not None and torch.equal(back.embeddings, queue.embeddings) and not back.in_use
    for name, value in saver.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[name], value), name
    momentum = [s["momentum_buffer"] for s in restored.optimizer.state.values()]
    assert all(torch.equal(a, s["momentum_buffer"]) for a, s in zip(momentum, saver.optimizer.state.values()))
    assert torch.equal(torch.rand(3), expected_draw)

    saver.save(1, 8, queue, {"swav/loss": 1.2}, reporter)  # the last epoch: the trunk is exported with it
    last = reporter.reports[-1].checkpoint
    assert load_file(str(last / "backbone.safetensors")).keys() == {"weight", "bias"}  # the trunk's, nothing else


def test_a_queue_that_does_not_fit_restarts_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tiny_config(queue_length=8, queue_start_epoch=0, feat_dim=4)
    queue = make_queue(config, 1, CPU)
    queue.push([torch.randn(4, 4), torch.randn(4, 4)])
    reporter = InMemoryReporter(root=tmp_path / "run")
    hook(config).save(0, 1, queue, {}, reporter)
    shorter = tiny_config(queue_length=4, queue_start_epoch=0, feat_dim=4)
    with caplog.at_level(logging.WARNING, logger="trainers.swav.checkpoint"):
        _, _, back, _ = hook(shorter).restore(reporter.last_checkpoint)
    assert back is not None and back.rows == 4 and not back.embeddings.any()
    assert "stored queue (1, 2, 8, 4) does not fit 1 process(es) x (2, 4, 4); it restarts empty" in caplog.text


def test_restore_refuses_another_format_and_another_model(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "other", {"epoch": 1, "model": {}})
    with pytest.raises(CheckpointError, match="not a SwAV checkpoint \\(format None\\)"):
        hook(tiny_config()).restore(tmp_path / "other")
    reporter = InMemoryReporter(root=tmp_path / "run")
    hook(tiny_config(prototypes=3)).save(0, 1, None, {}, reporter)
    with pytest.raises(CheckpointError, match="does not fit this config .*arch=resnet18, prototypes=3, feat_dim=16"):
        hook(tiny_config(prototypes=5), TwoLayers(prototypes=5)).restore(reporter.last_checkpoint)
