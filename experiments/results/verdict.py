"""The one judge of "which choice won": a difference of means with its 95 % interval, over seeds.

Every place that states a winner asks this module: the headline (the launch summary, ``ablate
status``, ``ablate report``'s first lines, the registered version's description), the report's
tables, the demo's "what this demo shows", ``bench fidelity``'s verdict, and the launch's adaptive
seeds (which cells still get seeds).

The rule (rliable, Agarwal et al., NeurIPS 2021: interval estimates and the probability of
improvement for few-seed comparisons, rather than "mean ± std" or a margin against one std):

* **Difference and interval.** Two arms' final metrics over seeds are compared by the difference
  of their means and Welch's t interval for it (unequal variances). When the arms' runs fall into
  *strata* (for an axis: the settings of the other axes under which both values ran), the
  difference is the weighted mean of the per-stratum differences (weights n_a n_b / (n_a + n_b):
  equal for balanced strata) and its variance the matching sum, with Welch-Satterthwaite degrees
  of freedom; with one stratum this is Welch's interval exactly. The t distribution's CDF and
  quantiles are ``scipy.special.stdtr`` / ``stdtrit``, the functions behind ``scipy.stats.t``,
  imported without the 0.5 s of ``scipy.stats`` so that ``ablate status`` stays fast (the tests
  check the interval against ``scipy.stats.ttest_ind``). Bootstrap intervals are not used: with
  2-8 seeds per arm a percentile bootstrap under-covers badly, while the t interval keeps its
  level under normal seed noise.
* **Correction.** Within an axis the leader (highest mean) is compared with every other value.
  Because the leader is picked after looking (the maximum of noisy means), the family is every
  pair of the axis's values, corrected by Holm's step-down method: the pair with the smallest p
  is judged at level alpha/m, the next at alpha/(m-1), ..., stopping at the first that fails.
  Each interval is printed at the level its step used (95 % when the axis has two values), so a
  comparison is **decided** exactly when its printed interval excludes 0. The pretrained cells
  against the best baseline are one such family too.
* **States.** ``decided``: the corrected interval excludes 0. ``undecided``: it does not; the
  verdict says how many seeds per cell the observed spread suggests would decide it (the minimum
  detectable difference, MDD, at 80 % power, at the current and at the maximum seed count).
  ``no spread``: an arm has one seed, so there is no seed noise to judge the difference against.
  ``tie``: equal means.
* **Probability of improvement**: P(a run of the winner beats a run of the loser), the
  Mann-Whitney U statistic over all pairs (ties count half), within strata and averaged.

The words, as printed by :meth:`Verdict.text`:
``frozen_bn > bn by 0.031 AP@0.5 [0.012, 0.050], 5 seeds each, decided`` (``8 vs 6 runs over 2
settings`` when the arms span several settings of the other axes; the level in parentheses when a
correction moved it off 95 %).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

ALPHA = 0.05  # a 95 % interval for one comparison (the family's error rate for several, after Holm)
POWER = 0.80  # the minimum detectable difference: decided with this probability when the true gap equals it
MAX_SEEDS_SEARCHED = 64  # seeds per cell beyond which "how many would decide it" says "more than 64"

DECIDED, UNDECIDED, NO_SPREAD, TIE = "decided", "undecided", "no spread", "tie"
STATES = (DECIDED, UNDECIDED, NO_SPREAD, TIE)

# How each state reads in a sentence (the README and the report print these two-sentence explanations).
EXPLAINED = {
    DECIDED: "the 95 % interval of the difference (Welch's t, Holm-corrected within an axis) excludes 0: the "
             "winner is better beyond seed noise. The interval says by how much it may be.",
    UNDECIDED: "the interval includes 0: the seeds cannot tell the two apart yet. The line says how many seeds "
               "per cell the observed spread suggests would decide it.",
    NO_SPREAD: "an arm has one seed, so there is no seed noise to judge the gap against. It is not evidence "
               "either way; run more seeds (a space's `seeds:`).",
    TIE: "the means are equal. Nothing to decide.",
}

Samples = Sequence[float] | Mapping[Hashable, Sequence[float]]  # one list of seed values, or lists by stratum


def _strata(samples: Samples) -> dict[Hashable, list[float]]:
    if isinstance(samples, Mapping):
        return {k: [float(v) for v in vs if math.isfinite(v)] for k, vs in samples.items()}
    return {None: [float(v) for v in samples if math.isfinite(v)]}


@dataclass(frozen=True)
class Verdict:
    """One comparison: ``winner`` against ``loser`` over their seeds.

    Attributes:
        winner, loser: the arms' names (an axis value, a cell name); ``winner`` has the higher mean.
        winner_mean, loser_mean: their means (stratum-balanced when the arms have strata).
        winner_n, loser_n: runs per arm (seeds; summed over strata).
        diff: ``winner_mean - loser_mean`` (>= 0).
        low, high: the interval of ``diff`` at ``level`` (NaN without spread).
        level: the interval's confidence (0.95 for one comparison; Holm's step level within an axis).
        p_value: Welch's two-sided p, uncorrected (1.0 without spread).
        prob_improvement: P(winner's run > loser's run), ties half.
        state: one of :data:`STATES`.
        mdd: the minimum detectable difference at 80 % power with the arms' current seed counts.
        mdd_max: the same at ``max_seeds`` seeds per cell (NaN when no maximum was given).
        seeds_needed: seeds per cell that the observed spread suggests would decide ``diff``
            (None: more than 64, or no spread to say).
        max_seeds: the most seeds a cell may get (a space's ``seeds: {max: N}``), if any.
    """

    winner: str
    loser: str
    winner_mean: float
    loser_mean: float
    winner_n: int
    loser_n: int
    diff: float
    low: float
    high: float
    level: float
    p_value: float
    prob_improvement: float
    state: str
    mdd: float = math.nan
    mdd_max: float = math.nan
    seeds_needed: int | None = None
    max_seeds: int | None = None
    strata: int = 1
    spread: float = math.nan  # the pooled within-cell std of the seeds (NaN with one seed)

    @property
    def decided(self) -> bool:
        return self.state == DECIDED

    def seeds_text(self) -> str:
        """``5 seeds each``, ``5 vs 3 seeds``; over several settings of the other axes, runs: ``8 vs 8 runs over 2
        settings``."""
        unit = "seed" if self.strata == 1 else "run"
        where = "" if self.strata == 1 else f" over {self.strata} settings"
        if self.winner_n == self.loser_n:
            return f"{self.winner_n} {unit}{'s' if self.winner_n != 1 else ''} each{where}"
        return f"{self.winner_n} vs {self.loser_n} {unit}s{where}"

    def interval_text(self, digits: int = 3) -> str:
        if not math.isfinite(self.low):
            return "[no interval]"
        pct = f"{self.level * 100:.1f}".rstrip("0").rstrip(".")
        return (f"[{self.low:.{digits}f}, {self.high:.{digits}f}]" + ("" if abs(self.level - 0.95) < 1e-9
                                                                    else f" ({pct} %)"))

    def state_text(self) -> str:
        """``decided``, or ``undecided: ~7 seeds per cell would decide it (MDD 0.041 now, 0.020 at 8)``."""
        if self.state != UNDECIDED:
            return self.state
        need = (f"~{self.seeds_needed} seeds per cell would decide it" if self.seeds_needed is not None
                else f"more than {MAX_SEEDS_SEARCHED} seeds per cell would be needed")
        if self.max_seeds is not None and self.seeds_needed is not None and self.seeds_needed > self.max_seeds:
            need += f", more than the space's max of {self.max_seeds}"
        mdd = f"MDD {self.mdd:.3f} now" + (f", {self.mdd_max:.3f} at {self.max_seeds}" if self.max_seeds else "")
        return f"undecided: {need} ({mdd})"

    def text(self, label: str = "", digits: int = 3) -> str:
        """``frozen_bn > bn by 0.031 AP@0.5 [0.012, 0.050], 5 seeds each, decided``."""
        unit = f" {label}" if label else ""
        if self.state == TIE:
            return f"{self.winner} = {self.loser} (tie at {self.winner_mean:.{digits}f}{unit}), {self.seeds_text()}"
        return (f"{self.winner} > {self.loser} by {self.diff:.{digits}f}{unit} {self.interval_text(digits)}, "
                f"{self.seeds_text()}, {self.state_text()}")


def _weights(winner: dict[Hashable, list[float]], loser: dict[Hashable, list[float]]) -> dict[Hashable, float]:
    """Each shared stratum's weight: n_a * n_b / (n_a + n_b) (equal when the strata are balanced), so a stratum
    that ran more seeds (adaptive seeds add them where the comparison is close) counts for more."""
    return {k: len(winner[k]) * len(loser[k]) / (len(winner[k]) + len(loser[k])) for k in winner
            if k in loser and winner[k] and loser[k]}


def _welch(winner: dict[Hashable, list[float]], loser: dict[Hashable, list[float]],
           w: Mapping[Hashable, float]) -> tuple[float, float, float]:
    """(difference, its standard error, Welch-Satterthwaite dof) over the strata both arms have, weighted by ``w``
    (:func:`_weights`); NaN se without spread."""
    total = sum(w.values())
    diff = sum(w[k] * (statistics.fmean(winner[k]) - statistics.fmean(loser[k])) for k in w) / total
    if any(len(winner[k]) < 2 or len(loser[k]) < 2 for k in w):
        return diff, math.nan, math.nan
    parts = [((w[k] / total) ** 2 * statistics.variance(arm[k]) / len(arm[k]), len(arm[k]) - 1) for k in w
             for arm in (winner, loser)]
    var = sum(p for p, _ in parts)
    if var == 0:
        return diff, 0.0, math.inf
    dof = var ** 2 / sum(p ** 2 / d for p, d in parts)
    return diff, math.sqrt(var), dof


def _pooled_std(*arms: dict[Hashable, list[float]]) -> float:
    num = sum((len(v) - 1) * statistics.variance(v) for arm in arms for v in arm.values() if len(v) > 1)
    dof = sum(len(v) - 1 for arm in arms for v in arm.values() if len(v) > 1)
    return math.sqrt(num / dof) if dof else math.nan


def _t_quantile(p: float, dof: float) -> float:
    """Student's t quantile (``scipy.stats.t.ppf``)."""
    from scipy.special import stdtrit

    return float(stdtrit(dof, p))


def _t_sf(x: float, dof: float) -> float:
    """Student's t upper tail (``scipy.stats.t.sf``)."""
    from scipy.special import stdtr

    return float(stdtr(dof, -x))


def _mdd(sigma: float, n: int, strata: int, alpha: float) -> float:
    """The difference decided with 80 % power by n seeds per cell per arm, at seed std ``sigma``."""
    if n < 2 or not math.isfinite(sigma):
        return math.nan
    dof = strata * (2 * n - 2)
    se = sigma * math.sqrt(2.0 / (n * strata))
    return (_t_quantile(1 - alpha / 2, dof) + _t_quantile(POWER, dof)) * se


def _prob_improvement(winner: dict[Hashable, list[float]], loser: dict[Hashable, list[float]]) -> float:
    """The Mann-Whitney U statistic over n*m (``scipy.stats.mannwhitneyu``'s, counted directly), per stratum, averaged."""
    keys = [k for k in winner if k in loser and winner[k] and loser[k]]
    shares = [statistics.fmean((x > y) + 0.5 * (x == y) for x in winner[k] for y in loser[k]) for k in keys]
    return statistics.fmean(shares) if shares else math.nan


def _seeds_needed(sigma: float, diff: float, strata: int, alpha: float) -> int | None:
    """The fewest seeds per cell whose MDD is at most ``diff`` (the MDD falls with n: a binary search)."""
    lo, hi = 2, MAX_SEEDS_SEARCHED
    if not math.isfinite(sigma) or _mdd(sigma, hi, strata, alpha) > diff:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _mdd(sigma, mid, strata, alpha) <= diff else (mid + 1, hi)
    return lo


def compare(a_name: str, a: Samples, b_name: str, b: Samples, *, alpha: float = ALPHA,
            max_seeds: int | None = None, details: bool = True) -> Verdict:
    """One comparison at level ``1 - alpha``; the arm with the higher mean is the winner.

    Args:
        a_name, b_name: the arms' names.
        a, b: each arm's final metric per seed (higher is better), one list, or lists by stratum
            (only strata both arms have are compared).
        alpha: the two-sided error rate of this one comparison (Holm's step level within an axis).
        max_seeds: the most seeds per cell the study may run (for the MDD at that count).
        details: False skips the MDD and the seeds needed (Holm's first pass needs only the p-values).
    """
    sa, sb = _strata(a), _strata(b)
    shared = [k for k in sa if k in sb and sa[k] and sb[k]]
    if not shared:
        raise ValueError(f"{a_name!r} and {b_name!r} have no stratum with finite values in common")
    sa, sb = {k: sa[k] for k in shared}, {k: sb[k] for k in shared}
    w = _weights(sa, sb)
    mean_a = sum(w[k] * statistics.fmean(sa[k]) for k in w) / sum(w.values())
    mean_b = sum(w[k] * statistics.fmean(sb[k]) for k in w) / sum(w.values())
    if mean_b > mean_a:
        a_name, b_name, sa, sb, mean_a, mean_b = b_name, a_name, sb, sa, mean_b, mean_a
    n_a, n_b = sum(map(len, sa.values())), sum(map(len, sb.values()))
    diff, se, dof = _welch(sa, sb, _weights(sa, sb))
    diff = max(diff, 0.0)
    level, poi = 1 - alpha, _prob_improvement(sa, sb)
    spread = _pooled_std(sa, sb)
    common = dict(winner=a_name, loser=b_name, winner_mean=mean_a, loser_mean=mean_b, winner_n=n_a, loser_n=n_b,
                  diff=diff, level=level, prob_improvement=poi, max_seeds=max_seeds, strata=len(shared), spread=spread)
    if diff == 0:
        return Verdict(low=math.nan, high=math.nan, p_value=1.0, state=TIE, **common)
    if not math.isfinite(se):
        return Verdict(low=math.nan, high=math.nan, p_value=1.0, state=NO_SPREAD, **common)
    if se == 0:  # identical seeds within each arm, different means: the gap is exact
        return Verdict(low=diff, high=diff, p_value=0.0, state=DECIDED, mdd=0.0, mdd_max=0.0, seeds_needed=None,
                       **common)
    half = _t_quantile(1 - alpha / 2, dof) * se
    p = 2 * _t_sf(diff / se, dof)
    low, high = diff - half, diff + half
    per_cell = min(min(map(len, sa.values())), min(map(len, sb.values())))
    mdd = _mdd(spread, per_cell, len(shared), alpha) if details else math.nan
    mdd_max = _mdd(spread, max_seeds, len(shared), alpha) if max_seeds and details else math.nan
    needed = _seeds_needed(spread, diff, len(shared), alpha) if details else None
    state = DECIDED if low > 0 else UNDECIDED
    return Verdict(low=low, high=high, p_value=p, state=state, mdd=mdd, mdd_max=mdd_max, seeds_needed=needed,
                   **common)


@dataclass(frozen=True)
class AxisVerdict:
    """An axis judged: its leader against every other value, Holm-corrected.

    ``comparisons`` are ordered as the values' means (the runner-up first). ``contenders`` are the
    values still in contention with the leader (undecided or without spread), the leader included
    when there is any; a value decided-worse is out.
    """

    axis: str
    leader: str
    comparisons: list[Verdict] = field(default_factory=list)

    @property
    def decided(self) -> bool:
        return bool(self.comparisons) and all(c.state == DECIDED for c in self.comparisons)

    @property
    def state(self) -> str:
        """``decided`` when the leader beats every other value; else the runner-up's state."""
        if self.decided:
            return DECIDED
        open_ = [c for c in self.comparisons if c.state != DECIDED]
        return open_[0].state if open_ else UNDECIDED

    @property
    def contenders(self) -> list[str]:
        rivals = [c.loser for c in self.comparisons if c.state != DECIDED]
        return [self.leader, *rivals] if rivals else []

    @property
    def runner_up(self) -> Verdict | None:
        return self.comparisons[0] if self.comparisons else None


def judge_family(reference: str, samples: Samples, rivals: Mapping[str, Samples], *, alpha: float = ALPHA,
                 max_seeds: int | None = None) -> list[Verdict]:
    """``reference`` against each rival, Holm-corrected over the family (:func:`holm_levels`); the verdicts in
    ``rivals``' order."""
    p_values = {r: compare(reference, samples, r, s, alpha=alpha, details=False).p_value for r, s in rivals.items()}
    levels = holm_levels(p_values, alpha)
    out = []
    for r, s in rivals.items():
        level, passed = levels[r]
        v = compare(reference, samples, r, s, alpha=level, max_seeds=max_seeds)
        out.append(v if passed or v.state != DECIDED else _undecided(v))
    return out


def mean_of(samples: Samples) -> float:
    """The (stratum-balanced) mean of an arm's finite values; -inf when it has none."""
    strata = [v for v in _strata(samples).values() if v]
    return statistics.fmean(statistics.fmean(v) for v in strata) if strata else -math.inf


def judge_axis(axis: str, values: Mapping[str, Samples], *, alpha: float = ALPHA,
               max_seeds: int | None = None) -> AxisVerdict:
    """The leader of an axis (highest mean) against each other value, Holm-corrected over every pair of values.

    The leader is the maximum of noisy means, picked after looking: Holm over its own comparisons alone
    would let a null axis of three or more values "decide" more often than alpha (measured: 7 % at 5 %).
    Holm runs over all k(k-1)/2 pairs instead, and each of the leader's comparisons is judged at the level
    its pair reached in that family; with two values this is the one 95 % interval.

    Args:
        axis: the axis' name (``finetune.norm``).
        values: value -> its runs' final metric per seed (a list, or lists by stratum: the other
            axes' settings, so that only runs that differ in this axis alone are compared).
        alpha: the family's error rate.
        max_seeds: the most seeds per cell, for the verdicts' MDD at that count.
    """
    if len(values) < 2:
        raise ValueError(f"{axis}: an axis needs two values to compare, got {sorted(values)}")
    order = sorted(values, key=lambda v: -mean_of(values[v]))
    leader = order[0]
    pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
    p_values = {}
    for a, b in pairs:
        try:
            p_values[(a, b)] = compare(a, values[a], b, values[b], alpha=alpha, details=False).p_value
        except ValueError:  # two values never run under one setting of the other axes: not a pair of this family
            continue
    levels = holm_levels(p_values, alpha)
    verdicts = []
    for rival in order[1:]:
        level, passed = levels.get((leader, rival), (alpha, False))
        v = compare(leader, values[leader], rival, values[rival], alpha=level, max_seeds=max_seeds)
        verdicts.append(v if passed or v.state != DECIDED else _undecided(v))
    return AxisVerdict(axis, leader, verdicts)


def holm_levels(p_values: Mapping[Any, float], alpha: float) -> dict[Any, tuple[float, bool]]:
    """Holm's step-down levels: key -> (the level its test was judged at, whether it was rejected). By increasing
    p, step j (0-based) of m is judged at alpha / (m - j); from the first failure on, every later test keeps that
    failing step's level (so an interval printed at it includes 0 exactly when the test was not rejected)."""
    m = len(p_values)
    out: dict[Any, tuple[float, bool]] = {}
    failed_at: float | None = None
    for j, key in enumerate(sorted(p_values, key=lambda k: p_values[k])):
        level = alpha / (m - j) if failed_at is None else failed_at
        passed = failed_at is None and p_values[key] < level
        if not passed and failed_at is None:
            failed_at = level
        out[key] = (level, passed)
    return out


def _undecided(v: Verdict) -> Verdict:
    """A comparison Holm stops before: its interval excludes 0 at its own level but an earlier step failed."""
    return dataclasses.replace(v, state=UNDECIDED)


# Pocock's critical values c(K) for two-sided 0.05 overall over K equally spaced looks (Jennison & Turnbull 2000,
# "Group Sequential Methods with Applications to Clinical Trials", Table 2.1); the per-look level is 2 (1 - Phi(c)).
POCOCK_C = {1: 1.960, 2: 2.178, 3: 2.289, 4: 2.361, 5: 2.413, 6: 2.453, 7: 2.485, 8: 2.512, 9: 2.535, 10: 2.555}


def sequential_alpha(looks: int) -> float:
    """The per-look level that keeps the overall false-win rate at 0.05 over ``looks`` looks at growing data
    (Pocock 1977); past 10 looks 0.05 / looks (Bonferroni, conservative). Adaptive seeds judge at it."""
    from scipy.special import ndtr

    if looks <= 1:
        return ALPHA
    if looks in POCOCK_C:
        return float(2 * ndtr(-POCOCK_C[looks]))
    return ALPHA / looks


def explained(states: Sequence[str] = STATES) -> list[str]:
    """``decided: ...`` lines: what each verdict word means (README, ``ablate report``)."""
    return [f"{s}: {EXPLAINED[s]}" for s in states]
