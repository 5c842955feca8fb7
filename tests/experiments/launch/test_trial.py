"""The trial payload as Ray carries it, and the driver's progress texts (no Ray cluster, no training)."""

from __future__ import annotations

import dataclasses
import math
import pickle
from types import SimpleNamespace

import cloudpickle
import pytest

from experiments.launch.trial import CANDIDATE_KEY, TrialPayload, sampled_payload
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


# ---------------------------------------------------------------------------
# Progress texts
# ---------------------------------------------------------------------------


def test_status_line_counts_pending_and_eta():
    from experiments.launch.progress import status_line

    line = status_line("pretrain", ["running", "done", "pruned"], total=5, remaining_epochs=6, per_epoch_s=20.0,
                       max_concurrent=2)
    assert line == "pretrain status  running 1  pending 2  done 1  pruned 1  failed 0  of 5  ETA 1.0 min"
    assert status_line("finetune", [], 1, 2, math.nan, 1).endswith("of 1  ETA ?")


def test_summary_shows_each_stage_s_key_metric_and_the_saved_epochs():
    from experiments.launch import TrialOutcome
    from experiments.launch.progress import format_summary

    outcomes = [TrialOutcome(STAGE_FINETUNE, "ft", "h2", "r2", "done", {"det/AP50": 0.4}, 1, 1),
                TrialOutcome(STAGE_PRETRAIN, "pre", "h1", "r1", "pruned", {"swav/loss_over_ln_k": 1.0}, 6, 7,
                             "collapse")]
    counts = {"launch/trials_planned": 2, "launch/trials_run": 2, "launch/trials_reused": 0,
              "launch/trials_pruned": 1, "launch/trials_failed": 0, "launch/finetune_skipped": 1,
              "launch/pruned_epochs_budgeted": 7, "launch/pruned_epochs_saved": 1, "launch/pruned_fraction_saved": 1 / 7}
    lines = format_summary(outcomes, counts, ["a warning"]).splitlines()
    rows = [line for line in lines if line.startswith("  pretrain") or line.startswith("  finetune")]
    assert "loss_over_ln_k 1.0000" in rows[0] and "6/7" in rows[0] and "(collapse)" in rows[0]
    assert "AP@0.5 0.4000" in rows[1]  # the label the report and the headline use
    assert "  pruning saved 1 of 7 budgeted epochs (14%) and 1 fine-tuning trials" in lines
    assert lines[-1] == "  warning: a warning"

    # A pretraining run that ended collapsed says so, with the reasons, and its kNN beside its references.
    monitor = {"swav/collapsed": 1.0, "swav/prototype_span": 0.4, "swav/knn_top1": 0.2, "swav/knn_top1_random": 0.3,
               "swav/knn_top1_random_std": 0.02, "swav/knn_top1_pixels": 0.7, "swav/loss_over_ln_k": 1.0}
    outcomes = [TrialOutcome(STAGE_PRETRAIN, "pre", "h1", "r1", "done", monitor, 7, 7)]
    [row] = [line for line in format_summary(outcomes, counts, [], {"h1": 32}).splitlines()
             if line.startswith("  pretrain")]
    assert "COLLAPSED: embeddings outside the prototypes' span (0.40" in row
    assert row.endswith("kNN 0.200 (random 0.300 ± 0.020, pixels 0.700)")
