"""The one judge: Welch's interval, Holm within an axis, the states, the probability of improvement, strata."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats

from experiments.results.verdict import (
    DECIDED, NO_SPREAD, TIE, UNDECIDED, compare, explained, judge_axis, judge_family,
)


def test_one_stratum_is_welchs_t_test() -> None:
    a, b = [0.33, 0.35, 0.34, 0.36, 0.32], [0.30, 0.31, 0.32, 0.29, 0.31]
    v = compare("frozen_bn", a, "bn", b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert v.p_value == pytest.approx(ref.pvalue) and (v.low, v.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert v.state == DECIDED and v.winner == "frozen_bn" and v.diff == pytest.approx(0.034)
    assert v.prob_improvement == pytest.approx(stats.mannwhitneyu(a, b).statistic / 25)
    assert v.text("AP@0.5") == "frozen_bn > bn by 0.034 AP@0.5 [0.014, 0.054], 5 seeds each, decided"


def test_states_no_spread_tie_and_the_loser_named_second() -> None:
    one = compare("a", [0.30, 0.31, 0.32], "b", [0.40])
    assert (one.winner, one.state, one.winner_n, one.loser_n) == ("b", NO_SPREAD, 1, 3)
    assert one.text() == "b > a by 0.090 [no interval], 1 vs 3 seeds, no spread"
    tie = compare("a", [0.3, 0.4], "b", [0.4, 0.3])
    assert tie.state == TIE and tie.text().startswith("a = b (tie at 0.350")
    exact = compare("a", [0.5, 0.5], "b", [0.4, 0.4])  # no seed noise at all: the gap is exact
    assert exact.state == DECIDED and exact.low == exact.high == pytest.approx(0.1)


def test_undecided_says_how_many_seeds_would_decide_it() -> None:
    v = compare("a", [0.33, 0.35, 0.30], "b", [0.30, 0.31, 0.32], max_seeds=8)
    assert v.state == UNDECIDED and v.low < 0 < v.high
    assert v.seeds_needed is not None and v.seeds_needed > 3 and v.mdd > v.diff and v.mdd_max < v.mdd
    assert f"~{v.seeds_needed} seeds per cell would decide it" in v.text()
    assert f"more than the space's max of 8 (MDD {v.mdd:.3f} now, {v.mdd_max:.3f} at 8)" in v.text()


def test_strata_compare_only_runs_that_differ_in_the_axis_alone() -> None:
    # a large offset between the strata (another axis' effect) would swamp an unstratified test
    a = {"bn": [0.50, 0.51, 0.52], "gn": [0.20, 0.21, 0.22]}
    b = {"bn": [0.48, 0.49, 0.50], "gn": [0.18, 0.19, 0.20], "only_b": [0.9, 0.9]}
    v = compare("x", a, "y", b)
    assert v.strata == 2 and v.winner_n == v.loser_n == 6 and v.diff == pytest.approx(0.02) and v.state == DECIDED
    pooled = compare("x", [*a["bn"], *a["gn"]], "y", [*b["bn"], *b["gn"]])
    assert pooled.state == UNDECIDED  # what ignoring the other axis would say


def test_holm_corrects_the_leader_against_several_values() -> None:
    values = {"30": [0.40, 0.41, 0.42], "100": [0.30, 0.31, 0.29], "300": [0.39, 0.40, 0.41]}
    axis = judge_axis("pretrain.prototypes", values)
    assert axis.leader == "30" and [c.loser for c in axis.comparisons] == ["300", "100"]
    close, far = axis.comparisons
    # Holm over the axis's three pairs (the leader is picked after looking): the first step is alpha / 3
    assert far.state == DECIDED and far.level == pytest.approx(1 - 0.05 / 3)
    assert "(98.3 %)" in far.text()
    assert close.state == UNDECIDED and axis.state == UNDECIDED and axis.contenders == ["30", "300"]
    # each decided comparison's printed interval excludes 0, each undecided one's includes it
    assert all((c.low > 0) is (c.state == DECIDED) for c in axis.comparisons)


def test_holm_stops_at_the_first_failure() -> None:
    ref = [1.0, 1.1, 0.9, 1.0]
    rivals = {"weak": [0.0, 0.5, 1.5, 0.2], "far": [0.0, 0.1, -0.1, 0.0]}
    verdicts = judge_family("ref", ref, rivals)
    assert [v.state for v in verdicts] == [UNDECIDED, DECIDED]


def test_picking_the_best_of_many_equal_values_rarely_makes_a_false_win() -> None:
    """Five values with the same true mean, 3 seeds each: the leader is the max of noisy means. Holm keeps the
    axis's false wins near the 5 % it promises; the old rule (margin > the pooled std) made twice as many."""
    rng = random.Random(0)
    false_wins = old_rule = 0
    trials = 400
    for _ in range(trials):
        values = {str(i): [rng.gauss(0.3, 0.02) for _ in range(3)] for i in range(5)}
        axis = judge_axis("x", values)
        false_wins += any(c.state == DECIDED for c in axis.comparisons)
        runner = axis.runner_up
        old_rule += runner.diff > runner.spread
    assert false_wins / trials <= 0.08
    assert old_rule / trials > 0.1 > 0.08


def test_every_state_is_explained() -> None:
    lines = explained()
    assert [ln.split(":")[0] for ln in lines] == [DECIDED, UNDECIDED, NO_SPREAD, TIE]
    assert all(ln.count(". ") >= 1 for ln in lines[:3])


def test_no_common_stratum_is_an_error() -> None:
    with pytest.raises(ValueError, match="no stratum"):
        compare("a", {"x": [1.0]}, "b", {"y": [2.0]})
    assert math.isnan(compare("a", [1.0, math.nan], "b", [0.5]).low)


def test_one_judge_speaks_for_the_headline_report_demo_and_fidelity_bench(tmp_path, new_store) -> None:
    """The same runs get the same verdict everywhere; here one the old pooled-std rule called a win."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from bench import fidelity
    from experiments.results import report as rep
    from experiments.launch.command import demo_verdict
    from experiments.results.headline import study_headline
    from experiments.store.tracking import Tracker
    from trainers.vocabulary import TAG_HASH, TAG_NAME, TAG_PRUNED, TAG_STAGE
    from tests.experiments.results.report.helpers import BACKBONES, finetune

    pretrained, scratch = (0.30, 0.36, 0.33), (0.28, 0.30, 0.29)
    uri, study = new_store(tmp_path), "judged"
    tracker = Tracker(uri, study)
    parent = tracker.create_run("launch", {TAG_STAGE: "launch"})
    tracker.log_params_tags(parent, params={"axes.pretrain": "prototypes", "axes.finetune": "norm"})
    tracker.finish(parent)
    pre = tracker.create_run(BACKBONES["p30"], {TAG_STAGE: "pretrain", TAG_NAME: BACKBONES["p30"], TAG_HASH: "pre",
                                                TAG_PRUNED: "false"}, parent_run_id=parent)
    tracker.log_params_tags(pre, params={"pretrain.prototypes": "30", "pretrain.arch": "resnet18"})
    tracker.finish(pre)
    for seed, (p, s) in enumerate(zip(pretrained, scratch)):
        finetune(tracker, parent, {"p30": pre}, "p30", "frozen_bn", seed, (p,) * 5)
        finetune(tracker, parent, {"p30": pre}, "scratch", "frozen_bn", seed, (s,) * 5)

    client = MlflowClient(tracking_uri=uri)
    b = study_headline(client, client.get_experiment_by_name(study).experiment_id).baseline
    assert b.winner.startswith("pretrained") and b.diff == pytest.approx(0.04)
    assert b.diff > b.spread and b.state == UNDECIDED and b.low < 0  # the pooled-std rule's "win"; not decided
    said = b.text("AP@0.5")
    import json

    assert f"best pretrained vs baseline: {said}" in json.loads(rep.report(uri, study, fmt="json"))["headline"]
    demo = demo_verdict(SimpleNamespace(parent_run_id=parent, study=study, outcomes=[]), uri)
    assert demo[0] == f"pretrained leads: {said}" and "undecided" in demo[-1]
    bench = fidelity.judge([fidelity.Group("SwAV", fidelity.PRETRAINED, ap50=list(pretrained)),
                            fidelity.Group("scratch", fidelity.BASELINE, ap50=list(scratch))])
    assert not bench.ap_goal
    assert (bench.ap.state, bench.ap.diff, bench.ap.low, bench.ap.high) == (b.state, b.diff, b.low, b.high)
