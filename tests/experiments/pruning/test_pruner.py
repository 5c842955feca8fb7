"""Collapse pruner and the pruner of each stage.

Synthetic per-epoch metric curves (tests/experiments/curves.py) go through real Optuna studies,
in memory and in a sqlite file. The Ray Tune scheduler is tested in test_scheduler.py.
"""

from __future__ import annotations

from typing import Callable

import optuna
import pytest
from optuna.pruners import MedianPruner, NopPruner, PercentilePruner
from optuna.trial import TrialState

from experiments.pruning.pruner import (
    CollapsePruner,
    make_pruner,
    report_signals,
    signals_by_step,
    validate_pruning_settings,
)
from tests.experiments.curves import HEALTHY_STD, LN_K, K, Curve, collapse, healthy, metrics, queue_transient

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_curve(study: optuna.Study, curve: Curve, epochs: int = 12, params: dict | None = None, **report_kw):
    """Feed a curve to a fresh trial of `study` like an objective would; the prune epoch or None."""
    trial = study.ask()
    for name, value in (params if params is not None else {"prototypes": K}).items():
        trial.suggest_int(name, value, value)
    for epoch in range(1, epochs + 1):
        report_signals(trial, curve(epoch), epoch, **report_kw)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return epoch, study.trials[trial.number]
    study.tell(trial, trial.study.trials[trial.number].intermediate_values[epochs])
    return None, study.trials[trial.number]


@pytest.fixture(params=["memory", "sqlite"])
def make_study(request, tmp_path):
    """Studies with a given pruner, in memory or in a sqlite file."""
    url = None if request.param == "memory" else f"sqlite:///{tmp_path / 'optuna.db'}"

    def make(pruner=None) -> optuna.Study:
        return optuna.create_study(storage=url, pruner=pruner or CollapsePruner(), direction="minimize")

    return make


# ---------------------------------------------------------------------------
# CollapsePruner through a real study
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("at", [3, 4, 7])
def test_collapse_pruned_within_patience_of_entering_the_band(make_study, at):
    pruner = CollapsePruner()
    epoch, frozen = run_curve(make_study(pruner), collapse(at=at))
    # Warmup is 2 epochs, so from epoch 3 on the streak counts; patience = 4 reports.
    assert epoch == at + 4 - 1
    assert frozen.state == TrialState.PRUNED
    decision = pruner.decide(frozen)
    assert decision.prune and decision.streak == tuple(range(at, at + 4))


@pytest.mark.parametrize("patience", [1, 2, 6])
def test_patience_sets_the_prune_epoch(make_study, patience):
    epoch, _ = run_curve(make_study(CollapsePruner(patience=patience)), collapse(at=5), epochs=15)
    assert epoch == 5 + patience - 1


@pytest.mark.parametrize("length", [2, 3])
def test_queue_transient_survives_with_defaults(make_study, length):
    pruner = CollapsePruner()
    epoch, frozen = run_curve(make_study(pruner), queue_transient(start=5, length=length), epochs=14)
    assert epoch is None and frozen.state == TrialState.COMPLETE
    assert "no prune at epoch 14" in pruner.explain(frozen)


def test_transient_as_long_as_patience_is_indistinguishable_from_collapse(make_study):
    # The boundary the default patience is sized against: 4 flat epochs at ln K are pruned.
    epoch, _ = run_curve(make_study(), queue_transient(start=5, length=4), epochs=14)
    assert epoch == 8


def test_healthy_curve_not_pruned(make_study):
    epoch, frozen = run_curve(make_study(), healthy, epochs=20)
    assert epoch is None and frozen.state == TrialState.COMPLETE


def test_a_run_descending_from_above_ln_k_is_not_pruned(make_study):
    # A fresh run often starts above ln K (confident, wrong predictions: 1.30 on the sample data)
    # and crosses the band for several epochs; a collapsed run instead sits flat at ln K.
    ratios = [1.30, 1.20, 1.12, 1.06, 1.03, 1.01, 0.995, 0.97, 0.9, 0.85, 0.8, 0.75]
    epoch, _ = run_curve(make_study(), lambda e: metrics(ratios[e - 1]), epochs=len(ratios))
    assert epoch is None
    # a slow run hovering above the band (as tiny runs on the sample data do) is not collapse either
    slow = [1.6, 1.3, 1.1, 1.08, 1.075, 1.07, 1.068, 1.066, 1.065, 1.064]
    assert run_curve(make_study(), lambda e: metrics(slow[e - 1]), epochs=len(slow))[0] is None
    # ...whereas the same start followed by a flat line at ln K is pruned
    flat = ratios[:5] + [1.0] * 7
    assert run_curve(make_study(), lambda e: metrics(flat[e - 1]), epochs=len(flat))[0] is not None


def test_warmup_protects_the_initial_epochs_at_ln_k(make_study):
    # healthy() sits in the band at epochs 1-2: without warmup, patience 2 prunes it.
    assert run_curve(make_study(CollapsePruner(warmup_epochs=0, patience=2)), healthy)[0] == 2
    assert run_curve(make_study(CollapsePruner(warmup_epochs=2, patience=2)), healthy)[0] is None


@pytest.mark.parametrize(
    ("epoch", "key", "value"),
    [(1, "swav/loss", float("nan")), (5, "swav/loss", float("inf")), (6, "swav/embedding_std", float("nan"))],
)
def test_non_finite_prunes_at_once(make_study, epoch, key, value):
    pruner = CollapsePruner()

    def curve(e: int) -> dict[str, float]:
        m = healthy(e)
        if e == epoch:
            m[key] = value
            if key == "swav/loss":
                m["swav/loss_over_ln_k"] = value / LN_K
        return m

    pruned_at, frozen = run_curve(make_study(pruner), curve)
    assert pruned_at == epoch  # even during warmup (epoch 1)
    assert "non-finite" in pruner.explain(frozen) and key in pruner.explain(frozen)


def test_same_absolute_loss_depends_on_each_trials_k(make_study):
    study = make_study()

    def flat_loss(epoch: int) -> dict[str, float]:
        return {"swav/loss": 6.9, "swav/embedding_std": HEALTHY_STD, "swav/prototypes_used": 500}

    # The intermediate value is the raw loss here: the ratio is the pruner's own loss / ln K.
    small, frozen_small = run_curve(study, flat_loss, params={"prototypes": 1000}, metric_key="swav/loss")
    large, frozen_large = run_curve(study, flat_loss, params={"prototypes": 3000}, metric_key="swav/loss")
    assert small == 2 + 4  # 6.9 / ln 1000 = 0.9989: collapse from the first judged epoch
    assert large is None  # 6.9 / ln 3000 = 0.862
    assert "loss/ln K = 0.999 within 1 ± 0.01" in study.pruner.explain(frozen_small)
    assert "loss/ln K = 0.862 < 0.99" in study.pruner.explain(frozen_large)


def test_without_k_in_params_the_reported_ratio_is_used(make_study):
    epoch, _ = run_curve(make_study(), collapse(at=4), params={})
    assert epoch == 7


def test_embedding_std_signal_prunes_on_its_own(make_study):
    # Loss below the band and flat (not learning), prototypes healthy, embeddings a point.
    curve = lambda e: metrics(0.80, std=1e-4)  # noqa: E731
    pruner = CollapsePruner()
    epoch, frozen = run_curve(make_study(pruner), curve)
    assert epoch == 6
    reason = pruner.explain(frozen)
    assert "embedding_std 0.0001 < 0.0088" in reason and "loss/ln K" not in reason


@pytest.mark.parametrize(("feat_dim", "pruned"), [(16, True), (128, True), (2048, False)])
def test_embedding_std_floor_scales_with_feat_dim(make_study, feat_dim, pruned):
    # std 0.005 vs floor 0.1 / sqrt(d): 0.025 (d=16), 0.0088 (d=128), 0.0022 (d=2048).
    curve = lambda e: metrics(0.80, std=0.005)  # noqa: E731
    epoch, _ = run_curve(make_study(), curve, params={"prototypes": K, "feat_dim": feat_dim})
    assert (epoch is not None) == pruned


def test_prototypes_used_signal_prunes_on_its_own(make_study):
    curve = lambda e: metrics(0.80, used=1)  # noqa: E731
    pruner = CollapsePruner()
    epoch, frozen = run_curve(make_study(pruner), curve)
    assert epoch == 6
    assert "prototypes_used 1 <= 1" in pruner.explain(frozen)
    # min_prototypes_used=0 switches the signal off.
    assert run_curve(make_study(CollapsePruner(min_prototypes_used=0)), curve)[0] is None


def test_a_falling_loss_below_the_band_resets_whatever_the_other_signals_say(make_study):
    # Embeddings look collapsed but the loss keeps falling: the run is learning.
    curve = lambda e: metrics(0.95 - 0.02 * e, std=1e-4)  # noqa: E731
    assert run_curve(make_study(), curve)[0] is None
    # The same std with a loss that stopped falling is pruned.
    flat_after_5 = lambda e: metrics(0.95 - 0.02 * min(e, 5), std=1e-4)  # noqa: E731
    assert run_curve(make_study(), flat_after_5)[0] == 9


def test_reason_names_the_signals_and_epochs(make_study):
    pruner = CollapsePruner()
    epoch, frozen = run_curve(make_study(pruner), collapse(at=3, std=1e-4, used=1))
    reason = pruner.explain(frozen)
    assert epoch == 6
    assert reason.startswith("collapse for 4 consecutive epochs (epochs 3-6): loss/ln K = 1.000 within 1 ± 0.01")
    assert "embedding_std 0.0001 < 0.0088" in reason and "prototypes_used 1 <= 1" in reason


def test_signals_are_stored_per_step_as_user_attrs(make_study):
    study = make_study()
    _, frozen = run_curve(study, healthy, epochs=3)
    history = signals_by_step(frozen)
    assert list(history) == [1, 2, 3]
    assert history[3]["swav/embedding_std"] == pytest.approx(HEALTHY_STD)
    assert "swav/ln_k" not in history[3]  # not a collapse signal
    assert frozen.intermediate_values == {e: pytest.approx(healthy(e)["swav/loss_over_ln_k"]) for e in (1, 2, 3)}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"patience": 0}, "patience"),
        ({"patience": 2.5}, "patience"),
        ({"delta": 1.0}, "delta"),
        ({"delta": -0.1}, "delta"),
        ({"std_floor": -1.0}, "std_floor"),
        ({"std_floor": "0.1"}, "std_floor"),
        ({"min_prototypes_used": True}, "min_prototypes_used"),
    ],
)
def test_collapse_pruner_validates_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}="):
        CollapsePruner(**kwargs)


# ---------------------------------------------------------------------------
# Pruner selection (the `pruning:` section's checks: test_settings.py)
# ---------------------------------------------------------------------------


def test_make_pruner_per_stage():
    pretrain = make_pruner("pretrain", {"patience": 3})
    assert isinstance(pretrain, CollapsePruner) and pretrain._patience == 3
    assert isinstance(make_pruner("pretrain", {"enabled": False}), NopPruner)
    assert isinstance(make_pruner("finetune", {}), NopPruner)  # off by default
    assert isinstance(make_pruner("finetune", {"finetune": {"kind": "median"}}), MedianPruner)
    percentile = make_pruner("finetune", {"finetune": {"kind": "percentile", "percentile": 40}})
    assert type(percentile) is PercentilePruner and percentile._percentile == 40.0
    with pytest.raises(ValueError, match="stage='pretraining'"):
        make_pruner("pretraining", {})


def with_knn(epoch: int, every: int, knn: "Callable[[int], float]", random: float = 0.40, ratio: float = 0.80):
    """A healthy-loss epoch whose kNN monitor ran at epochs divisible by ``every`` (and reports its random figure)."""
    m = metrics(ratio)
    m["swav/knn_top1_random"] = random
    if epoch % every == 0:
        m["swav/knn_top1"] = knn(epoch)
    return m


def test_knn_at_the_random_level_prunes_only_when_switched_on(make_study):
    # The loss is below the band and flat; the kNN figure sits at the random trunk's (measured every 2 epochs).
    curve = lambda e: with_knn(e, 2, lambda e: 0.41)  # noqa: E731
    assert run_curve(make_study(), curve)[0] is None  # off by default
    pruner = CollapsePruner(knn_margin=0.02)
    epoch, frozen = run_curve(make_study(pruner), curve)
    assert epoch == 6  # carried forward between measurements: epochs 3-6 all show it
    assert "kNN top-1 0.410 <= random trunk 0.400 + 0.02" in pruner.explain(frozen)


def test_a_run_whose_knn_improves_is_never_pruned(make_study):
    # Still below random + margin, but climbing at each measurement: the run is learning.
    climbing = lambda e: with_knn(e, 1, lambda e: 0.20 + 0.01 * e)  # noqa: E731
    assert run_curve(make_study(CollapsePruner(knn_margin=0.5)), climbing)[0] is None
    # The same once it stops climbing is pruned after patience.
    stalled = lambda e: with_knn(e, 1, lambda e: 0.20 + 0.01 * min(e, 4))  # noqa: E731
    assert run_curve(make_study(CollapsePruner(knn_margin=0.5)), stalled)[0] == 8
    # Above the random level by more than the margin: no signal at all.
    learned = lambda e: with_knn(e, 1, lambda e: 0.60)  # noqa: E731
    assert run_curve(make_study(CollapsePruner(knn_margin=0.05)), learned)[0] is None


@pytest.mark.parametrize("margin", [-0.1, 1.0, "0.1", True])
def test_knn_margin_is_validated(margin):
    with pytest.raises(ValueError, match="knn_margin"):
        CollapsePruner(knn_margin=margin)
    with pytest.raises(ValueError, match="pruning.knn_margin"):
        validate_pruning_settings({"knn_margin": margin})


def test_the_trainers_collapse_label_is_a_signal(make_study):
    # A flat loss below the band with healthy std: nothing fires until the trainer labels the run collapsed
    # (here: the trunk's rank under a quarter of the random trunks'), then the label prunes after patience.
    def curve(epoch: int) -> dict[str, float]:
        m = metrics(0.9)
        if epoch >= 5:
            m.update({"swav/collapsed": 1.0, "swav/trunk_rank": 10.0, "swav/trunk_rank_random": 110.0})
        return m

    pruner = CollapsePruner()
    epoch, frozen = run_curve(make_study(pruner), curve)
    assert epoch == 8  # epochs 5-8: patience 4
    assert "collapsed: trunk features collapsed in dimension (effective rank 10.0" in pruner.explain(frozen)
    assert run_curve(make_study(), lambda e: metrics(0.9))[0] is None  # without the label: never
