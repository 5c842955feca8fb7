"""The report tests' shared fixture, built once per session: the fabricated study in an MLflow sqlite store."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pytest

from experiments.results import report as rep
from experiments.store.tracking import Tracker
from tests.experiments.results.report.helpers import BACKBONES, FINETUNE, STUDY, finetune
from trainers.vocabulary import TAG_ERROR, TAG_HASH, TAG_NAME, TAG_PRUNED, TAG_PRUNE_REASON, TAG_STAGE


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory, new_store: Callable[[Path], str]) -> dict[str, Any]:
    """A launch of three backbones (K=300 collapsed and pruned), their fine-tuning runs of FINETUNE, a failed and a
    pruned one scoring high, the collected runs and their tables."""
    root = tmp_path_factory.mktemp("report")
    uri = new_store(root)
    tracker = Tracker(uri, STUDY)
    parent = tracker.create_run("launch", {TAG_STAGE: "launch"})
    tracker.log_params_tags(parent, params={"axes.pretrain": "prototypes", "axes.finetune": "norm"})
    tracker.finish(parent)
    pre: dict[str, str] = {}
    for bb, k in (("p30", 30), ("p100", 100), ("p300", 300)):
        run_id = tracker.create_run(BACKBONES[bb], {TAG_STAGE: "pretrain", TAG_NAME: BACKBONES[bb], TAG_HASH: f"pre-{bb}",
                                                    TAG_PRUNED: "false"}, parent_run_id=parent)
        tracker.log_params_tags(run_id, params={"pretrain.prototypes": str(k), "pretrain.arch": "resnet18"})
        collapsed = bb == "p300"
        for epoch in (1, 2, 3):
            loss = math.log(k) if collapsed else math.log(k) * (1.0 - 0.2 * epoch)
            knn = {"swav/knn_top1": 0.512} if bb == "p30" else {}  # p100 predates the kNN monitor: "-"
            tracker.log_metrics(run_id, {"swav/loss": loss, "swav/ln_k": math.log(k), **knn}, step=epoch)
        if collapsed:
            tracker.set_tags(run_id, {TAG_PRUNED: "true", TAG_PRUNE_REASON: "collapse: loss at ln K for 3 epochs"})
        tracker.finish(run_id)
        pre[bb] = run_id
    ids: dict[Any, str] = {"collapsed": pre.pop("p300")}
    ids.update({key: finetune(tracker, parent, pre, key[0], key[1], key[2], v) for key, v in FINETUNE.items()})
    # High scores that must never reach a mean: a failed run and a pruned one.
    ids["failed"] = finetune(tracker, parent, pre, "p100", "bn", 0, (0.99,) * 5, status="FAILED",
                              tags={TAG_ERROR: "Traceback ...\nRuntimeError: CUDA out of memory"})
    ids["pruned"] = finetune(tracker, parent, pre, "p100", "bn", 1, (0.98,) * 5,
                              tags={TAG_PRUNED: "true", TAG_PRUNE_REASON: "AP50 below the median at epoch 1"})
    runs = rep.collect(uri, STUDY)
    return {"root": root, "uri": uri, "parent": parent, "ids": ids, "runs": runs, "tables": rep.build_tables(runs)}
