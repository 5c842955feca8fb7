"""trainers/swav/loss.py: Sinkhorn, the swapped-prediction loss and the embedding queue against the reference's
arithmetic, and the 2-process (gloo) equivalence of the Sinkhorn assignments and the loss. Tiny tensors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from trainers.swav.loss import EmbeddingQueue, queue_rows_per_process, sinkhorn, swav_loss
from experiments.testing.s3server import free_port
from tests.trainers.swav.helpers import unit_rows


def reference_sinkhorn(out: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """facebookresearch/swav ``distributed_sinkhorn`` on one process, verbatim arithmetic (float64)."""
    q = torch.exp(out.double() / epsilon).t()
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


# ---------------------------------------------------------------------------
# Sinkhorn
# ---------------------------------------------------------------------------


def test_sinkhorn_matches_the_reference_implementation() -> None:
    scores = unit_rows(32, 16, 0) @ unit_rows(8, 16, 1).t()
    q = sinkhorn(scores, epsilon=0.05, iterations=3)
    torch.testing.assert_close(q, reference_sinkhorn(scores).float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("batch", "prototypes"), [(32, 8), (12, 30), (7, 7)])
def test_sinkhorn_marginals(batch: int, prototypes: int) -> None:
    scores = unit_rows(batch, 16, 2) @ unit_rows(prototypes, 16, 3).t()
    q3 = sinkhorn(scores, 0.05, 3)
    assert q3.dtype == torch.float32 and q3.shape == (batch, prototypes)
    assert (q3 >= 0).all()
    torch.testing.assert_close(q3.sum(dim=1), torch.ones(batch), atol=1e-5, rtol=0)
    # Three iterations already pull the prototype marginals much closer to B/K than the plain softmax.
    target = torch.full((prototypes,), batch / prototypes)
    softmax_gap = (torch.softmax(scores / 0.05, dim=1).sum(0) - target).abs().max()
    assert (q3.sum(0) - target).abs().max() < softmax_gap
    # Iterated to convergence, every prototype gets exactly B/K.
    q = sinkhorn(scores, 0.05, 200)
    torch.testing.assert_close(q.sum(dim=0), target, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("ratio", [1e2, 1e3, 5e3])
def test_sinkhorn_is_stable_for_large_scores_over_epsilon(ratio: float) -> None:
    scores = unit_rows(16, 8, 4) @ unit_rows(10, 8, 5).t()  # cosine scores in [-1, 1]
    q = sinkhorn(scores, epsilon=1.0 / ratio, iterations=3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16), atol=1e-4, rtol=0)
    # Unnormalised scores as well (scores / epsilon = ratio * randn).
    q = sinkhorn(torch.randn(16, 10, generator=torch.Generator().manual_seed(0)) * ratio * 0.05, epsilon=0.05)
    assert torch.isfinite(q).all()


def test_sinkhorn_computes_in_float32_under_autocast() -> None:
    scores = (unit_rows(8, 8, 6) @ unit_rows(4, 8, 7).t()).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = sinkhorn(scores)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, sinkhorn(scores.float()), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kwargs", "message"), [({"epsilon": 0.0}, "epsilon"), ({"iterations": 0}, "iterations")])
def test_sinkhorn_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sinkhorn(torch.zeros(4, 3), **kwargs)


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------


def reference_loss(scores: torch.Tensor, n_crops: int, assign: tuple[int, ...], temperature: float) -> torch.Tensor:
    """The reference's loss loop (main_swav.py), written out independently."""
    bs = scores.shape[0] // n_crops
    loss = 0.0
    for crop_id in assign:
        q = reference_sinkhorn(scores[bs * crop_id: bs * (crop_id + 1)]).float()
        subloss = 0.0
        for v in [v for v in range(n_crops) if v != crop_id]:
            x = scores[bs * v: bs * (v + 1)] / temperature
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (n_crops - 1)
    return loss / len(assign)


def test_swav_loss_matches_the_reference_loop() -> None:
    scores = unit_rows(4 * 6, 16, 8) @ unit_rows(12, 16, 9).t()
    for assign in [(0, 1), (0,), (1, 3)]:
        torch.testing.assert_close(swav_loss(scores, 4, assign, 0.1, 0.05, 3), reference_loss(scores, 4, assign, 0.1))


def test_swav_loss_of_identical_embeddings() -> None:
    """Collapse: every embedding identical -> uniform codes, loss = ln K + KL(uniform || prediction).

    With arbitrary prototypes the prediction softmax(p / T) is not uniform, so the loss is the
    cross-entropy of the uniform code, which is ln K plus that KL and exactly ln K when the
    prototype scores tie (the collapsed optimum the paper describes).
    """
    k, n_crops, batch = 10, 3, 5
    prototypes = unit_rows(k, 8, 10)
    embedding = unit_rows(1, 8, 11)
    scores = (embedding @ prototypes.t()).expand(n_crops * batch, k).contiguous()
    codes = sinkhorn(scores[:batch])
    torch.testing.assert_close(codes, torch.full((batch, k), 1.0 / k), atol=1e-6, rtol=0)
    loss = swav_loss(scores, n_crops, (0, 1), temperature=0.1)
    logits = scores[0] / 0.1
    expected = torch.logsumexp(logits, 0) - logits.mean()  # = ln K + KL(u || softmax)
    torch.testing.assert_close(loss, expected)
    assert loss >= math.log(k) - 1e-5
    # Scores that tie (embedding orthogonal to every prototype): exactly ln K.
    tied = torch.zeros(n_crops * batch, k)
    torch.testing.assert_close(swav_loss(tied, n_crops, (0, 1)), torch.tensor(math.log(k)))


def test_swav_loss_gradient_flows_through_predictions_only() -> None:
    scores = (unit_rows(2 * 4, 8, 12) @ unit_rows(6, 8, 13).t()).requires_grad_(True)
    swav_loss(scores, 2, (0,)).backward()
    # Crop 0's codes are targets (no gradient) and crop 0 is not predicted from itself: only crop 1 gets gradient.
    assert scores.grad[:4].abs().sum() == 0
    assert scores.grad[4:].abs().sum() > 0


# ---------------------------------------------------------------------------
# Queue
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "batch", "world", "rows"),
    [(3840, 64, 4, 960), (100, 8, 3, 32), (100, 8, 1, 96), (7, 8, 1, 0), (256, 256, 2, 0), (512, 256, 2, 256)],
)
def test_queue_length_is_rounded_to_the_global_batch(length: int, batch: int, world: int, rows: int) -> None:
    assert queue_rows_per_process(length, batch, world) == rows
    assert (rows * world) % (batch * world) == 0


def test_queue_is_fifo_and_used_only_once_full() -> None:
    queue = EmbeddingQueue(n_assign=2, rows=6, feat_dim=4)
    prototypes = unit_rows(5, 4, 14)
    batches = [[unit_rows(3, 4, 100 + 2 * s), unit_rows(3, 4, 101 + 2 * s)] for s in range(3)]
    assert queue.scores(prototypes) is None  # empty
    queue.push(batches[0])
    assert queue.scores(prototypes) is None  # half full: not used yet
    assert not queue.is_full()
    queue.push(batches[1])
    assert queue.is_full()
    scores = queue.scores(prototypes)
    assert scores is not None and len(scores) == 2 and scores[0].shape == (6, 5)
    # Newest first.
    torch.testing.assert_close(queue.embeddings[0, :3], batches[1][0])
    torch.testing.assert_close(queue.embeddings[0, 3:], batches[0][0])
    queue.push(batches[2])  # the oldest block falls off
    torch.testing.assert_close(queue.embeddings[1, :3], batches[2][1])
    torch.testing.assert_close(queue.embeddings[1, 3:], batches[1][1])
    # Scores are recomputed against the prototypes passed in (they move every step).
    moved = unit_rows(5, 4, 15)
    torch.testing.assert_close(queue.scores(moved)[1], queue.embeddings[1] @ moved.t())
    state = queue.state_dict()
    restored = EmbeddingQueue(2, 6, 4)
    restored.load_state_dict(state)
    assert restored.is_full()
    torch.testing.assert_close(restored.embeddings, queue.embeddings)
    with pytest.raises(ValueError, match="do not fit"):
        queue.push([unit_rows(7, 4, 0), unit_rows(7, 4, 1)])


def test_loss_with_queue_assigns_over_queue_and_batch() -> None:
    batch, k = 4, 6
    scores = unit_rows(2 * batch, 8, 16) @ unit_rows(k, 8, 17).t()
    queue_scores = [unit_rows(8, 8, 18) @ unit_rows(k, 8, 17).t()]
    with_queue = swav_loss(scores, 2, (0,), queue_scores=queue_scores)
    codes = sinkhorn(torch.cat([queue_scores[0], scores[:batch]]))[-batch:]
    expected = -(codes * F.log_softmax(scores[batch:] / 0.1, dim=1)).sum(1).mean()
    torch.testing.assert_close(with_queue, expected)
    assert not torch.allclose(with_queue, swav_loss(scores, 2, (0,)))
    # A queue entry of None (not full yet) means no queue.
    torch.testing.assert_close(swav_loss(scores, 2, (0,), queue_scores=[None]), swav_loss(scores, 2, (0,)))


# ---------------------------------------------------------------------------
# Two processes (gloo) == one process
# ---------------------------------------------------------------------------


N_CROPS, BATCH, K, QUEUE_ROWS = 3, 8, 6, 4


def _local_rows(scores: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's share of a crop-major batch: its half of every crop's rows."""
    half = BATCH // world
    return torch.cat([scores[c * BATCH + rank * half: c * BATCH + (rank + 1) * half] for c in range(N_CROPS)])


def _gloo_worker(rank: int, world: int, port: int, out_dir: str, scores: torch.Tensor, queue: torch.Tensor) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        local = _local_rows(scores, rank, world)
        half = BATCH // world
        codes = sinkhorn(local[:half], epsilon=0.05, iterations=3)
        loss = swav_loss(local, N_CROPS, (0, 1))
        # Each process keeps its own queue; together they hold the one-process queue.
        local_queue = [q[rank * QUEUE_ROWS: (rank + 1) * QUEUE_ROWS] for q in queue]
        loss_queue = swav_loss(local, N_CROPS, (0, 1), queue_scores=local_queue)
        # DDP averages the processes' gradients, i.e. their losses.
        losses = torch.stack([loss, loss_queue]).detach()
        dist.all_reduce(losses)
        save_file({"codes": codes.contiguous(), "losses": losses / world}, f"{out_dir}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    prototypes = torch.nn.functional.normalize(torch.randn(K, 8, generator=g), dim=1)
    embeddings = torch.nn.functional.normalize(torch.randn(N_CROPS * BATCH, 8, generator=g), dim=1)
    scores = embeddings @ prototypes.t()
    queue_embeddings = torch.nn.functional.normalize(torch.randn(2, 2 * QUEUE_ROWS, 8, generator=g), dim=2)
    queue = queue_embeddings @ prototypes.t()  # (n_assign, rows of both processes, K)

    mp.spawn(_gloo_worker, args=(2, free_port(), str(tmp_path), scores, queue), nprocs=2, join=True)

    full_codes = sinkhorn(scores[:BATCH])
    full_loss = swav_loss(scores, N_CROPS, (0, 1))
    full_loss_queue = swav_loss(scores, N_CROPS, (0, 1), queue_scores=list(queue))
    for rank in range(2):
        out = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        torch.testing.assert_close(out["codes"], full_codes[rank * 4: (rank + 1) * 4], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out["losses"][0], full_loss, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out["losses"][1], full_loss_queue, atol=1e-6, rtol=1e-5)
    # The split codes are not what each half would get on its own (the all-reduce matters).
    assert not torch.allclose(sinkhorn(_local_rows(scores, 0, 2)[:4]), full_codes[:4], atol=1e-4)
