"""The headline: best trial, pretrained vs baseline, each axis's leader, judged by experiments.results.verdict."""

from __future__ import annotations

import math
import statistics

import pytest

from experiments.results.headline import TrialResult, compute_headline

AXES = ["finetune.backbone", "pretrain.prototypes", "finetune.norm", "finetune.lr_scheme"]


def trial(backbone: str, k: str, norm: str, seed: int, value: float, lr: str = "357") -> TrialResult:
    name = f"{backbone} · {norm} · mlp · {lr} · seed{seed}"
    axes = {"finetune.backbone": backbone, "pretrain.prototypes": k, "finetune.norm": norm, "finetune.lr_scheme": lr}
    return TrialResult(name, f"run-{backbone}-{norm}-{seed}", f"{backbone}|{norm}|{lr}", backbone, axes, value)


def smoke_like(seeds: int, norm_gap: float, noise: float) -> list[TrialResult]:
    """Two backbones (K = 30, 100), two norms on K = 100, the scratch baseline on another lr scheme."""
    out = []
    for s in range(seeds):
        jitter = noise * (1 if s % 2 else -1)
        out += [trial("res18_ep2_p30", "30", "bn", s, 0.30 + jitter),
                trial("res18_ep2_p100", "100", "bn", s, 0.25 + jitter),
                trial("res18_ep2_p100", "100", "frozen_bn", s, 0.25 - norm_gap + jitter),
                trial("scratch", "none", "bn", s, 0.37 + jitter, lr="uniform")]
    return out


def test_one_seed_names_winners_but_says_it_is_not_evidence() -> None:
    h = compute_headline(smoke_like(1, 0.05, 0.0), AXES)
    assert h.best is not None and h.best.backbone == "scratch" and h.best.value == pytest.approx(0.37)
    b = h.baseline
    assert b is not None and b.winner.startswith("baseline scratch") and b.diff == pytest.approx(0.07)
    assert b.state == "no spread" and math.isnan(b.low) and not h.pretrained_wins  # one seed: no spread to judge by
    by_axis = {a.axis: a for a in h.axes}
    assert (by_axis["pretrain.prototypes"].leader, by_axis["pretrain.prototypes"].runner_up.loser) == ("30", "100")
    # the norm is compared on the one backbone that has both norms, not across backbones
    norm = by_axis["finetune.norm"].runner_up
    assert norm.winner == "bn" and norm.diff == pytest.approx(0.05) and norm.winner_n == norm.loser_n == 1
    assert h.not_comparable == ["finetune.lr_scheme"]  # only the baseline uses "uniform"
    text = h.text()
    assert text.splitlines()[0] == "headline (det/AP50, means over seeds):"
    assert ("best pretrained vs baseline: baseline scratch · bn · mlp · uniform > pretrained res18_ep2_p30 · bn · mlp · "
            "357 by 0.070 AP@0.5 [no interval], 1 seed each, no spread") in text
    assert "prototypes: 30 > 100 by 0.050 AP@0.5 [no interval], 1 seed each, no spread" in text
    assert "norm: bn > frozen_bn by 0.050" in text and "finetune.lr_scheme: not compared" in text
    assert h.one_line().startswith("best: scratch · bn · mlp · uniform · seed0 AP@0.5 0.370; best SwAV 0.300 vs "
                                   "scratch 0.370 (-0.070, no spread)")


@pytest.mark.parametrize("gap, noise, state", [(0.10, 0.01, "decided"), (0.01, 0.05, "undecided")])
def test_each_axis_is_judged_by_its_interval(gap: float, noise: float, state: str) -> None:
    h = compute_headline(smoke_like(4, gap, noise), AXES, max_seeds=8)
    norm = next(a for a in h.axes if a.axis == "finetune.norm").runner_up
    # every cell's seeds are +-noise around its mean: the pooled sample std over four seeds
    assert norm.spread == pytest.approx(statistics.stdev([-noise, noise, -noise, noise]))
    assert norm.winner_n == norm.loser_n == 4 and norm.diff == pytest.approx(gap) and norm.state == state
    assert (norm.low > 0) is (state == "decided") and norm.low < gap < norm.high
    line = next(ln for ln in h.lines() if ln.startswith("norm:"))
    assert line.startswith(f"norm: bn > frozen_bn by {gap:.3f} AP@0.5 [") and f"4 seeds each, {state}" in line
    if state == "undecided":
        assert "seeds per cell would" in line and "at 8)" in line  # the MDD at the space's max


def test_a_one_std_margin_over_three_seeds_is_not_a_win() -> None:
    """The old rule (margin > the pooled std of the seeds) called this a win; Welch's interval does not."""
    noise = 0.02
    trials = []
    for s, jitter in enumerate((-noise, 0.0, noise)):
        trials += [trial("res18_ep2_p100", "100", "bn", s, 0.30 + 0.03 + jitter),  # +1.5 std of the seeds
                   trial("res18_ep2_p100", "100", "frozen_bn", s, 0.30 - jitter)]
    norm = compute_headline(trials, AXES).axes[0].runner_up
    assert norm.diff > norm.spread == pytest.approx(noise)  # beyond one std: the pooled-std rule's "win"
    assert norm.state == "undecided" and norm.low < 0 < norm.high


def test_ties_and_empty() -> None:
    tied = [trial("res18_ep2_p30", "30", "bn", 0, 0.0), trial("res18_ep2_p100", "100", "bn", 0, 0.0)]
    h = compute_headline(tied, AXES)
    assert any(ln.startswith("prototypes: 30 = 100 (tie") for ln in h.lines())  # numbers in order
    assert h.baseline is None  # no scratch run: nothing to compare the pretrained ones with
    empty = compute_headline([], AXES)
    assert empty.best is None and "no finished fine-tuning trial" in empty.text()
    nan_only = compute_headline([trial("scratch", "none", "bn", 0, math.nan)], AXES)
    assert nan_only.best is None
