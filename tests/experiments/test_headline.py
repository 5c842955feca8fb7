"""The headline: best trial, pretrained vs baseline, each axis's winner, its margin and the noise verdict."""

from __future__ import annotations

import math
import statistics

import pytest

from experiments.headline import TrialResult, compute_headline

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
    assert b is not None and b.winner.startswith("baseline: scratch") and b.margin == pytest.approx(0.07)
    assert b.inside_noise and math.isnan(b.spread)  # one seed: no spread to judge by
    by_axis = {c.what: c for c in h.axes}
    assert (by_axis["pretrain.prototypes"].winner, by_axis["pretrain.prototypes"].loser) == ("30", "100")
    # the norm is compared on the one backbone that has both norms, not across backbones
    assert by_axis["finetune.norm"].winner == "bn" and by_axis["finetune.norm"].margin == pytest.approx(0.05)
    assert h.not_comparable == ["finetune.lr_scheme"]  # only the baseline uses "uniform"
    text = h.text()
    assert text.splitlines()[0] == "headline (det/AP50, means over seeds):"
    assert "best pretrained vs baseline: res18_ep2_p30 · bn · mlp · 357 0.300 vs scratch · bn · mlp · uniform 0.370 " \
           "(-0.070 AP@0.5; 1 seed; no spread over seeds to judge it: not evidence)" in text
    assert "prototypes: 30 > 100 by 0.050 AP@0.5" in text and "norm: bn > frozen_bn by 0.050" in text
    assert "finetune.lr_scheme: not compared" in text
    assert h.one_line().startswith("best: scratch · bn · mlp · uniform · seed0 AP@0.5 0.370; best SwAV 0.300 vs "
                                   "scratch 0.370 (-0.070, inside noise)")


@pytest.mark.parametrize("gap, noise, inside", [(0.10, 0.01, False), (0.01, 0.05, True)])
def test_margin_against_the_seeds_spread(gap: float, noise: float, inside: bool) -> None:
    h = compute_headline(smoke_like(4, gap, noise), AXES)
    norm = next(c for c in h.axes if c.what == "finetune.norm")
    # every cell's seeds are +-noise around its mean: the pooled sample std over four seeds
    assert norm.spread == pytest.approx(statistics.stdev([-noise, noise, -noise, noise]))
    assert norm.winner_n == norm.loser_n == 4 and norm.margin == pytest.approx(gap)
    assert norm.inside_noise is inside
    line = next(ln for ln in h.lines() if ln.startswith("norm:"))
    assert ("INSIDE the seeds' spread" in line) is inside and ("beyond the seeds' spread" in line) is not inside


def test_ties_and_empty() -> None:
    tied = [trial("res18_ep2_p30", "30", "bn", 0, 0.0), trial("res18_ep2_p100", "100", "bn", 0, 0.0)]
    h = compute_headline(tied, AXES)
    assert any(ln.startswith("prototypes: 100 = 30 (tie") or ln.startswith("prototypes: 30 = 100 (tie")
               for ln in h.lines())
    assert h.baseline is None  # no scratch run: nothing to compare the pretrained ones with
    empty = compute_headline([], AXES)
    assert empty.best is None and "no finished fine-tuning trial" in empty.text()
    nan_only = compute_headline([trial("scratch", "none", "bn", 0, math.nan)], AXES)
    assert nan_only.best is None
