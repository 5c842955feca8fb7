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

from trainers.vocabulary import (
    MONITOR_METRICS,
    PIXELS,
    RANDOM_MEAN,
    RANDOM_STD,
    SWAV_KNN_TOP1,
    SWAV_KNN_TOP1_RANDOM,
    SWAV_KNN_TOP1_RANDOM_STD,
    SWAV_KNN_Z_TOP1,
    SWAV_PROBE_TOP1,
    SWAV_TRUNK_RANK,
    reference_key,
)

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

    def values(self) -> dict[str, float]:
        """Each figure under its metric key (trainers.vocabulary.MONITOR_METRICS)."""
        return {SWAV_KNN_TOP1: self.knn, SWAV_KNN_Z_TOP1: self.knn_z, SWAV_PROBE_TOP1: self.probe,
                SWAV_TRUNK_RANK: self.rank}

    def metrics(self, reference: str = "") -> dict[str, float]:
        """As reported: the figures' keys (``swav/knn_top1`` ...), followed by ``reference`` (``_pixels``) if any."""
        return {reference_key(key, reference): value for key, value in self.values().items()}


def spread_metrics(scores: Sequence[MonitorScores]) -> dict[str, float]:
    """Mean and sample std over random initialisations: ``swav/*_random`` and ``swav/*_random_std``."""
    out: dict[str, float] = {}
    for key in MONITOR_METRICS:
        values = [s.values()[key] for s in scores]
        out[reference_key(key, RANDOM_MEAN)] = statistics.fmean(values)
        out[reference_key(key, RANDOM_STD)] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


LEARNED_POINTS = 0.10  # a trunk "learned" when its kNN is this far above the random-init mean (and 2 std)


def learned(metrics: Mapping[str, float], points: float = LEARNED_POINTS) -> bool | None:
    """Whether the trunk's kNN top-1 is at least ``points`` above the random initialisations' mean and more
    than two of their std above it; None when the monitor did not report."""
    knn, mean = metrics.get(SWAV_KNN_TOP1), metrics.get(SWAV_KNN_TOP1_RANDOM)
    if knn is None or mean is None:
        return None
    std = metrics.get(SWAV_KNN_TOP1_RANDOM_STD) or 0.0
    return knn - mean >= points and knn - mean > 2 * std


def monitor_text(metrics: Mapping[str, float], what: str = SWAV_KNN_TOP1, digits: int = 3) -> str:
    """``"0.352 (random 0.299 ± 0.023, pixels 0.714)"``: the monitor figure ``what`` (a key of
    trainers.vocabulary.MONITOR_METRICS) with its references, ``-`` when absent."""
    value = metrics.get(what)
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    refs = []
    mean, std = metrics.get(reference_key(what, RANDOM_MEAN)), metrics.get(reference_key(what, RANDOM_STD))
    if mean is not None:
        refs.append(f"random {mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else ""))
    if (pixels := metrics.get(reference_key(what, PIXELS))) is not None:
        refs.append(f"pixels {pixels:.{digits}f}")
    return text + (f" ({', '.join(refs)})" if refs else "")
