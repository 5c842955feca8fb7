"""experiments.launch.launcher without Ray or training: where a launch keeps its store, Ray storage and Optuna study;
what it refuses before anything runs; a dry run's plan and estimate; the fine-tuning trials' payloads and runs, the
experiment's view, and the first lines a launch prints."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments import spaces
from experiments.launch import Launcher, LaunchOptions, LaunchSetupError, launch
from experiments.launch.control import ControlError
from experiments.launch.launcher import (
    experiment_view,
    finetune_payload,
    plan_finetune_runs,
    where_to_look,
)
from experiments.launch.ledger import TrialLedger, trial_cell
from experiments.results.ui import NONE_VALUE
from experiments.launch.artifacts import Housekeeping
from experiments.testing.s3server import free_port
from experiments.testing.spaces import tiny_space, write_space
from trainers import vocabulary as V

CASES = [{"backbone": "swav", "norm": "bn"},
         {"backbone": "scratch", "norm": "bn", "lr_scheme": "uniform", "arch": "resnet18"}]


def _data(root: Path) -> dict[str, str]:
    """Empty folders and annotation files where a space's five data paths point (nothing is read before training)."""
    paths = {}
    for key in spaces.DATA_PATH_KEYS:
        path = root / "data" / key
        if key.endswith("annotations"):
            path = path.with_suffix(".json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
        else:
            path.mkdir(parents=True, exist_ok=True)
        paths[key] = str(path)
    return paths


def _space(root: Path, name: str, **extra) -> Path:
    space = tiny_space(name, pretrain_grid={"prototypes": [20, 30]}, finetune_cases=CASES)
    return write_space(root, {**space, "data": _data(root), **extra})


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "ABLATE_STORAGE_PATH", "ABLATE_OPTUNA_STORAGE", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_the_command_line_then_the_space_then_the_environment_say_where_a_launch_keeps_things(tmp_path, clean_env):
    space = _space(tmp_path, "settings")
    default = Launcher(space, LaunchOptions())
    store = tmp_path / "mlruns"
    assert default.tracking_uri == f"sqlite:///{store / 'mlflow.db'}" and store.is_dir()
    assert (default.ctx.storage, default.ctx.local_storage) == (str(store / "ray"), store / "ray")
    assert default.ctx.optuna_storage == f"sqlite:///{store / 'optuna.db'}" and default.max_concurrent == 1
    assert default.spec.name == "settings" and default.parent_run_id is None

    clean_env.setenv("ABLATE_STORAGE_PATH", str(tmp_path / "env_ray"))
    clean_env.setenv("ABLATE_OPTUNA_STORAGE", "sqlite:///env_optuna.db")
    env = Launcher(space, LaunchOptions(max_concurrent=3, name="renamed"))
    assert (env.ctx.storage, env.ctx.optuna_storage, env.max_concurrent) == (
        str(tmp_path / "env_ray"), "sqlite:///env_optuna.db", 3)
    assert env.spec.name == "renamed"
    in_space = Launcher(_space(tmp_path, "kept", storage_path=str(tmp_path / "space_ray")), LaunchOptions())
    assert in_space.ctx.storage == str(tmp_path / "space_ray")  # the space's storage_path before the environment
    remote = Launcher(space, LaunchOptions(storage_path="s3://team/ray", optuna_storage="sqlite:///o.db"))
    assert (remote.ctx.storage, remote.ctx.local_storage, remote.ctx.optuna_storage) == (
        "s3://team/ray", store / "cache", "sqlite:///o.db")  # backbones and data stay on this machine


def test_a_secret_notify_command_or_an_unreachable_server_is_refused_before_anything_is_made(tmp_path, clean_env):
    space = _space(tmp_path, "refused")
    with pytest.raises(ControlError, match="a webhook URL"):
        Launcher(space, LaunchOptions(notify="curl -d x https://hooks.slack.com/services/T0/B0/XXXX"))
    with pytest.raises(LaunchSetupError, match=r"tracking server http://127\.0\.0\.1:\d+ is unreachable"):
        Launcher(space, LaunchOptions(tracking_uri=f"http://127.0.0.1:{free_port()}"))
    assert not (tmp_path / "mlruns").exists()


def test_a_dry_run_prints_the_plan_and_its_warnings_and_writes_no_store(tmp_path, clean_env):
    raw = tiny_space("dry", pretrain_grid={"prototypes": [20, 30]}, finetune_cases=CASES)
    raw["pretrain"]["resources"] = {"cpu": 4096}  # more than any machine here: a warning in a dry run
    path = write_space(tmp_path, {**raw, "data": _data(tmp_path)})
    out = io.StringIO()
    result = launch(path, LaunchOptions(dry_run=True, out=out))
    assert (result.study, result.parent_run_id, result.outcomes, result.exit_code) == ("dry", None, [], 0)
    assert len(result.plan.pretrain) == 2 and len(result.plan.finetune) == 3
    assert result.data == _data(tmp_path)
    text = out.getvalue()
    assert "warning: " in text and "pretrain.resources.cpu: one trial asks for 4096 CPUs" in text
    assert "estimate: no estimate yet" in text  # no store, nothing measured
    assert text.rstrip().endswith(f"(dry run: nothing trained; tracking store sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'})")
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def _planned(launch_ctx, tmp_path, name: str):
    ctx = launch_ctx(name, pretrain_grid={"prototypes": [20, 30]}, finetune_cases=CASES)
    ctx.data_paths = _data(tmp_path)
    plan = spaces.expand(ctx.spec, ctx.data_fingerprint, ctx.data_paths)
    by_backbone = {t.backbone_name: t for t in plan.finetune}
    return ctx, plan, by_backbone


def test_a_fine_tuning_payload_carries_its_backbones_params_and_lineage(launch_ctx, tmp_path):
    ctx, plan, trials = _planned(launch_ctx, tmp_path, "payloads")
    scratch = finetune_payload(ctx, trials["scratch_res18"], plan, "", spaces.BACKBONE_SCRATCH)
    assert scratch.stage == V.STAGE_FINETUNE and scratch.config["backbone"] == spaces.BACKBONE_SCRATCH
    assert scratch.tags[V.TAG_UPSTREAM] == "scratch" and scratch.tags[V.TAG_SEED] == "0"
    assert scratch.tags[V.TAG_CELL] == trial_cell(ctx, trials["scratch_res18"])
    # every pretraining field of the study, "none": each ablated axis is a param of every fine-tuning run
    assert scratch.extra_params[V.BACKBONE_PARAM] == "scratch"
    assert {k: v for k, v in scratch.extra_params.items() if k != V.BACKBONE_PARAM} == {
        f"pretrain.{k}": NONE_VALUE for k in [*plan.pretrain[0].config, "world_size"]}
    assert scratch.dataset == ("-labeled", "fp", ctx.data_paths["train_annotations"], "training")
    pretrained = finetune_payload(ctx, trials["res18_ep2_p20"], plan, "run-up", "/backbones/h/backbone")
    assert pretrained.config["backbone"] == "/backbones/h/backbone" and pretrained.upstream_hash
    assert pretrained.tags[V.TAG_UPSTREAM] == "run-up"
    assert f"#/experiments/{ctx.tracker.experiment_id}/runs/run-up" in pretrained.tags["mlflow.note.content"]
    assert pretrained.extra_params[V.BACKBONE_PARAM] == "res18_ep2_p20"
    assert pretrained.extra_params["pretrain.prototypes"] == "20"
    assert (pretrained.epochs, pretrained.backbone_name, pretrained.seed) == (1, "res18_ep2_p20", 0)


def test_fine_tuning_runs_are_planned_except_finished_ones_and_those_on_a_pruned_backbone(launch_ctx, tmp_path):
    ctx, plan, trials = _planned(launch_ctx, tmp_path, "planned")
    ctx.parent_run_id = ctx.tracker.create_run("launch", {V.TAG_STAGE: "launch"})
    ledger = TrialLedger(ctx, Housekeeping(ctx))
    finished = SimpleNamespace(info=SimpleNamespace(status="FINISHED", run_id="r-old"),
                               data=SimpleNamespace(tags={}, metrics={V.DET_AP50: 0.3}))
    pruned = SimpleNamespace(info=SimpleNamespace(status="FINISHED", run_id="r-pruned"),
                             data=SimpleNamespace(tags={V.TAG_PRUNED: "true"}, metrics={}))
    pre_runs = {trials["res18_ep2_p30"].upstream_hash: pruned}
    ft_runs = {trials["scratch_res18"].config_hash: finished}
    plan_finetune_runs(ctx, ledger, plan, plan.finetune, pre_runs, ft_runs)
    assert list(ledger.planned) == [trials["res18_ep2_p20"].config_hash]
    p = ledger.planned[trials["res18_ep2_p20"].config_hash]
    assert p.restore is None and p.config["backbone"] == spaces.BACKBONE_SCRATCH  # the backbone comes when it exists
    run = ctx.tracker.client.get_run(ledger.run_id_for(p.config_hash))
    assert run.data.tags[V.TAG_STATE] == "planned" and run.data.params["finetune.backbone"] == "res18_ep2_p20"


def test_the_experiment_view_names_the_axes_and_the_first_lines_say_where_to_look(launch_ctx, tmp_path):
    ctx, plan, _ = _planned(launch_ctx, tmp_path, "view")
    experiment_view(ctx, plan)
    tags = ctx.tracker.client.get_experiment(ctx.tracker.experiment_id).tags
    assert set(tags[V.TAG_AXES].split(",")) >= {V.BACKBONE_PARAM, "pretrain.prototypes"}
    assert V.TAG_SEEDS not in tags  # a fixed-seeds study
    follow, leaderboard = where_to_look(ctx)
    assert follow == "follow it: ablate status view --watch"
    assert leaderboard.startswith("leaderboard (after `ablate ui`): http://")
    assert f"#/experiments/{ctx.tracker.experiment_id}" in leaderboard
