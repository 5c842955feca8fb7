"""Adaptive seeds: spend fine-tuning runs only where a verdict is still open.

A space may say ``seeds: {initial: 2, max: 8}`` (optionally ``budget_trials: N``) instead of a fixed
list. The launch then runs the initial seeds of every fine-tuning cell, and after each *wave* asks
:func:`next_wave` which cells get one more seed, judged by the project's one judge
(:mod:`experiments.results.verdict`, through :func:`experiments.results.headline.compute_headline`):

* a cell is **in contention** when, on some axis (or the pretrained-vs-baseline comparison) that
  is still undecided or without spread, its value is the leader or one of the values not yet told
  apart from it;
* a cell is **out** when its value lost decidedly on any axis (racing, as in F-Race and
  successive halving: a configuration decided-worse gets no more runs);
* cells in contention and not out get one more seed, until they reach ``max``; the waves stop
  when no cell would get one, or when the next wave would pass ``budget_trials`` fine-tuning trials
  (the wave is cut in the cells' order, the rest stop with ``budget``).

Why each cell stopped getting seeds is one of :data:`STOP_REASONS`: ``decided`` (nothing it takes
part in is open, or it lost decidedly), ``max`` (it reached the space's maximum), ``budget``.

Looking after every wave and stopping once decided would inflate the false wins (optional
stopping: a null axis is "decided" at some look far more often than 5 %). An adaptive study is
therefore judged, at every look and in its final headline, at Pocock's constant nominal level for
K = max - initial + 1 looks (Pocock 1977, "Group sequential methods in the design and analysis
of clinical trials": two-sided 0.05 overall is 0.0294 per look for K = 2, 0.0158 for 5, 0.0120
for 8); past 10 looks at 0.05 / K (Bonferroni, conservative). ``bench adaptive_seeds`` measures
the false wins that result.

Seeds are numbered 0, 1, 2, ...: a cell's next seed is the one after the highest it ran, so a wave
is the same trials (the same config hashes) whenever it is computed from the same results: a
relaunch after ``kill -9`` reuses the finished ones and resumes the rest, never duplicating a wave.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from experiments.results.headline import Headline, TrialResult, axis_strata, compute_headline
from experiments.spaces import AdaptiveSeeds
from experiments.results.verdict import DECIDED, NO_SPREAD, UNDECIDED, sequential_alpha

__all__ = ["AdaptiveSeeds", "STOP_REASONS", "Wave", "contention", "next_wave"]

DECIDED_STOP, MAX_STOP, BUDGET_STOP = "decided", "max", "budget"
STOP_REASONS = (DECIDED_STOP, MAX_STOP, BUDGET_STOP)


@dataclass
class Wave:
    """What :func:`next_wave` decided: the cells that get one more seed, and why every other cell stopped."""

    extend: list[str] = field(default_factory=list)
    stopped: dict[str, str] = field(default_factory=dict)  # cell -> decided | max | budget

    @property
    def done(self) -> bool:
        return not self.extend


def contention(headline: Headline, trials: Sequence[TrialResult], axes: Sequence[str]) -> tuple[set[str], set[str]]:
    """(cells in contention on some open comparison, cells whose value lost decidedly on some axis)."""
    open_cells: set[str] = set()
    out: set[str] = set()
    for verdict in headline.axes:
        members = {value: {t.cell for ts in strata.values() for t in ts}
                   for value, strata in axis_strata(trials, verdict.axis, axes).items()}
        for c in verdict.comparisons:
            if c.state == DECIDED:
                out |= members.get(c.loser, set())
            elif c.state in (UNDECIDED, NO_SPREAD):
                open_cells |= members.get(c.winner, set()) | members.get(c.loser, set())
    b = headline.baseline
    if b is not None and b.state in (UNDECIDED, NO_SPREAD):
        open_cells |= set(headline.baseline_cells)
    return open_cells, out


def next_wave(trials: Sequence[TrialResult], axes: Sequence[str], attempted: Mapping[str, int],
              seeds: AdaptiveSeeds, trials_so_far: int, metric: str, cost: Mapping[str, int] | None = None) -> Wave:
    """Which cells get one more seed after the results so far.

    Args:
        trials: the finished fine-tuning trials of the launch's cells (``TrialResult.cell`` keys them).
        axes: the ablated params (the experiment's ``ablate.axes``).
        attempted: cell -> seeds run so far (finished, failed or pruned: a seed is spent once).
        seeds: the space's adaptive seeds.
        trials_so_far: fine-tuning trials of the launch so far (for ``budget_trials``).
        metric: the ranking metric (higher is better).
        cost: cell -> trials its next seed takes (default 1; with pretraining seeds, one per backbone seed).
    """
    headline = compute_headline(trials, axes, metric, max_seeds=seeds.max, alpha=sequential_alpha(seeds.looks))
    open_cells, out = contention(headline, trials, axes)
    wave = Wave()
    room = None if seeds.budget_trials is None else max(0, seeds.budget_trials - trials_so_far)
    for cell in sorted(attempted):
        price = (cost or {}).get(cell, 1)
        if cell not in open_cells or cell in out:
            wave.stopped[cell] = DECIDED_STOP
        elif attempted[cell] >= seeds.max:
            wave.stopped[cell] = MAX_STOP
        elif room is not None and price > room:
            wave.stopped[cell] = BUDGET_STOP
        else:
            wave.extend.append(cell)
            room = None if room is None else room - price
    return wave
