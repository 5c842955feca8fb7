"""A SwAV run's checkpoints, as a hook of the training loop: what it restores before the first epoch and what it
writes after each. The reference's ``main_swav.py`` saves the same state (``restart_from_checkpoint``)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainers.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from trainers.common.configs import config_to_dict
from trainers.common.provenance import git_sha, rng_state, set_rng_state
from trainers.reporting import Reporter
from trainers.swav.config import SwAVConfig
from trainers.swav.loss import EmbeddingQueue, queue_rows_per_process
from trainers.swav.model import export_trunk

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "swav-checkpoint/v1"


def make_queue(config: SwAVConfig, world_size: int, device: torch.device) -> EmbeddingQueue | None:
    """This process's share of the embedding queue (None when ``queue_length`` is shorter than the global batch)."""
    rows = queue_rows_per_process(config.queue_length, config.batch_size, world_size)
    if rows == 0:
        log.warning("queue_length=%d is shorter than the global batch (%d x %d): no queue",
                    config.queue_length, config.batch_size, world_size)
        return None
    return EmbeddingQueue(len(config.crops_for_assign), rows, config.feat_dim, device)


def gather_queue(queue: EmbeddingQueue | None, world_size: int) -> Tensor | None:
    """Every process's queue, stacked ``(world, n_assign, rows, feat_dim)`` (all processes call it)."""
    if queue is None:
        return None
    local = queue.embeddings.detach()
    if world_size == 1:
        return local.unsqueeze(0).cpu()
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local.contiguous())
    return torch.stack(parts).cpu()


class Checkpoints:
    """The checkpoints of one run (every process holds one; rank 0 writes): model, optimizer, scaler, every
    process's queue, epochs done, global iteration, RNG states, resolved config, git sha and the epoch's metrics
    (the monitor's references and the collapse bookkeeping travel in them); the last epoch's also holds the
    exported trunk (``backbone.safetensors`` + ``.json``)."""

    def __init__(self, config: SwAVConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, rank: int, world_size: int, device: torch.device) -> None:
        self.config, self.model, self.optimizer, self.scaler = config, model, optimizer, scaler
        self.rank, self.world_size, self.device = rank, world_size, device
        self.resolved = config_to_dict(config)
        self.sha = git_sha()

    def restore(self, directory: Path) -> tuple[int, int, EmbeddingQueue | None, dict[str, float]]:
        """Load a checkpoint into the model, optimizer and scaler; restore RNG states.

        Returns:
            (epochs done, global iteration, this process's queue or None, last metrics).
        """
        state = load_checkpoint(directory)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{directory}: not a SwAV checkpoint (format {state.get('format')!r})")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            written = state["config"]
            raise CheckpointError(
                f"{directory}: the checkpoint does not fit this config (it was written with arch={written.get('arch')}, "
                f"prototypes={written.get('prototypes')}, feat_dim={written.get('feat_dim')}, "
                f"hidden_dim={written.get('hidden_dim')}, optimizer={written.get('optimizer')}): {exc}"
            ) from exc
        if state["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        queue = None
        stored = state.get("queue")  # (processes, n_assign, rows, feat_dim)
        if stored is not None:
            queue = make_queue(self.config, self.world_size, self.device)
            if queue is not None and stored.shape[0] == self.world_size and stored.shape[1:] == queue.embeddings.shape:
                queue.load_state_dict({"embeddings": stored[self.rank]})
            elif queue is not None:
                log.warning("%s: stored queue %s does not fit %d process(es) x %s; it restarts empty",
                            directory, tuple(stored.shape), self.world_size, tuple(queue.embeddings.shape))
        set_rng_state(state["rng"])
        log.info("resumed from %s after epoch %d (iteration %d)", directory, state["epoch"], state["iteration"])
        metrics = {name: float(value) for name, value in state["metrics"].items()}
        return int(state["epoch"]), int(state["iteration"]), queue, metrics

    def save(self, epoch: int, iteration: int, queue: EmbeddingQueue | None, metrics: dict[str, float],
             reporter: Reporter) -> None:
        """Write epoch ``epoch``'s checkpoint (rank 0; every process gathers the queue) and report it."""
        gathered_queue = gather_queue(queue, self.world_size)
        with tempfile.TemporaryDirectory(prefix="swav-ckpt-") as tmp:
            checkpoint_dir = None
            if self.rank == 0:
                checkpoint_dir = Path(tmp)
                save_checkpoint(checkpoint_dir, {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch + 1,
                    "iteration": iteration,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "queue": gathered_queue,
                    "world_size": self.world_size,
                    "rng": rng_state(),
                    "config": self.resolved,
                    "git_sha": self.sha,
                    "metrics": metrics,
                })
                if epoch + 1 == self.config.epochs:  # training completed: the final checkpoint carries the trunk
                    export_trunk(checkpoint_dir, self.model.trunk.state_dict(), self.resolved, self.sha, metrics,
                                 epoch + 1, self.config.method)
            reporter.report(metrics, step=epoch + 1, checkpoint_dir=checkpoint_dir)


__all__ = ["CHECKPOINT_FORMAT", "Checkpoints", "gather_queue", "make_queue"]
