"""Synthetic per-epoch SwAV metric curves for the pruner and scheduler tests."""

from __future__ import annotations

import math
from typing import Callable

K = 3000
LN_K = math.log(K)  # 8.006
HEALTHY_STD = 0.08  # ~ 1/sqrt(128): embeddings spread over the sphere
Curve = Callable[[int], dict]


def metrics(ratio: float, k: int = K, std: float = HEALTHY_STD, used: float = 900) -> dict[str, float]:
    """One epoch of SwAV metrics as the trainer reports them."""
    ln_k = math.log(k)
    return {
        "swav/loss": ratio * ln_k,
        "swav/ln_k": ln_k,
        "swav/loss_over_ln_k": ratio,
        "swav/embedding_std": std,
        "swav/assignment_entropy": ln_k * min(1.0, ratio),
        "swav/prototypes_used": used,
    }


def healthy(epoch: int) -> dict[str, float]:
    # Starts at ln K (uniform predictions, frozen prototypes) and leaves the band after warmup.
    ratio = {1: 0.999, 2: 0.995}.get(epoch, max(0.5, 0.97 - 0.03 * (epoch - 3)))
    return metrics(ratio)


def queue_transient(start: int = 5, length: int = 3) -> Curve:
    """Healthy, then back up to ln K for `length` epochs when the queue starts, then down again."""

    def curve(epoch: int) -> dict[str, float]:
        if start <= epoch < start + length:
            return metrics((1.0, 0.9995, 0.998, 0.9992, 0.9999, 1.0)[(epoch - start) % 6])
        return healthy(epoch if epoch < start else epoch - length)

    return curve


def collapse(at: int = 4, std: float = HEALTHY_STD, used: float = 900) -> Curve:
    """Healthy until `at`, then the loss pinned at ln K (other signals as given)."""

    def curve(epoch: int) -> dict[str, float]:
        if epoch < at:
            return healthy(epoch)
        return metrics((1.0, 0.9996, 1.0003)[epoch % 3], std=std, used=used)

    return curve
