"""experiments.launch.ray_stage, without starting Ray: the refusal of a cluster too small for one trial, the local
machine's size, the cluster token, the Optuna study and pruning scheduler of each stage."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments.launch.ray_stage import local_size, make_scheduler, optuna_study, oversized_requests, ray_token_mode
from experiments.spaces import Resources
from trainers.vocabulary import STAGE_FINETUNE, STAGE_PRETRAIN


def _spec(pretrain: Resources, finetune: Resources, **kw) -> SimpleNamespace:
    return SimpleNamespace(path=Path("study.yaml"), pretrain=SimpleNamespace(resources=pretrain),
                           finetune=SimpleNamespace(resources=finetune), **kw)


def test_a_trial_bigger_than_the_node_is_named_with_what_to_change():
    spec = _spec(Resources(cpu=2, gpu=1, processes=2), Resources(cpu=1))
    assert oversized_requests(spec, cpus=4, gpus=2) == []
    [cpu_only] = oversized_requests(spec, cpus=16, gpus=0)
    assert cpu_only == ("study.yaml: pretrain.resources.gpu: one trial asks for 2 GPUs (1 x 2 processes) but this "
                        "machine has 0 (16 CPUs and no GPU): run it with --address on a Ray cluster whose nodes have "
                        "them")  # no GPU here: lowering the request is no way out
    problems = oversized_requests(spec, cpus=3, gpus=1, where="the largest node of the Ray cluster at ray://h:10001")
    assert [p.split(":")[1].strip() for p in problems] == ["pretrain.resources.cpu", "pretrain.resources.gpu"]
    assert "but the largest node of the Ray cluster at ray://h:10001 has 3 (3 CPUs and 1 GPU)" in problems[0]
    assert problems[0].endswith(", or set pretrain.resources.cpu to at most 1.5 to run it here")


def test_the_local_size_counts_declared_or_visible_gpus(monkeypatch):
    cpu_study = _spec(Resources(), Resources())
    gpu_study = _spec(Resources(gpu=1), Resources())
    assert local_size(cpu_study)[1] == 0.0 and local_size(cpu_study)[0] >= 1
    assert local_size(cpu_study, num_gpus=2)[1] == 2.0  # --num-gpus wins
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_size(gpu_study)[1] == 0.0  # none visible, whatever the driver lists


def test_joining_a_cluster_presents_its_token(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "")  # so that the test's end takes away the one ray_token_mode sets
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "auth_token"))
    ray_token_mode("ray://head:10001")
    ray_token_mode(None)
    assert "RAY_AUTH_MODE" not in os.environ  # no token anywhere: nothing to present
    (tmp_path / "auth_token").write_text("token")
    ray_token_mode(None)  # a local Ray of our own needs none
    assert "RAY_AUTH_MODE" not in os.environ
    ray_token_mode("ray://head:10001")
    assert os.environ["RAY_AUTH_MODE"] == "token"


def _ctx(kind: str, pruning: dict) -> SimpleNamespace:
    spec = SimpleNamespace(name="study", search={"kind": kind, "metric": "det/AP50", "mode": "max"}, pruning=pruning)
    return SimpleNamespace(spec=spec, launch_id="20260101-000000-abcdef", optuna_storage="sqlite:///unused.db")


def test_each_stage_prunes_in_its_own_study_and_tpe_in_the_trials_its_searcher_opened():
    grid = _ctx("grid", {"enabled": True})
    assert optuna_study(grid, STAGE_PRETRAIN) == "study-pretrain" and optuna_study(grid, STAGE_FINETUNE) == "study-finetune"
    pre = make_scheduler(grid, STAGE_PRETRAIN)
    assert (pre.study_name, pre.param_prefix, pre.step_key, pre.share_optuna_search, pre.direction) == (
        "study-pretrain", "trial.config.", "epoch", False, "minimize")
    assert make_scheduler(grid, STAGE_FINETUNE) is None  # fine-tuning pruning is off by default
    assert make_scheduler(_ctx("grid", {"enabled": False}), STAGE_PRETRAIN) is None

    tpe = _ctx("tpe", {"enabled": True, "finetune": {"kind": "median"}})
    assert optuna_study(tpe, STAGE_FINETUNE) == "study-finetune-20260101-000000-abcdef"  # per launch
    ft = make_scheduler(tpe, STAGE_FINETUNE)
    assert (ft.study_name, ft.param_prefix, ft.step_key, ft.share_optuna_search, ft.metric_key, ft.direction) == (
        "study-finetune-20260101-000000-abcdef", "", "training_iteration", True, "det/AP50", "maximize")
    with pytest.raises(ValueError, match="pruning.patience=0 is invalid"):
        make_scheduler(_ctx("grid", {"patience": 0}), STAGE_PRETRAIN)
