"""Learning-rate schedules."""

from __future__ import annotations

import math

def warmup_cosine(
    iteration: int, total_iters: int, warmup_iters: int, base_lr: float, final_lr: float, start_lr: float
) -> float:
    """Linear warmup from ``start_lr`` to ``base_lr`` over ``warmup_iters``, then cosine to ``final_lr``.

    Per-iteration, as in the SwAV reference implementation.
    """
    if iteration < warmup_iters:
        return start_lr + (base_lr - start_lr) * iteration / max(1, warmup_iters)
    span = max(1, total_iters - warmup_iters)
    progress = min(1.0, (iteration - warmup_iters) / span)
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * progress))
