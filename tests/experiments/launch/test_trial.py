"""The trial payload as Ray carries it, and the metrics of a result that go to MLflow (no Ray cluster, no training)."""

from __future__ import annotations

import dataclasses
import pickle
from types import SimpleNamespace

import cloudpickle
import pytest

from experiments.launch.trial import CANDIDATE_KEY, TrialPayload, loggable_metrics, sampled_payload
from trainers.vocabulary import STAGE_FINETUNE, STAGE_PRETRAIN


def _payload(**kw) -> TrialPayload:
    fields = dict(stage=STAGE_PRETRAIN, config={"prototypes": 20, "feat_dim": 16, "epochs": 3}, config_hash="h1",
                  name="res18_ep3_p20", epochs=3)
    return TrialPayload(**{**fields, **kw})


def test_payload_is_frozen_and_pickles():
    p = _payload(restore="/ckpt", dataset=("-unlabeled", "fp", "/data", "pretraining"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "other"  # type: ignore[misc]
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        assert loads(dumps(p)) == p  # Ray's tuner.pkl (cloudpickle) and the trial's config (pickle)


def test_grid_search_over_payloads_yields_each_payload():
    from ray import tune
    from ray.tune.search.variant_generator import generate_variants

    payloads = [_payload(), _payload(config_hash="h2", name="res18_ep3_p30", config={"prototypes": 30})]
    configs = [spec["trial"] for _, spec in generate_variants({"trial": tune.grid_search(payloads)})]
    assert configs == payloads and all(isinstance(c, TrialPayload) for c in configs)


def test_sampled_payload_takes_the_candidate_and_the_sampled_values():
    candidates = [_payload(stage=STAGE_FINETUNE, config={"head": "mlp", "base_lr": 0.02}, config_hash="c0",
                           upstream_hash="u0", tags={"ablate.seed": "0"}, seed=0, backbone_name="res18"),
                  _payload(stage=STAGE_FINETUNE, config={"head": "mlp", "base_lr": 0.02}, config_hash="c1", seed=1)]
    p = sampled_payload({CANDIDATE_KEY: 0, "base_lr": 0.5, "head": "mlp_ln"}, candidates)
    assert p.config == {"head": "mlp_ln", "base_lr": 0.5} and p.sampled == {"base_lr": 0.5, "head": "mlp_ln"}
    assert (p.upstream_hash, p.seed, p.tags, p.backbone_name) == ("u0", 0, {"ablate.seed": "0"}, "res18")
    assert candidates[0].config == {"head": "mlp", "base_lr": 0.02}  # the candidate itself is unchanged


def test_scheduler_reads_the_pruners_inputs_from_a_payload(tmp_path):
    """Grid trials carry a TrialPayload: the scheduler finds K and feat_dim under ``trial.config.``."""
    import optuna

    from experiments.pruning.pruner import CollapsePruner
    from experiments.pruning.scheduler import OptunaPruningScheduler
    from tests.experiments.curves import healthy

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    scheduler = OptunaPruningScheduler(url, "pretrain", CollapsePruner(), param_prefix="trial.config.",
                                       step_key="epoch")
    trial = SimpleNamespace(trial_id="t", config={"trial": _payload()})
    assert scheduler.on_trial_result(None, trial, {**healthy(1), "epoch": 1}) == "CONTINUE"
    assert optuna.load_study(study_name="pretrain", storage=url).trials[0].params == {"prototypes": 20, "feat_dim": 16}


def test_loggable_metrics_keeps_named_metrics_key_first_and_drops_ray_bookkeeping():
    got = loggable_metrics({"det/loss": 1.0, "det/AP50": 0.3, "lr": 0.01, "epoch": 3, "done": False,
                            "time_this_iter_s": 2.0, "det/flag": True}, STAGE_FINETUNE)
    assert list(got) == ["det/AP50", "det/loss", "lr"]
