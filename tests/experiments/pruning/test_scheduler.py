"""The Optuna-backed Ray Tune scheduler and the compute pruning saved.

Synthetic per-epoch metric curves (tests/experiments/curves.py) go through the scheduler driven
by hand like Ray's controller, then through real Ray Tune trials.
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from experiments.pruning.pruner import CollapsePruner, make_pruner, signals_by_step
from experiments.pruning.scheduler import OptunaPruningScheduler, PruneRecord, saved_compute
from tests.experiments.curves import K, Curve, collapse, healthy, queue_transient

optuna.logging.set_verbosity(optuna.logging.WARNING)


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


def test_optuna_trial_of_reads_the_trial_the_searcher_opened(tmp_path):
    """The one read of Ray's private ``OptunaSearch._ot_trials``: fails here when a Ray release changes it."""
    from experiments.pruning.scheduler import optuna_trial_of

    searcher = _searcher(f"sqlite:///{tmp_path / 'optuna.db'}")
    config = searcher.suggest("ray-trial")
    ot_trial = optuna_trial_of(searcher, "ray-trial")
    assert isinstance(ot_trial, optuna.trial.Trial)
    assert ot_trial.params == config and ot_trial.study.study_name == "tpe"
    with pytest.raises(RuntimeError, match="no Optuna trial for Ray trial other"):
        optuna_trial_of(searcher, "other")
    with pytest.raises(RuntimeError, match="keeps no `_ot_trials` dict"):
        optuna_trial_of(SimpleNamespace(), "ray-trial")


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
