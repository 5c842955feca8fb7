"""Collapse pruner, pruning settings and the Optuna-backed Ray Tune scheduler.

Synthetic per-epoch metric curves go through real Optuna studies (in memory and in a
sqlite file); one test runs them through real Ray Tune trials.
"""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace
from typing import Callable

import optuna
import pytest
from optuna.pruners import MedianPruner, NopPruner, PercentilePruner
from optuna.trial import TrialState

from experiments.pruning import (
    PRUNING_DEFAULTS,
    CollapsePruner,
    OptunaPruningScheduler,
    PruneRecord,
    make_pruner,
    report_signals,
    saved_compute,
    signals_by_step,
    validate_pruning_settings,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

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


@pytest.mark.parametrize("param_name", ["prototypes", "pretrain.prototypes"])
def test_same_absolute_loss_depends_on_each_trials_k(make_study, param_name):
    study = make_study()

    def flat_loss(epoch: int) -> dict[str, float]:
        return {"swav/loss": 6.9, "swav/embedding_std": HEALTHY_STD, "swav/prototypes_used": 500}

    # The intermediate value is the raw loss here: the ratio is the pruner's own loss / ln K.
    small, frozen_small = run_curve(study, flat_loss, params={param_name: 1000}, metric_key="swav/loss")
    large, frozen_large = run_curve(study, flat_loss, params={param_name: 3000}, metric_key="swav/loss")
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
# Settings and pruner selection
# ---------------------------------------------------------------------------


def test_validate_pruning_settings_fills_defaults_without_sharing_them():
    out = validate_pruning_settings({"patience": 6, "finetune": {"kind": "median"}})
    assert out["patience"] == 6 and out["warmup_epochs"] == PRUNING_DEFAULTS["warmup_epochs"]
    assert out["finetune"]["kind"] == "median" and out["finetune"]["n_startup_trials"] == 5
    assert PRUNING_DEFAULTS["finetune"]["kind"] == "none"  # the defaults were not mutated
    assert validate_pruning_settings(None) == PRUNING_DEFAULTS


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"patiense": 3}, "pruning: unknown key 'patiense' (did you mean 'patience'?)"),
        ({"finetune": {"knd": "median"}}, "pruning.finetune: unknown key 'knd' (did you mean 'kind'?)"),
        ({"finetune": {"kind": "medain"}}, "did you mean 'median'?"),
        ({"finetune": "median"}, "pruning.finetune: expected a mapping"),
        ({"finetune": {"percentile": 150}}, "pruning.finetune.percentile=150"),
        ({"finetune": {"n_startup_trials": -1}}, "pruning.finetune.n_startup_trials=-1"),
        ({"enabled": "yes"}, "pruning.enabled='yes'"),
        ({"patience": 0}, "pruning.patience=0"),
        ({"delta": 2}, "pruning.delta=2"),
        ([1, 2], "pruning: expected a mapping"),
    ],
)
def test_validate_pruning_settings_errors(settings, message):
    with pytest.raises(ValueError) as info:
        validate_pruning_settings(settings)
    assert message in str(info.value)


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


def test_saved_compute():
    records = {
        "a": PruneRecord("a", 6, "collapse", {}),
        "b": PruneRecord("b", 10, "collapse", {}),
    }
    out = saved_compute(records, {"a": 200, "b": 100, "healthy": 200})
    assert out == {"epochs_budgeted": 300, "epochs_run": 16, "epochs_saved": 284, "fraction_saved": 284 / 300}
    assert saved_compute([], {})["fraction_saved"] == 0.0
    with pytest.raises(ValueError, match="no budget for pruned trial b"):
        saved_compute(records, {"a": 200})
    with pytest.raises(ValueError, match="outside its budget"):
        saved_compute(records, {"a": 5, "b": 100})


# ---------------------------------------------------------------------------
# The scheduler, driven by hand (no Ray cluster)
# ---------------------------------------------------------------------------


def feed(scheduler, trial, curve: Curve, epochs: int) -> int | None:
    """Drive the scheduler like Ray's controller: results, then completion; the STOP epoch or None."""
    for epoch in range(1, epochs + 1):
        result = {**curve(epoch), "training_iteration": epoch}
        if scheduler.on_trial_result(None, trial, result) == "STOP":
            scheduler.on_trial_complete(None, trial, result)  # Ray calls it after a STOP too
            return epoch
    scheduler.on_trial_complete(None, trial, result)
    return None


def test_scheduler_tells_optuna_and_survives_pickling(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    scheduler = OptunaPruningScheduler(url, "pretrain", CollapsePruner(), param_prefix="pretrain.")
    bad = SimpleNamespace(trial_id="bad", config={"pretrain": {"prototypes": K, "feat_dim": 64}})
    good = SimpleNamespace(trial_id="good", config={"pretrain.prototypes": 3000})

    # Half the collapsed run, then a pickle round trip (what Ray's tuner.pkl does), then the rest,
    # starting with two replayed epochs (a trial restored from an earlier checkpoint).
    curve = collapse(at=3)
    for epoch in range(1, 5):
        assert scheduler.on_trial_result(None, bad, {**curve(epoch), "training_iteration": epoch}) == "CONTINUE"
    scheduler = pickle.loads(pickle.dumps(scheduler))
    assert scheduler._study is None  # reopened lazily
    decisions = []
    for epoch in range(3, 12):
        result = {**curve(epoch), "training_iteration": epoch}
        decisions.append(scheduler.on_trial_result(None, bad, result))
        if decisions[-1] == "STOP":
            scheduler.on_trial_complete(None, bad, result)
            break
    assert decisions == ["CONTINUE"] * 3 + ["STOP"]  # epochs 3, 4 (replays), 5; STOP at 6
    assert feed(scheduler, good, queue_transient(), epochs=12) is None

    record = scheduler.pruned["bad"]
    assert record.epoch == 6 and record.values["swav/loss_over_ln_k"] == pytest.approx(1.0)
    study = optuna.load_study(study_name="pretrain", storage=url)
    by_ray = {t.user_attrs["ablate.ray_trial_id"]: t for t in study.trials}
    assert by_ray["bad"].state == TrialState.PRUNED and by_ray["good"].state == TrialState.COMPLETE
    assert by_ray["bad"].params == {"prototypes": K, "feat_dim": 64}
    assert by_ray["good"].value == pytest.approx(queue_transient()(12)["swav/loss_over_ln_k"])
    assert by_ray["bad"].user_attrs["ablate.prune_reason"] == record.reason
    assert record.reason.startswith("collapse for 4 consecutive epochs (epochs 3-6)")
    assert "good" not in scheduler.pruned
    assert "1 pruned of 2 trials" in scheduler.debug_string()


def test_scheduler_median_pruning_on_ap50_for_finetuning(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    pruner = make_pruner("finetune", {"finetune": {"kind": "median", "n_startup_trials": 1}})
    scheduler = OptunaPruningScheduler(url, "finetune", pruner, metric_key="det/AP50", extra_signal_keys=())

    def detector(ap50_at_eval: float) -> Curve:
        # AP50 only at eval epochs (every second one); det/loss every epoch.
        return lambda e: {"det/loss": 1.0 / e, **({"det/AP50": ap50_at_eval * e} if e % 2 == 0 else {})}

    assert feed(scheduler, SimpleNamespace(trial_id="strong", config={}), detector(0.1), epochs=6) is None
    assert feed(scheduler, SimpleNamespace(trial_id="weak", config={}), detector(0.01), epochs=6) == 2
    assert scheduler.pruned["weak"].reason == "MedianPruner at epoch 2: det/AP50 = 0.02"
    study = optuna.load_study(study_name="finetune", storage=url)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # from the metric
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[0].value == pytest.approx(0.6)


def test_scheduler_errors_and_restores(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    scheduler = OptunaPruningScheduler(url, "s", CollapsePruner())
    crashed = SimpleNamespace(trial_id="crashed", config={"prototypes": K})
    scheduler.on_trial_result(None, crashed, {**healthy(1), "training_iteration": 1})
    scheduler.on_trial_error(None, crashed)
    scheduler.on_trial_error(None, SimpleNamespace(trial_id="never-reported", config={}))

    # A fresh scheduler (a restored driver) re-attaches to the still-running Optuna trial.
    resumed = SimpleNamespace(trial_id="resumed", config={"prototypes": K})
    scheduler.on_trial_result(None, resumed, {**healthy(1), "training_iteration": 1})
    again = OptunaPruningScheduler(url, "s", CollapsePruner())
    assert feed(again, resumed, healthy, epochs=4) is None
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert sorted(signals_by_step(study.trials[1])) == [1, 2, 3, 4]


def _searcher(url: str | None, study_name: str = "tpe", metric: str = "swav/loss_over_ln_k"):
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(
        space={"curve": optuna.distributions.CategoricalDistribution(["collapse", "transient"])},
        metric=metric,
        mode="min",
        study_name=study_name,
        storage=optuna.storages.RDBStorage(url) if url else None,
    )


def test_shared_mode_reports_into_the_searchers_own_trial(tmp_path):
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = _searcher(url)
    # How Tuner wraps a searcher: SearchGenerator(ConcurrencyLimiter(OptunaSearch)).
    controller = SimpleNamespace(search_alg=SearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=2)))
    searcher.suggest("first")
    config = {"curve": searcher.suggest("second")["curve"], "prototypes": K}
    scheduler = OptunaPruningScheduler(url, "tpe", CollapsePruner(), share_optuna_search=True)
    trial = SimpleNamespace(trial_id="second", config=config)
    for epoch in range(1, 7):
        decision = scheduler.on_trial_result(controller, trial, {**collapse(at=3)(epoch), "training_iteration": epoch})
    assert decision == "STOP" and scheduler.optuna_numbers == {"second": 1}
    scheduler.on_trial_complete(controller, trial, {})
    searcher.on_trial_complete("second", {"swav/loss_over_ln_k": 1.0})  # refused: already PRUNED (logged)
    second = optuna.load_study(study_name="tpe", storage=url).trials[1]
    assert second.state == TrialState.PRUNED and second.params == {"curve": config["curve"], "prototypes": K}
    assert sorted(signals_by_step(second)) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("searcher_kw", "message"),
    [
        ({"metric": "swav/loss"}, "must report the same metric"),
        ({"study_name": "other"}, "OptunaSearch uses study 'other'"),
        ({"url": None}, "is not the one OptunaSearch opened"),
    ],
)
def test_shared_mode_refuses_a_searcher_it_cannot_share_with(tmp_path, searcher_kw, message):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="tpe", storage=url)  # so only the searcher's own setting is wrong
    searcher = _searcher(**{"url": url, **searcher_kw})
    searcher.suggest("ray-trial")
    scheduler = OptunaPruningScheduler(url, "tpe", CollapsePruner(), share_optuna_search=True)
    with pytest.raises(RuntimeError, match=message):
        scheduler.on_trial_result(
            SimpleNamespace(search_alg=searcher), SimpleNamespace(trial_id="ray-trial", config={}),
            {**healthy(1), "training_iteration": 1},
        )


def test_shared_mode_without_the_study_or_a_searcher(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    trial = SimpleNamespace(trial_id="t", config={})
    scheduler = OptunaPruningScheduler(url, "tpe", CollapsePruner(), share_optuna_search=True)
    with pytest.raises(RuntimeError, match="needs tune.TuneConfig"):
        scheduler.on_trial_result(SimpleNamespace(search_alg=None), trial, {**healthy(1), "training_iteration": 1})
    with pytest.raises(RuntimeError, match="no Optuna study 'tpe'"):
        _ = OptunaPruningScheduler(url, "tpe", CollapsePruner(), share_optuna_search=True).study


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"storage_url": ""}, "storage_url"),
        ({"study_name": None}, "study_name"),
        ({"pruner": "collapse"}, "pruner"),
        ({"direction": "min"}, "direction"),
        ({"metric_key": "det/AP"}, "direction"),  # no default direction for an unknown metric
        ({"extra_signal_keys": "swav/loss"}, "extra_signal_keys"),
        ({"share_optuna_search": True, "step_key": "epoch"}, "step_key"),
    ],
)
def test_scheduler_validates_arguments(kwargs, name):
    args = {"storage_url": "sqlite:///x.db", "study_name": "s", "pruner": CollapsePruner(), **kwargs}
    with pytest.raises(ValueError, match=f"^{name}="):
        OptunaPruningScheduler(**args)


# ---------------------------------------------------------------------------
# Real Ray Tune
# ---------------------------------------------------------------------------

CURVES: dict[str, Curve] = {
    "collapse": collapse(at=3, std=1e-4),
    "transient": queue_transient(start=5, length=3),
}


def synthetic_trainable(config: dict) -> None:
    """A Ray function trainable that reports one synthetic curve per epoch."""
    from ray import tune

    for epoch in range(1, config["epochs"] + 1):
        tune.report(CURVES[config["curve"]](epoch))


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # address="local": always a private cluster, never another process's running one.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def _tune(tmp_path, scheduler, **tune_config):
    from ray import tune

    tuner = tune.Tuner(
        synthetic_trainable,
        param_space={"curve": tune.grid_search(list(CURVES)), "prototypes": K, "feat_dim": 128, "epochs": 12},
        tune_config=tune.TuneConfig(scheduler=scheduler, **tune_config),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="pruning", verbose=0),
    )
    results = tuner.fit()
    return {r.config["curve"]: r for r in results}


def test_ray_tune_stops_the_collapsed_trial(ray_cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    scheduler = OptunaPruningScheduler(url, "pretrain", make_pruner("pretrain"))
    by_curve = _tune(tmp_path, scheduler)

    assert by_curve["collapse"].metrics["training_iteration"] == 6 < 12  # 3 + patience 4 - 1
    assert by_curve["transient"].metrics["training_iteration"] == 12
    collapsed_id = by_curve["collapse"].metrics["trial_id"]
    assert set(scheduler.pruned) == {collapsed_id}
    record = scheduler.pruned[collapsed_id]
    assert record.epoch == 6 and "embedding_std" in record.reason and "loss/ln K" in record.reason
    assert saved_compute(scheduler.pruned, {collapsed_id: 12})["epochs_saved"] == 6

    study = optuna.load_study(study_name="pretrain", storage=url)
    states = {t.user_attrs["ablate.ray_trial_id"]: t.state for t in study.trials}
    assert states[collapsed_id] == TrialState.PRUNED
    assert states[by_curve["transient"].metrics["trial_id"]] == TrialState.COMPLETE


def test_ray_tune_shares_optuna_search_trials(ray_cluster, tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = OptunaSearch(
        space={"curve": optuna.distributions.CategoricalDistribution(list(CURVES))},
        metric="swav/loss_over_ln_k",
        mode="min",
        study_name="tpe",
        storage=optuna.storages.RDBStorage(url),
        points_to_evaluate=[{"curve": name} for name in CURVES],
    )
    scheduler = OptunaPruningScheduler(url, "tpe", make_pruner("pretrain"), share_optuna_search=True)
    from ray import tune

    tuner = tune.Tuner(
        synthetic_trainable,
        param_space={"prototypes": K, "feat_dim": 128, "epochs": 12},
        tune_config=tune.TuneConfig(scheduler=scheduler, search_alg=searcher, num_samples=2,
                                    max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="tpe", verbose=0),
    )
    by_curve = {r.config["curve"]: r for r in tuner.fit()}

    assert by_curve["collapse"].metrics["training_iteration"] == 6
    assert by_curve["transient"].metrics["training_iteration"] == 12
    study = optuna.load_study(study_name="tpe", storage=url)
    assert len(study.trials) == 2  # the searcher's trials, no second set opened by the scheduler
    by_param = {t.params["curve"]: t for t in study.trials}
    assert by_param["collapse"].state == TrialState.PRUNED
    assert by_param["transient"].state == TrialState.COMPLETE  # told by OptunaSearch
    assert sorted(signals_by_step(by_param["collapse"])) == [1, 2, 3, 4, 5, 6]
    assert by_param["collapse"].params["prototypes"] == K
