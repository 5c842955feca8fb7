"""End to end: `ablate launch` through real Ray Tune, a real MLflow store and the Optuna pruner.

These are the slow tests of the suite (each launch starts a local Ray); they run in CI.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from experiments.store import tracking as T
from experiments.testing.spaces import COLLAPSED, HEALTHY, tiny_space, tiny_space_file, write_space
from trainers import vocabulary as V

ROOT = Path(__file__).resolve().parents[2]
METRICS_PRE = {"swav/loss", "swav/ln_k", "swav/loss_over_ln_k", "swav/embedding_std", "swav/assignment_entropy",
               "swav/prototypes_used", "swav/amp_skipped_steps", "swav/images_per_s", "lr",
               "swav/knn_top1", "swav/knn_top1_random",  # a launch feeds the kNN monitor the labeled set
               "swav/knn_top1_random_std", "swav/knn_top1_pixels", "swav/probe_top1", "swav/trunk_rank",
               "swav/trunk_rank_random", "swav/score_std", "swav/prototype_span", "swav/collapsed"}
METRICS_FT = {"det/loss", "det/AP", "det/AP50", "det/AP75", "det/AP_small", "det/AP_medium", "det/AP_large",
              "det/images_per_s", "det/iterations", "lr"}


def run_cli(args: list[str], cwd: Path, timeout: int = 900, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def runs_of(client: MlflowClient, study: str, stage: str | None = None) -> list:
    exp = client.get_experiment_by_name(study)
    flt = f"tags.`{V.TAG_STAGE}` = '{stage}'" if stage else ""
    return list(client.search_runs([exp.experiment_id], filter_string=flt, max_results=1000))


@pytest.mark.slow
def test_smoke_launch_layout(smoke):
    cwd, client, out = smoke
    assert "summary" in out and "trials planned" in out
    parents = runs_of(client, "smoke", "launch")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.metrics["launch/trials_planned"] == 6
    assert parent.data.metrics["launch/trials_failed"] == 0
    pre = runs_of(client, "smoke", "pretrain")
    ft = runs_of(client, "smoke", "finetune")
    assert len(pre) == 2 and len(ft) == 4
    pre_ids = {r.info.run_id: r for r in pre}
    for run in pre + ft:
        tags, params = run.data.tags, run.data.params
        assert tags[T.PARENT_TAG] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert tags[V.TAG_HASH] and tags[V.TAG_TRIAL] and tags[V.TAG_PRUNED] == "false"
    for run in pre:
        assert METRICS_PRE <= set(run.data.metrics)
        assert {"pretrain.prototypes", "pretrain.arch", "pretrain.crops", "pretrain.epochs"} <= set(run.data.params)
        hist = client.get_metric_history(run.info.run_id, "swav/loss")
        assert sorted(m.step for m in hist) == [1, 2]  # step = epoch, each once
        files = {f.path for f in client.list_artifacts(run.info.run_id, "backbone")}
        assert files == {"backbone/backbone.safetensors", "backbone/backbone.json"}
    for run in ft:
        assert METRICS_FT <= set(run.data.metrics)
        params = run.data.params
        assert {"finetune.norm", "finetune.head", "finetune.lr_scheme", "finetune.seed"} <= set(params)
        upstream = run.data.tags[V.TAG_UPSTREAM]
        # the name without the seed and the config hash without the seed, for MLflow's "Group by"
        label, _, short = run.data.tags[V.TAG_CELL].rpartition(" · ")
        assert label == run.info.run_name.rpartition(" · seed")[0] and len(short) == 8
        if upstream == "scratch":
            # every ablated axis is a param of the baseline too: no pretraining says "none", not a missing param
            assert params["finetune.backbone"] == "scratch"
            assert params["pretrain.prototypes"] == "none"
            assert {v for k, v in params.items() if k.startswith("pretrain.")} == {"none"}
        else:
            assert upstream in pre_ids and pre_ids[upstream].info.status == "FINISHED"
            # the fine-tuning run carries its backbone's pretraining params, for the compare view
            assert params["pretrain.prototypes"] == pre_ids[upstream].data.params["pretrain.prototypes"]
            assert params["finetune.backbone"] == pre_ids[upstream].info.run_name
            assert f"runs/{upstream})" in run.data.tags["mlflow.note.content"]  # the backbone as a run link
        files = {f.path for f in client.list_artifacts(run.info.run_id, "detector")}
        assert "detector/detector.safetensors" in files
        evals = client.list_artifacts(run.info.run_id, "eval")
        assert evals, "evaluation figure / per-class AP were not logged"
        inner = {Path(f.path).suffix for e in evals for f in client.list_artifacts(run.info.run_id, e.path)}
        assert {".png", ".json"} <= inner
    # the headline: in the printed summary, in summary.txt and as the launch run's description
    assert "headline (det/AP50, means over seeds):" in out and "best trial: " in out
    assert "best pretrained vs baseline: " in out and "1 seed each, no spread" in out  # one seed: not evidence
    assert parent.data.tags["mlflow.note.content"].startswith("**Headline**")
    summary = client.download_artifacts(parent.info.run_id, "summary.txt", str(cwd))
    assert "best trial: " in Path(summary).read_text()
    # the experiment opens on its runs, with the space's description and the leaderboard view
    exp = client.get_experiment_by_name("smoke")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.tags["mlflow.note.content"].startswith("tiny end-to-end study")
    assert exp.tags["ablate.axes"].split(",")[0] == "finetune.backbone"
    assert {"finetune.norm", "pretrain.prototypes"} <= set(exp.tags["ablate.axes"].split(","))
    assert "mlflow.sharedViewState.ablate-leaderboard" in exp.tags
    # the data set is recorded as an input with its digest
    assert client.get_run(ft[0].info.run_id).inputs.dataset_inputs[0].dataset.digest


@pytest.mark.slow
def test_smoke_champion_is_pulled_and_finds_the_objects(smoke, tmp_path):
    """The demo's last step: pull the champion, load it, and it detects the sample's objects."""
    import json

    import torch
    from torchvision.ops import box_iou

    from trainers.data import decode_rgb
    from trainers.detection import detect, load_detector, read_detector_config

    cwd, _, _ = smoke
    dest = tmp_path / "pulled"
    proc = run_cli(["pull", "smoke-detector@champion", "--dest", str(dest)], cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ann = next(cwd.rglob("sample-medium-0/annotations/val.json"))
    val, images = json.loads(ann.read_text()), ann.parent.parent / "val"
    model, record = load_detector(dest), read_detector_config(dest)
    correct, shown, images_found = 0, 0, 0
    for img in val["images"]:
        found = detect(model, decode_rgb(images / img["file_name"]), record["class_names"], record["label_to_cat_id"],
                       score_threshold=0.3)
        truth = [a for a in val["annotations"] if a["image_id"] == img["id"]]
        gt = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in truth)]).reshape(-1, 4)
        hits = 0
        for d in found:
            iou = box_iou(torch.tensor([[d["x_min"], d["y_min"], d["x_max"], d["y_max"]]]), gt)[0]
            hits += any(iou[i] >= 0.5 and a["category_id"] == d["category_id"] for i, a in enumerate(truth))
        correct += hits
        shown += len(found)
        images_found += hits > 0
    # Measured on this study (46 objects on 12 images; after 3 epochs the champion is not confident yet, and
    # which trial wins has differed between runs): 12 of 20 boxes scoring >= 0.3 right (class and IoU >= 0.5)
    # on 8 images with a scratch champion; 24 of 44 boxes above 0.5 on 8 images with a pretrained one. A
    # detector that learned nothing puts its few boxes anywhere: next to none of them right.
    assert correct >= 6 and images_found >= 4 and correct >= 0.3 * shown, (correct, shown, images_found)

    # the same from the command line, with the figure
    first = sorted(images.glob("*.jpg"))[:2]
    proc = run_cli(["detect", str(dest), *map(str, first), "--out", str(tmp_path / "det.png")], cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{first[0]}: " in proc.stdout and "scoring >= 0.5" in proc.stdout
    assert (tmp_path / "det.png").stat().st_size > 10_000


@pytest.mark.slow
def test_second_launch_reuses_everything(smoke):
    cwd, client, _ = smoke
    proc = run_cli(["launch", str(ROOT / "search_spaces" / "smoke.yaml")], cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pretrain start" not in proc.stdout  # zero pretraining trials
    parents = sorted(runs_of(client, "smoke", "launch"), key=lambda r: r.info.start_time)
    assert len(parents) == 2
    assert parents[-1].data.metrics["launch/trials_reused"] == 6
    assert len(runs_of(client, "smoke", "pretrain")) == 2 and len(runs_of(client, "smoke", "finetune")) == 4


@pytest.mark.slow
def test_dry_run_shows_reuse(smoke):
    cwd, _, _ = smoke
    proc = run_cli(["launch", str(ROOT / "search_spaces" / "smoke.yaml"), "--dry-run"], cwd)
    assert proc.returncode == 0, proc.stderr
    assert "2 reused from earlier launches, 0 to train" in proc.stdout


def _checkpoint_tagged(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db, timeout=1) as con:
            rows = con.execute("select count(*) from tags where key = ?", (V.TAG_CHECKPOINT,)).fetchone()
        return bool(rows and rows[0])
    except sqlite3.Error:
        return False


@pytest.mark.slow
def test_interrupted_launch_resumes_without_duplicates(tmp_path):
    space = tiny_space_file(tmp_path, "resume_study", pretrain_epochs=4)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # output to a file: a pipe nobody reads would stall the launch once its buffer is full
    log = (tmp_path / "first_launch.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "launch", str(space)], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    db = tmp_path / "mlruns" / "mlflow.db"
    deadline = time.time() + 300
    while time.time() < deadline and not _checkpoint_tagged(db) and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "the launch ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)  # a crash: no clean-up at all
    proc.wait(timeout=60)
    log.close()

    done = run_cli(["launch", str(space), "--resume"], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resume" in done.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    pre = runs_of(client, "resume_study", "pretrain")
    assert len(pre) == 1, "resuming created a duplicate pretraining run"
    run = pre[0]
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "swav/loss")]
    assert sorted(steps) == sorted(set(steps)) == [1, 2, 3, 4], steps  # continued, not restarted
    assert len(runs_of(client, "resume_study", "finetune")) == 1
    assert len(runs_of(client, "resume_study", "launch")) == 1  # --resume continued the same launch run
    # disk: the killed launch's state was superseded by the resumed trial's, and a finished trial
    # keeps no training state (its exported model is in the artifact store)
    assert V.TAG_CHECKPOINT not in client.get_run(run.info.run_id).data.tags
    assert not list((tmp_path / "mlruns" / "ray").glob("resume_study-*/*/checkpoint_*"))
    assert client.list_artifacts(run.info.run_id, "backbone")
    gc = run_cli(["gc", "resume_study", "--dry-run"], tmp_path)
    assert gc.returncode == 0 and "registered models and the tracking store are untouched" in gc.stdout


@pytest.mark.slow
def test_collapsed_pretraining_is_pruned_and_gets_no_finetuning(planted_collapse):
    """The planted collapse of the pruning benchmark (experiments/testing/spaces.py; the launch is shared with
    tests/test_bench.py): temperature 100 (vs 0.1) flattens every prediction to uniform, so the
    swapped-prediction loss sits at ln K from the first step (loss/ln K = 1.0000 +- 1e-4 measured on
    the sample data) and the encoder gets no training signal: the dead run the pruner is for. The
    shipped pruning defaults (warm-up 2, patience 4) stop it after epoch 6 of 7 and leave the healthy
    control alone."""
    tmp_path, study, stdout = planted_collapse
    assert "PRUNED" in stdout and "pruning saved" in stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    pre = {float(r.data.params["pretrain.temperature"]): r for r in runs_of(client, study, "pretrain")}
    dead, healthy = pre[COLLAPSED], pre[HEALTHY]
    assert dead.info.status == "FINISHED" and dead.data.tags[V.TAG_PRUNED] == "true"
    assert "loss/ln K" in dead.data.tags[V.TAG_PRUNE_REASON]
    steps = sorted(m.step for m in client.get_metric_history(dead.info.run_id, "swav/loss"))
    assert steps == [1, 2, 3, 4, 5, 6], steps  # stopped after warm-up 2 + patience 4, history kept
    assert not client.list_artifacts(dead.info.run_id, "backbone")  # not exported
    assert healthy.data.tags[V.TAG_PRUNED] == "false"
    assert len(client.get_metric_history(healthy.info.run_id, "swav/loss")) == 7
    ft = {r.data.tags[V.TAG_UPSTREAM]: r for r in runs_of(client, study, "finetune")}
    assert set(ft) == {healthy.info.run_id, dead.info.run_id}  # both planned at the start
    assert ft[healthy.info.run_id].data.tags[V.TAG_STATE] == "finished"
    skipped = ft[dead.info.run_id]  # the pruned backbone's fine-tune never ran
    assert skipped.info.status == "KILLED" and skipped.data.tags[V.TAG_STATE] == "skipped"
    assert not client.get_metric_history(skipped.info.run_id, "det/loss")
    parent = runs_of(client, study, "launch")[0]
    assert parent.data.metrics["launch/trials_pruned"] == 1
    assert parent.data.metrics["launch/finetune_skipped"] == 1
    assert parent.data.metrics["launch/pruned_epochs_budgeted"] == 7
    assert parent.data.metrics["launch/pruned_epochs_saved"] == 1


# `ablate launch --address` on a `ray start` cluster of two nodes: tests/e2e/test_s3.py::
# test_team_study_on_s3_resumes_pulls_collects_and_leaks_no_credential (one launch: Ray head and worker
# nodes, an auth tracking server with its artifacts in S3, checkpoints in S3).


@pytest.mark.slow
def test_ddp_pretraining_then_tpe_finetuning(tmp_path):
    """One launch, two features: a pretraining trial as a 2-process DDP job (gloo, GroupNorm), then
    fine-tuning sampled by Optuna's TPE through Ray's OptunaSearch (the GN backbone pairs with gn)."""
    import optuna

    space = tiny_space_file(tmp_path, "ddp_tpe_study", pretrain_epochs=1, processes=2, norm="gn")
    data = yaml.safe_load(space.read_text())
    # One GPU per DDP process, on a node that declares two: Ray gives the trial both, each process takes its
    # rank's (trainers.common.devices.default_device); torch cannot use them here, so the processes fall back to the
    # CPU and gloo (NCCL where CUDA works: tests/trainers/common/test_devices.py).
    data["pretrain"]["resources"]["gpu"] = 1
    data["finetune"]["fixed"]["norm"] = "gn"
    data["search"] = {"kind": "tpe", "num_samples": 2}
    data["finetune"]["grid"] = {"base_lr": {"loguniform": [5, 40]}, "head": {"choice": ["mlp", "mlp_ln"]}}
    space.write_text(yaml.safe_dump(data))
    proc = run_cli(["launch", str(space), "--num-gpus", "2"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    pre = runs_of(client, "ddp_tpe_study", "pretrain")
    assert len(pre) == 1 and pre[0].info.status == "FINISHED"
    assert pre[0].data.tags[V.TAG_GPUS] == "0,1" and pre[0].data.tags[V.TAG_DEVICE] == "cpu (GPU 0,1 assigned, unusable)"
    assert "swav/loss" in pre[0].data.metrics and pre[0].data.params["pretrain.norm"] == "gn"
    ft = runs_of(client, "ddp_tpe_study", "finetune")
    assert len(ft) == 2 and all(r.info.status == "FINISHED" for r in ft)
    for run in ft:
        assert run.data.tags[V.TAG_UPSTREAM] == pre[0].info.run_id
        lr = float(run.data.params["finetune.base_lr"])
        assert 5 <= lr <= 40 and run.data.params["finetune.head"] in ("mlp", "mlp_ln")
        assert run.data.params["finetune.head"] in run.info.run_name  # the name shows what was trained
    # the samples came from an Optuna study in the project's database (TPE sampler), one trial per run
    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    studies = [s.study_name for s in optuna.get_all_study_summaries(storage)
               if s.study_name.startswith("ddp_tpe_study-finetune")]
    assert len(studies) == 1
    trials = optuna.load_study(study_name=studies[0], storage=storage).trials
    assert len(trials) == 2 and all("base_lr" in t.params for t in trials)


@pytest.mark.slow
def test_half_gpu_trials_run_four_at_once_on_two_declared_gpus(tmp_path):
    """Ray's GPU scheduling without a GPU: a node declaring two GPUs (`--num-gpus 2`) runs four `gpu: 0.5`
    pretraining trials at once, two on each GPU id; each trial sees its own CUDA_VISIBLE_DEVICES, and its
    trainer, finding no GPU torch can use, trains on the CPU and says so (the run's device tag)."""
    space = tiny_space("gpu_study", pretrain_epochs=1, pretrain_grid={"prototypes": [20, 21, 22, 23]},
                       finetune_cases=[{"backbone": "scratch", "arch": "resnet18", "norm": "bn", "lr_scheme": "uniform"}])
    space["pretrain"]["resources"] = {"cpu": 0.5, "gpu": 0.5}
    space["max_concurrent"] = 4
    path = write_space(tmp_path, space)
    dry = run_cli(["launch", str(path), "--dry-run"], tmp_path)  # torch sees no GPU here: refused at plan time
    assert "pretrain.resources.gpu: one trial asks for 0.5 GPUs but this machine has 0" in dry.stdout
    proc = run_cli(["launch", str(path), "--num-gpus", "2"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    pre = runs_of(client, "gpu_study", "pretrain")
    assert len(pre) == 4 and all(r.info.status == "FINISHED" for r in pre)
    assert sorted(r.data.tags[V.TAG_GPUS] for r in pre) == ["0", "0", "1", "1"]  # fractional: two trials per GPU
    assert {r.data.tags[V.TAG_DEVICE] for r in pre} == {"cpu (GPU 0 assigned, unusable)", "cpu (GPU 1 assigned, unusable)"}
    started = [float(r.data.tags[V.TAG_STARTED]) for r in pre]
    ended = [r.info.end_time / 1000 for r in pre]
    assert max(started) < min(ended), (started, ended)  # all four were running at the same time
    (ft,) = runs_of(client, "gpu_study", "finetune")
    assert ft.info.status == "FINISHED" and ft.data.tags[V.TAG_GPUS] == "" and ft.data.tags[V.TAG_DEVICE] == "cpu"


def test_demo_says_what_its_budget_can_show(smoke):
    """The demo's verdict: one seed and minutes of SwAV are not evidence, and it says which part is missing."""
    from types import SimpleNamespace

    from experiments.launch.command import demo_verdict

    cwd, client, _ = smoke
    parent = max(runs_of(client, "smoke", "launch"), key=lambda r: r.info.start_time)  # other tests relaunch it
    outcomes = [SimpleNamespace(stage="pretrain", name=r.data.tags[V.TAG_NAME], metrics=dict(r.data.metrics))
                for r in runs_of(client, "smoke", "pretrain")]
    assert all("swav/knn_top1" in o.metrics and "swav/knn_top1_random" in o.metrics for o in outcomes)
    result = SimpleNamespace(parent_run_id=parent.info.run_id, study="smoke", outcomes=outcomes)
    lines = demo_verdict(result, f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    assert len(lines) == 3 and "leads:" in lines[0] and "AP@0.5" in lines[0], lines
    assert lines[1].startswith("backbones' kNN top-1 on the labeled objects: res18_ep2_p"), lines
    assert lines[-1].startswith("not evidence about pretraining at this budget: one seed per cell"), lines
    assert "python -m bench fidelity" in lines[-1]
