"""The MLflow layout rules shared by the launch, the report and the registry (no store needed)."""

from __future__ import annotations

import math
import os

import pytest

from experiments.store import tracking as T
from trainers import vocabulary as V
from trainers.vocabulary import DET_AP50, STAGE_FINETUNE, STAGE_PRETRAIN


@pytest.mark.parametrize(("status", "tags", "metrics", "stage", "usable"), [
    ("FINISHED", {V.TAG_PRUNED: "false"}, {}, STAGE_PRETRAIN, True),
    ("FINISHED", {V.TAG_PRUNED: "true"}, {}, STAGE_PRETRAIN, False),
    ("FINISHED", {V.TAG_ERROR: "boom"}, {}, STAGE_PRETRAIN, False),
    ("FAILED", {}, {}, STAGE_PRETRAIN, False),
    ("RUNNING", {}, {DET_AP50: 0.4}, STAGE_FINETUNE, False),
    ("FINISHED", {}, {DET_AP50: 0.4}, STAGE_FINETUNE, True),
    ("FINISHED", {}, {DET_AP50: math.nan}, STAGE_FINETUNE, False),  # no ground truth matched: not rankable
    ("FINISHED", {}, {"det/AP": 0.2}, STAGE_FINETUNE, False),
])
def test_usable_run(status, tags, metrics, stage, usable):
    assert T.usable_run(status, tags, metrics, stage) is usable


def test_usable_run_ranks_by_the_metric_asked_for():
    assert T.usable_run("FINISHED", {}, {"det/AP": 0.2}, STAGE_FINETUNE, metric="det/AP")


def test_scratch_is_one_value_from_the_trainer_to_the_tag():
    from experiments.spaces import BACKBONE_SCRATCH
    from trainers.detection.config import SCRATCH

    assert T.UPSTREAM_SCRATCH == SCRATCH == BACKBONE_SCRATCH


def test_configure_client_retries_keeps_user_values(monkeypatch):
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "33")
    applied = T.configure_client_retries()
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in applied and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "33"
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES

    retries, factor = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()
    # urllib3 waits 0, 2f, 4f, ... (capped at 120 s) between tries: the client must keep trying
    # well past a 10 s restart.
    waited = sum(min(120, factor * 2 ** (n - 1)) for n in range(2, retries + 1))
    assert waited > 60
    assert T.configure_client_retries() == {}  # everything set now: a second call changes nothing
    with pytest.raises(ValueError, match="0..10"):
        T.configure_client_retries(max_retries=11)
