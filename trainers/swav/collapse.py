"""Collapse signals of a SwAV run, and the rule that labels a run "collapsed".

SwAV collapses in more than one way, and the loss alone shows only one of them:

- **to a point**: every image gets the same embedding, Sinkhorn's codes become uniform and the
  loss sits at ln K. Seen as ``swav/embedding_std`` falling toward 0 (healthy: about
  ``1 / sqrt(feat_dim)`` for L2-normalised embeddings spread over the sphere).
- **away from the prototypes**: with fewer prototypes than embedding dimensions the prototypes
  leave free directions; the embeddings move there, score about 0 against every prototype, and
  the prediction becomes uniform (loss at ln K again). Seen as ``swav/prototype_span`` (the mean
  fraction of an embedding's length inside the prototypes' span: 1 when K >= feat_dim and the
  prototypes are in general position) and ``swav/score_std`` (the std over the batch of each
  prototype's score, averaged over prototypes: about ``1 / sqrt(feat_dim)`` when embeddings and
  prototypes are spread, 0 when every image scores the same) both falling.
- **in dimension, inside the trunk**: the head looks healthy (loss below ln K, prototypes used,
  embedding std fine) while the trunk's pooled features keep a handful of directions. Seen only
  on the trunk: ``swav/trunk_rank`` (RankMe on the monitor's crops, :mod:`trainers.swav.knn`)
  against the same figure for random initialisations (``swav/trunk_rank_random``).
- **at ln K**: the loss sits at ln K (within 1 +- 1 %) for several epochs: the predictions are
  uniform whatever the codes. Measured on the digits set without a queue (K = 300 at batch 64: each
  prototype gets a fifth of a sample, so Sinkhorn's codes are near-uniform) the loss went 1.2 ->
  1.0 x ln K while the kNN fell below the random trunks'. ``swav/epochs_at_ln_k`` counts the epochs.
- **back to ln K**: a loss that had dropped and climbs back to ln K. The SwAV paper's caveat
  applies: a queue switched on too early does this *temporarily*; the label says what the run is
  now, and a later epoch whose loss falls again clears it.

:func:`collapse_reasons` applies the rule to one epoch's metrics; the trainer reports the outcome
as ``swav/collapsed`` (1 or 0) every epoch, and the report, the launch summary and ``ablate
status`` show such a run as "collapsed" with these reasons.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping

from trainers.vocabulary import (
    SWAV_COLLAPSED,
    SWAV_EMBEDDING_STD,
    SWAV_EPOCHS_AT_LN_K,
    SWAV_LOSS_OVER_LN_K,
    SWAV_LOSS_OVER_LN_K_MIN,
    SWAV_PROTOTYPE_SPAN,
    SWAV_SCORE_STD,
    SWAV_TRUNK_RANK,
    SWAV_TRUNK_RANK_RANDOM,
)

if TYPE_CHECKING:  # the statistics take tensors; the label (what `ablate status` reads) needs no torch
    from torch import Tensor

STD_FLOOR = 0.1  # embedding std below a tenth of 1/sqrt(feat_dim): every image at (nearly) one point
SCORE_STD_FLOOR = 0.1  # prototype-score std below a tenth of 1/sqrt(feat_dim): every image scores the same
SPAN_FLOOR = 0.5  # under half of an embedding's length in the prototypes' span (at init: 0.98 with K=30, D=32)
RANK_FLOOR = 0.25  # trunk rank under a quarter of the random trunks' (measured: 10 vs 111 in a collapsed run)
REBOUND_DROP = 0.97  # loss/ln K had dropped to at most this ...
REBOUND_BACK = 0.99  # ... and is back at or above this: the loss returned to ln K
LN_K_BAND = 0.01  # loss/ln K within 1 +- this: uniform predictions (the pruner's default band, experiments/pruning/pruner.py)
LN_K_EPOCHS = 3  # ... for this many epochs in a row; a young run passes through the band in one or two

SIGNALS = (SWAV_EMBEDDING_STD, SWAV_SCORE_STD, SWAV_PROTOTYPE_SPAN, SWAV_TRUNK_RANK,
           SWAV_TRUNK_RANK_RANDOM, SWAV_LOSS_OVER_LN_K, SWAV_LOSS_OVER_LN_K_MIN, SWAV_EPOCHS_AT_LN_K)


def score_std(scores: Tensor, n_crops: int = 1) -> Tensor:
    """Std over the batch of each prototype's score, averaged over prototypes (and views)."""
    per_view = scores.detach().float().reshape(n_crops, -1, scores.shape[-1])
    return per_view.std(dim=1, unbiased=False).mean()


def prototype_span(embeddings: Tensor, prototypes: Tensor) -> Tensor:
    """Mean fraction of each embedding's length inside the span of the prototypes (rows of ``prototypes``).

    The projection onto the span uses an orthonormal basis of the prototypes' rows (reduced QR of
    ``prototypes.T``, dimension ``min(K, feat_dim)``); with K >= feat_dim in general position it is 1.
    """
    import torch

    basis, _ = torch.linalg.qr(prototypes.detach().float().t())  # (feat_dim, min(K, feat_dim))
    z = embeddings.detach().float()
    inside = (z @ basis).norm(dim=1)
    return (inside / z.norm(dim=1).clamp_min(1e-12)).mean()


def collapse_reasons(metrics: Mapping[str, float], feat_dim: int) -> list[str]:
    """Why a run with these (latest) metrics is collapsed; empty when no signal fires.

    Args:
        metrics: one epoch's metrics (the monitor's figures carried from its latest evaluation).
        feat_dim: the embedding dimension (the std floors scale with ``1 / sqrt(feat_dim)``).
    """
    reasons = []
    spread = 1.0 / math.sqrt(max(1, feat_dim))

    def value(key: str) -> float | None:
        v = metrics.get(key)
        return float(v) if v is not None and math.isfinite(float(v)) else None

    std = value(SWAV_EMBEDDING_STD)
    if std is not None and std < STD_FLOOR * spread:
        reasons.append(f"embeddings at one point (embedding std {std:.3g} < {STD_FLOOR * spread:.3g})")
    scores = value(SWAV_SCORE_STD)
    if scores is not None and scores < SCORE_STD_FLOOR * spread:
        reasons.append(f"every image scores the same (prototype-score std {scores:.3g} < {SCORE_STD_FLOOR * spread:.3g})")
    span = value(SWAV_PROTOTYPE_SPAN)
    if span is not None and span < SPAN_FLOOR:
        reasons.append(f"embeddings outside the prototypes' span ({span:.2f} of their length inside, < {SPAN_FLOOR})")
    rank, random_rank = value(SWAV_TRUNK_RANK), value(SWAV_TRUNK_RANK_RANDOM)
    if rank is not None and random_rank is not None and rank < RANK_FLOOR * random_rank:
        reasons.append(f"trunk features collapsed in dimension (effective rank {rank:.1f} < {RANK_FLOOR} x random "
                       f"{random_rank:.1f})")
    ratio, lowest = value(SWAV_LOSS_OVER_LN_K), value(SWAV_LOSS_OVER_LN_K_MIN)
    if ratio is not None and lowest is not None and lowest <= REBOUND_DROP and ratio >= REBOUND_BACK:
        reasons.append(f"loss back at ln K (loss/ln K {ratio:.3f} after {lowest:.3f})")
    elif (epochs := value(SWAV_EPOCHS_AT_LN_K)) is not None and epochs >= LN_K_EPOCHS:
        reasons.append(f"loss at ln K for {epochs:.0f} epochs: uniform predictions (loss/ln K {ratio:.3f})")
    return reasons


def at_ln_k(ratio: float) -> bool:
    """Whether ``loss / ln K`` is in the band of uniform predictions (1 +- LN_K_BAND)."""
    return abs(ratio - 1.0) <= LN_K_BAND


def collapse_label(metrics: Mapping[str, float], feat_dim: int | None) -> str | None:
    """``"collapsed: <reasons>"`` for a run whose latest ``swav/collapsed`` is 1, else None.

    The reasons are recomputed from the same metrics when ``feat_dim`` is known (a run's
    ``pretrain.feat_dim`` param); without it the label stands alone.
    """
    flag = metrics.get(SWAV_COLLAPSED)
    if flag is None or not math.isfinite(float(flag)) or float(flag) < 0.5:
        return None
    reasons = collapse_reasons(metrics, feat_dim) if feat_dim else []
    return "collapsed" + (f": {'; '.join(reasons)}" if reasons else "")


class CollapseWatch:
    """A SwAV run's collapse bookkeeping across epochs (and resumes): the lowest loss/ln K, the epochs in a row at
    ln K, and whether the last epoch was labelled collapsed. Restored from the last checkpoint's metrics."""

    def __init__(self, feat_dim: int, metrics: Mapping[str, float]) -> None:
        self.feat_dim = feat_dim
        self.lowest_ratio = metrics.get(SWAV_LOSS_OVER_LN_K_MIN, math.inf)
        self.epochs_at_ln_k = int(metrics.get(SWAV_EPOCHS_AT_LN_K, 0))
        self.collapsed = bool(metrics.get(SWAV_COLLAPSED, 0.0))

    def update(self, metrics: dict[str, float], monitored: Mapping[str, float]) -> str | None:
        """Add the epoch's signals to ``metrics`` (with the latest ``monitored`` figures for the label); returns a
        line to log when the label changed, else None."""
        self.lowest_ratio = min(self.lowest_ratio, metrics[SWAV_LOSS_OVER_LN_K])
        metrics[SWAV_LOSS_OVER_LN_K_MIN] = self.lowest_ratio
        self.epochs_at_ln_k = self.epochs_at_ln_k + 1 if at_ln_k(metrics[SWAV_LOSS_OVER_LN_K]) else 0
        metrics[SWAV_EPOCHS_AT_LN_K] = float(self.epochs_at_ln_k)
        reasons = collapse_reasons({**monitored, **metrics}, self.feat_dim)
        metrics[SWAV_COLLAPSED] = float(bool(reasons))
        changed, self.collapsed = bool(reasons) != self.collapsed, bool(reasons)
        if not changed:
            return None
        return f"SwAV has collapsed: {'; '.join(reasons)}" if reasons else "the collapse signals have cleared"


__all__ = ["CollapseWatch", "RANK_FLOOR", "SIGNALS", "SPAN_FLOOR", "at_ln_k", "collapse_label", "collapse_reasons",
           "prototype_span", "score_std"]
