"""The kNN monitor's figures and how they read, without torch: ``ablate status``, the report and the launch
summary print them from stored metrics.

:mod:`trainers.swav.knn` computes them; this module holds the record of one trunk's scores, the spread
over random initialisations, the "learned" rule and the text that never shows a figure without its
references (the random initialisations' mean ± std and the raw pixels).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

RANDOM_TRUNKS = 5  # random initialisations behind the *_random mean and std


@dataclass(frozen=True)
class MonitorScores:
    """One trunk's (or the raw pixels') figures on the monitor's objects."""

    knn: float  # weighted kNN top-1 (cosine)
    probe: float  # linear probe top-1
    rank: float  # effective rank of the bank features
    # the same kNN on features z-scored per dimension with the bank's mean and std: not dominated by the few
    # directions of largest variance (the case where the probe rose while the cosine kNN fell)
    knn_z: float = float("nan")

    def metrics(self, suffix: str = "") -> dict[str, float]:
        """As reported: ``swav/knn_top1{suffix}``, ``swav/knn_z_top1{suffix}``, ``swav/probe_top1{suffix}``,
        ``swav/trunk_rank{suffix}``."""
        return {f"swav/knn_top1{suffix}": self.knn, f"swav/knn_z_top1{suffix}": self.knn_z,
                f"swav/probe_top1{suffix}": self.probe, f"swav/trunk_rank{suffix}": self.rank}


def spread_metrics(scores: Sequence[MonitorScores]) -> dict[str, float]:
    """Mean and sample std over random initialisations: ``swav/*_random`` and ``swav/*_random_std``."""
    out: dict[str, float] = {}
    for name, values in (("knn_top1", [s.knn for s in scores]), ("knn_z_top1", [s.knn_z for s in scores]),
                         ("probe_top1", [s.probe for s in scores]), ("trunk_rank", [s.rank for s in scores])):
        out[f"swav/{name}_random"] = statistics.fmean(values)
        out[f"swav/{name}_random_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


LEARNED_POINTS = 0.10  # a trunk "learned" when its kNN is this far above the random-init mean (and 2 std)


def learned(metrics: Mapping[str, float], points: float = LEARNED_POINTS) -> bool | None:
    """Whether the trunk's kNN top-1 is at least ``points`` above the random initialisations' mean and more
    than two of their std above it; None when the monitor did not report."""
    knn, mean = metrics.get("swav/knn_top1"), metrics.get("swav/knn_top1_random")
    if knn is None or mean is None:
        return None
    std = metrics.get("swav/knn_top1_random_std") or 0.0
    return knn - mean >= points and knn - mean > 2 * std


def monitor_text(metrics: Mapping[str, float], what: str = "knn_top1", digits: int = 3) -> str:
    """``"0.352 (random 0.299 ± 0.023, pixels 0.714)"``: a monitor figure with its references, ``-`` when absent."""
    value = metrics.get(f"swav/{what}")
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    refs = []
    mean, std = metrics.get(f"swav/{what}_random"), metrics.get(f"swav/{what}_random_std")
    if mean is not None:
        refs.append(f"random {mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else ""))
    if (pixels := metrics.get(f"swav/{what}_pixels")) is not None:
        refs.append(f"pixels {pixels:.{digits}f}")
    return text + (f" ({', '.join(refs)})" if refs else "")
