"""The results tests' shared fixtures, each built once per session: the registry study (test_registry.py,
test_pull.py, pyfunc_models/) and MLflow's built UI (test_ui.py, test_ui_app.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pytest
from mlflow.tracking import MlflowClient

from experiments.results import registry
from experiments.store.tracking import Tracker
from tests.experiments.results.helpers import BUNDLE, DET, STUDY, export_tiny_detector, log_trial
from trainers.checkpoints import export_backbone
from trainers.resnet import build_trunk
from trainers.vocabulary import TAG_ERROR, TAG_PRUNED, TAG_PRUNE_REASON, TAG_SEED, TAG_STAGE, TAG_UPSTREAM


@pytest.fixture(scope="session")
def registry_store(tmp_path_factory: pytest.TempPathFactory, new_store: Callable[[Path], str]) -> dict[str, Any]:
    """A study with a backbone, eligible / pruned / failed / NaN fine-tuning runs, registered step by step.

    1. best eligible run A (upstream backbone P) -> detector v1, backbone v1 (pruned C, failed D and
       NaN E score higher but must be skipped); 2. the same call again -> no new version;
    3. better scratch run B -> v2, champion moves; 4. B deleted, worse run W -> v3, champion stays on v2.
    """
    root = tmp_path_factory.mktemp("registry")
    uri = new_store(root)
    tracker = Tracker(uri, STUDY)
    parent = tracker.create_run("launch", {TAG_STAGE: "launch"})
    bb_dir = export_backbone(root / "bb", build_trunk("resnet18", "bn").state_dict(), {"arch": "resnet18", "norm": "bn"})
    exports = {n: export_tiny_detector(root, n, s) for n, s in (("det_a", 1), ("det_b", 2), ("det_w", 3))}

    pre = log_trial(tracker, parent, "pretrain", "res18_ep2_p30", {"swav/loss": 3.1, "swav/ln_k": math.log(30)}, {},
                    bb_dir)
    ft = {"upstream": {TAG_UPSTREAM: pre, TAG_SEED: "0"}}
    a = log_trial(tracker, parent, "finetune", "res18_ep2_p30 · frozen_bn · mlp · 357 · seed0",
                  {"det/AP50": 0.30, "det/AP": 0.10, "det/AP_small": float("nan")}, ft["upstream"], exports["det_a"])
    log_trial(tracker, parent, "finetune", "pruned", {"det/AP50": 0.90, "det/AP": 0.5},
              {TAG_UPSTREAM: pre, TAG_PRUNED: "true", TAG_PRUNE_REASON: "collapsed"}, exports["det_a"])
    log_trial(tracker, parent, "finetune", "failed", {"det/AP50": 0.95, "det/AP": 0.5},
              {TAG_UPSTREAM: pre, TAG_ERROR: "boom"}, exports["det_a"], status="FAILED")
    log_trial(tracker, parent, "finetune", "nan", {"det/AP50": float("nan"), "det/AP": 0.9}, {TAG_UPSTREAM: pre},
              exports["det_a"])
    steps = {"first": registry.register_best(uri, STUDY)}
    client = MlflowClient(uri, registry_uri=uri)
    steps["n_after_first"] = len(client.search_model_versions(f"name = '{DET}'"))
    steps["again"] = registry.register_best(uri, STUDY)
    steps["n_after_again"] = len(client.search_model_versions(f"name = '{DET}'"))

    b = log_trial(tracker, parent, "finetune", "scratch_res18 · frozen_bn · mlp · 357 · seed0",
                  {"det/AP50": 0.50, "det/AP": 0.20}, {TAG_UPSTREAM: "scratch", TAG_SEED: "0"}, exports["det_b"])
    steps["better"] = registry.register_best(uri, STUDY)
    client.delete_run(b)
    w = log_trial(tracker, parent, "finetune", "res18_ep2_p30 · frozen_bn · mlp · 357 · seed1",
                  {"det/AP50": 0.40, "det/AP": 0.15}, {TAG_UPSTREAM: pre, TAG_SEED: "1"}, exports["det_w"])
    steps["worse"] = registry.register_best(uri, STUDY)
    return {"root": root, "uri": uri, "client": client, "pre": pre, "a": a, "b": b, "w": w, "exports": exports,
            "bb_dir": bb_dir, "steps": steps}


@pytest.fixture(scope="session")
def bundle() -> str:
    """MLflow's built UI (all chunks), where the names the UI code relies on must appear."""
    return "".join(p.read_text(errors="replace") for p in BUNDLE.glob("*.js"))
