"""SwAV maths as pure functions: Sinkhorn-Knopp, the swapped-prediction loss, the queue,
and the collapse statistics.

Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", sections 3.1 (online codes) and 4 / appendix (queue); numerics follow
facebookresearch/swav ``main_swav.py`` (``distributed_sinkhorn`` and the loss loop).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def distributed_ready() -> bool:
    """True when a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def _global_logsumexp_rows(log_q: Tensor) -> Tensor:
    """``logsumexp`` over the samples (dim 0) of the global batch, ``(1, K)``.

    Stable: the global column max is subtracted before ``exp``, so every column has a term
    equal to 1 and the log never sees 0 or overflow.
    """
    col_max = log_q.amax(dim=0, keepdim=True)
    if distributed_ready():
        dist.all_reduce(col_max, op=dist.ReduceOp.MAX)
    sums = torch.exp(log_q - col_max).sum(dim=0, keepdim=True)
    if distributed_ready():
        dist.all_reduce(sums)
    return col_max + torch.log(sums)


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Equipartitioned soft assignments of samples to prototypes (Sinkhorn-Knopp).

    Computes ``Q = diag(u) exp(scores / epsilon) diag(v)`` such that every sample's row sums
    to 1 and every prototype receives ``B / K`` of the mass, over the **global** batch when
    torch.distributed is initialised (column totals and the batch size are all-reduced, as the
    reference's ``distributed_sinkhorn``). The reference's division by the total of ``Q`` is
    implicit: its first prototype normalisation cancels any global scale.

    Runs in float32 and in the log domain (autocast disabled), so ``scores / epsilon`` of any
    magnitude (1e3 and beyond) neither overflows nor divides by an underflowed zero.

    Args:
        scores: ``B x K`` prototype scores of this process's samples.
        epsilon: entropy regularisation (smaller = sharper codes).
        iterations: Sinkhorn iterations (>= 1; the paper uses 3).

    Returns:
        ``B x K`` float32 assignments; rows sum to 1.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon={epsilon!r} is invalid: a number > 0")
    if iterations < 1:
        raise ValueError(f"iterations={iterations!r} is invalid: an integer >= 1")
    if scores.dim() != 2 or scores.shape[0] == 0:
        raise ValueError(f"sinkhorn expects a non-empty B x K score matrix, got shape {tuple(scores.shape)}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        log_q = scores.detach().float() / epsilon
        n_prototypes = log_q.shape[1]
        batch = torch.tensor([float(log_q.shape[0])], device=log_q.device)
        if distributed_ready():
            dist.all_reduce(batch)
        log_k = math.log(n_prototypes)
        log_b = torch.log(batch)
        for _ in range(iterations):
            # Each prototype gets total mass 1/K over the global batch...
            log_q = log_q - _global_logsumexp_rows(log_q) - log_k
            # ...and each sample total mass 1/B.
            log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_b
        # Scale rows to sum to 1: Q is an assignment.
        return torch.exp(log_q + log_b)


def swapped_prediction(scores: Tensor, assignments: Tensor, temperature: float) -> Tensor:
    """``-mean_b sum_k q_bk log softmax(p_b / temperature)_k``: cross-entropy of codes and predictions."""
    log_p = F.log_softmax(scores.float() / temperature, dim=1)
    return -(assignments * log_p).sum(dim=1).mean()


def swav_loss(
    scores: Tensor,
    n_crops: int,
    crops_for_assign: Sequence[int] = (0, 1),
    temperature: float = 0.1,
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 3,
    queue_scores: Sequence[Tensor | None] | None = None,
) -> Tensor:
    """SwAV's swapped-prediction loss over all views, as the reference implementation.

    For each assignment view ``c``: codes ``q = sinkhorn(scores of c)`` (computed without
    gradient; with the queue's scores prepended when given, keeping only this batch's rows);
    then the mean over every other view ``v`` of ``swapped_prediction(scores of v, q)``.
    The result is averaged over the assignment views.

    Args:
        scores: ``(n_crops * B) x K`` prototype scores, crop-major (view ``v`` is rows ``vB..(v+1)B``).
        n_crops: number of views per image.
        crops_for_assign: the views whose codes are predicted.
        temperature: softmax temperature of the predictions.
        epsilon: Sinkhorn regularisation.
        sinkhorn_iterations: Sinkhorn iterations.
        queue_scores: per assignment view, the queue's ``L x K`` scores against the current
            prototypes (or None), see :class:`EmbeddingQueue`.

    Returns:
        The scalar loss (float32).
    """
    if n_crops < 2:
        raise ValueError(f"n_crops={n_crops}: the swapped prediction needs at least 2 views")
    if scores.shape[0] % n_crops:
        raise ValueError(f"scores has {scores.shape[0]} rows, not a multiple of n_crops={n_crops}")
    batch = scores.shape[0] // n_crops
    total = scores.new_zeros((), dtype=torch.float32)
    for i, crop in enumerate(crops_for_assign):
        if not 0 <= crop < n_crops:
            raise ValueError(f"crops_for_assign contains {crop}, outside 0..{n_crops - 1}")
        with torch.no_grad():
            out = scores[crop * batch : (crop + 1) * batch].detach().float()
            extra = queue_scores[i] if queue_scores is not None else None
            if extra is not None:
                out = torch.cat((extra.float(), out))
            codes = sinkhorn(out, epsilon, sinkhorn_iterations)[-batch:]
        subloss = scores.new_zeros((), dtype=torch.float32)
        for view in range(n_crops):
            if view != crop:
                subloss = subloss + swapped_prediction(scores[view * batch : (view + 1) * batch], codes, temperature)
        total = total + subloss / (n_crops - 1)
    return total / len(crops_for_assign)


# ---------------------------------------------------------------------------
# Queue
# ---------------------------------------------------------------------------


def queue_rows_per_process(queue_length: int, batch_size: int, world_size: int = 1) -> int:
    """Rows of queue each process keeps.

    As the reference: the length is rounded down to a multiple of the global batch size
    (``batch_size * world_size``) and split evenly over the processes. 0 means no queue.
    """
    if queue_length < 0 or batch_size < 1 or world_size < 1:
        raise ValueError(f"queue_rows_per_process({queue_length}, {batch_size}, {world_size}): invalid sizes")
    global_batch = batch_size * world_size
    return (queue_length - queue_length % global_batch) // world_size


class EmbeddingQueue:
    """FIFO of past embeddings of the assignment views, one row block per assignment view.

    Newest embeddings go first (row 0), the oldest fall off the end. Its scores join the
    Sinkhorn assignment only once it is full (the reference's ``use_the_queue``: the last row
    is no longer zero), and they are recomputed against the current prototypes every step.

    Args:
        n_assign: number of assignment views.
        rows: embeddings kept per view on this process (see :func:`queue_rows_per_process`).
        feat_dim: embedding dimension.
        device: where the queue lives (the training device).
    """

    def __init__(self, n_assign: int, rows: int, feat_dim: int, device: torch.device | str | None = None) -> None:
        if n_assign < 1 or rows < 1 or feat_dim < 1:
            raise ValueError(f"EmbeddingQueue({n_assign}, {rows}, {feat_dim}): sizes must be >= 1")
        self.embeddings = torch.zeros(n_assign, rows, feat_dim, device=device, dtype=torch.float32)
        self.in_use = False

    @property
    def rows(self) -> int:
        """Embeddings kept per assignment view."""
        return self.embeddings.shape[1]

    def is_full(self) -> bool:
        """True once every slot has been written (the last row is non-zero)."""
        return bool((self.embeddings[:, -1] != 0).any())

    @torch.no_grad()
    def scores(self, prototypes: Tensor) -> list[Tensor] | None:
        """Per assignment view, ``rows x K`` scores of the stored embeddings (None until full).

        Args:
            prototypes: the current ``K x feat_dim`` prototype weights.
        """
        if not self.in_use and self.is_full():
            self.in_use = True
        if not self.in_use:
            return None
        weight = prototypes.detach().float()
        return [block @ weight.t() for block in self.embeddings]

    @torch.no_grad()
    def push(self, embeddings: Sequence[Tensor]) -> None:
        """Insert this step's embeddings of each assignment view at the front (FIFO)."""
        if len(embeddings) != self.embeddings.shape[0]:
            raise ValueError(f"push: expected {self.embeddings.shape[0]} blocks, got {len(embeddings)}")
        for i, block in enumerate(embeddings):
            n = block.shape[0]
            if n > self.rows:
                raise ValueError(f"push: {n} embeddings do not fit a queue of {self.rows} rows")
            self.embeddings[i, n:] = self.embeddings[i, :-n].clone()
            self.embeddings[i, :n] = block.detach().to(self.embeddings.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The queue contents (for checkpoints)."""
        return {"embeddings": self.embeddings.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the shape must match."""
        stored = state["embeddings"]
        if tuple(stored.shape) != tuple(self.embeddings.shape):
            raise ValueError(f"queue shape {tuple(stored.shape)} does not match {tuple(self.embeddings.shape)}")
        self.embeddings.copy_(stored)
        self.in_use = False


# ---------------------------------------------------------------------------
# Collapse statistics
# ---------------------------------------------------------------------------


@torch.no_grad()
def embedding_std(embeddings: Tensor, n_crops: int = 1) -> Tensor:
    """Std over the batch of L2-normalised embeddings, averaged over dimensions (and views).

    About ``1 / sqrt(feat_dim)`` for well-spread embeddings, 0 when they collapse to one point.
    """
    if embeddings.shape[0] % n_crops:
        raise ValueError(f"{embeddings.shape[0]} embeddings is not a multiple of n_crops={n_crops}")
    per_view = embeddings.float().reshape(n_crops, -1, embeddings.shape[-1])
    return per_view.std(dim=1, unbiased=False).mean()


@torch.no_grad()
def assignment_entropy(scores: Tensor, temperature: float) -> Tensor:
    """Mean entropy (nats) of the predicted prototype distributions ``softmax(scores / T)``."""
    log_p = F.log_softmax(scores.float() / temperature, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


@torch.no_grad()
def prototype_counts(scores: Tensor) -> Tensor:
    """How often each prototype is the argmax prediction, ``(K,)`` int64."""
    return torch.bincount(scores.argmax(dim=1), minlength=scores.shape[1])


__all__ = [
    "EmbeddingQueue",
    "assignment_entropy",
    "distributed_ready",
    "embedding_std",
    "prototype_counts",
    "queue_rows_per_process",
    "sinkhorn",
    "swapped_prediction",
    "swav_loss",
]
