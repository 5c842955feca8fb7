"""MLflow tracking in the layout of docs/ARCHITECTURE.md.

experiment = study name; one parent run per launch; one child run per trial
(``mlflow.parentRunId``) whose params are every resolved config field prefixed ``pretrain.`` or
``finetune.`` (a fine-tuning run also carries its backbone's ``pretrain.*``); tags
``ablate.stage``, ``ablate.config_hash``, ``ablate.seed``, ``ablate.trial_id``,
``ablate.upstream_run_id``, ``ablate.pruned``, ``ablate.prune_reason``; metrics with step = epoch.

Only the launch driver writes (one writer: no "database is locked" on the default sqlite store).
Everything goes through ``MlflowClient.log_batch`` in chunks that respect MLflow's limits.

Client settings live here too: :func:`configure_client_retries` lets every MLflow client of the
process ride out a tracking-server restart.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from experiments.store.redaction import redact, scrub_mapping
from experiments.store.sqlite_reader import ACTIVE_ONLY, SqliteReader, reads_without_mlflow, sqlite_path
from experiments.store.checks import finite_or_none
from trainers.vocabulary import (
    DET_AP50,
    STAGE_FINETUNE,
    TAG_DRIVER,
    TAG_ERROR,
    TAG_HASH,
    TAG_HEARTBEAT,
    TAG_PRUNED,
    TAG_STAGE,
)

DEFAULT_STORE_DIR = Path("mlruns")
MAX_METRICS_PER_BATCH = 1000  # mlflow.utils.validation limits
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000

PARENT_TAG = "mlflow.parentRunId"
# ablate.state values. planned: its run exists, Ray has not started it (MLflow status SCHEDULED);
# running; finished; pruned (stopped by the pruner, FINISHED); failed (FAILED); skipped (its backbone
# did not survive, KILLED); stopped (by `ablate stop` or Ctrl-C, KILLED, checkpoint kept: resumable).
TRIAL_STATES = ("planned", "running", "finished", "pruned", "failed", "skipped", "stopped")
# ablate.upstream_run_id of a detector trained without pretraining (trainers.detection.config.SCRATCH)
UPSTREAM_SCRATCH = "scratch"
HEARTBEAT_EVERY_S = 60
HEARTBEAT_STALE_S = 900  # a driver on another host that has not beaten for this long is taken as dead
RUN_NAME_TAG = "mlflow.runName"

# Client retries: with urllib3's backoff (factor x 2^(n-1) after the 2nd error, capped at 120 s)
# factor 1 and 10 retries wait 0, 2, 4, 8, ... s: a restart of ~10 s costs one or two retries,
# and a client keeps trying for ~8 minutes (a compose restart with migrations) before it fails.
# 10 is MLflow's ceiling (_MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT).
CLIENT_MAX_RETRIES = 10
CLIENT_BACKOFF_FACTOR = 1
CLIENT_BACKOFF_JITTER = 1.0
CLIENT_TIMEOUT_S = 120


def default_tracking_uri(store_dir: Path = DEFAULT_STORE_DIR, create: bool = True) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlruns/mlflow.db``.

    ``create``: make the store's folder (a launch); False for commands that only read, so one run
    in the wrong folder leaves no empty ``mlruns/`` behind (the store check then names the path).
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    store_dir = store_dir.resolve()
    if create:
        store_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store_dir / 'mlflow.db'}"


def uri_to_read(tracking_uri: str | None) -> str:
    """A command's ``--tracking-uri``, else :func:`default_tracking_uri` without creating a folder (read-only
    commands)."""
    return tracking_uri or default_tracking_uri(create=False)


def artifact_root_for(tracking_uri: str) -> str | None:
    """Default artifact root of a local sqlite store: ``mlruns/artifacts`` beside ``mlflow.db``."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None  # a server decides (artifact proxying)


def flatten_params(prefix: str, config: Mapping[str, Any]) -> dict[str, str]:
    """Config fields as MLflow params: ``pretrain.prototypes`` -> ``'3000'``; nested values as compact JSON."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, (dict, list, tuple)):
            text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
        else:
            text = str(value)
        out[f"{prefix}.{key}"] = text[:MAX_PARAM_VALUE]
    return out


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _metric_items(history: Iterable[tuple[int, Mapping[str, float]]], timestamp_ms: int) -> list[Any]:
    """MLflow ``Metric`` entities of ``[(step, {key: value})]``: numbers only, infinities left out, NaN kept."""
    from mlflow.entities import Metric

    return [Metric(k, float(v), timestamp_ms, int(step)) for step, m in history for k, v in m.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isinf(float(v))]


class Tracker:
    """The driver's MLflow writer for one study.

    Args:
        tracking_uri: sqlite / PostgreSQL URL or ``http(s)://`` server.
        study: the MLflow experiment name.
        create: create the experiment when missing (False: look only).
        read_only: nothing will be written (a dry run): on a local sqlite store the client is a
            :class:`~experiments.store.sqlite_reader.SqliteReader`, or None when the store does not exist yet.
    """

    def __init__(self, tracking_uri: str, study: str, create: bool = True, read_only: bool = False) -> None:
        self.tracking_uri = tracking_uri
        self.study = study
        if read_only and reads_without_mlflow(tracking_uri):  # a dry run reads a local store without MLflow, or finds none
            self.client: Any = SqliteReader(tracking_uri) if sqlite_path(tracking_uri).is_file() else None
        else:
            from mlflow.tracking import MlflowClient  # here, not at the top: read-only commands import this module

            self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(study) if self.client is not None else None
        if exp is None and not create:
            self.experiment_id = None  # read-only use (a dry run): no runs yet
        elif exp is None:
            self.experiment_id = self.client.create_experiment(study, artifact_location=_exp_location(tracking_uri, study))
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id

    # -- runs --------------------------------------------------------------

    def create_run(self, name: str, tags: Mapping[str, str], parent_run_id: str | None = None) -> str:
        """A new run (RUNNING); ``parent_run_id`` makes it a child in the UI."""
        all_tags = scrub_mapping({k: str(v) for k, v in tags.items()})
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id

    def find_runs(self, stage: str | None = None, config_hash: str | None = None,
                  extra_filter: str = "", max_results: int = 5000) -> list[Any]:
        """Runs of this study by stage / config hash, newest first."""
        if self.experiment_id is None:
            return []
        clauses = []
        if stage:
            clauses.append(f"tags.`{TAG_STAGE}` = '{stage}'")
        if config_hash:
            clauses.append(f"tags.`{TAG_HASH}` = '{config_hash}'")
        if extra_filter:
            clauses.append(extra_filter)
        return list(self.client.search_runs(
            [self.experiment_id], filter_string=" and ".join(clauses), run_view_type=ACTIVE_ONLY,
            max_results=max_results, order_by=["attributes.start_time DESC"],
        ))

    def runs_by_hash(self, stage: str) -> dict[str, Any]:
        """The most relevant run per config hash of a stage: a FINISHED one if any, else the newest."""
        out: dict[str, Any] = {}
        for run in self.find_runs(stage):
            h = run.data.tags.get(TAG_HASH)
            if not h:
                continue
            best = out.get(h)
            if best is None or (best.info.status != "FINISHED" and run.info.status == "FINISHED"):
                out[h] = run
        return out

    def log_params_tags(self, run_id: str, params: Mapping[str, str] = {}, tags: Mapping[str, str] = {}) -> None:
        """Params and tags in batches within MLflow's per-request limits. Params already logged are skipped."""
        params, tags = scrub_mapping(params), scrub_mapping(tags)  # no credential is ever recorded
        existing = self.client.get_run(run_id).data.params if params else {}
        from mlflow.entities import Param, RunTag

        p = [Param(k, str(v)[:MAX_PARAM_VALUE]) for k, v in params.items() if k not in existing]
        t = [RunTag(k, str(v)) for k, v in tags.items()]
        for chunk in _chunks(p, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=list(chunk))
        for chunk in _chunks(t, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=list(chunk))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> int:
        """Log finite numeric metrics at ``step`` in one request per 1000 values; returns the count logged.

        NaN is kept (MLflow stores it, e.g. an AP range with no ground truth); non-numbers are skipped.
        """
        ts = timestamp_ms or int(time.time() * 1000)
        items = _metric_items([(step, metrics)], ts)
        for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=list(chunk))
        return len(items)

    def log_history(self, run_id: str, history: Sequence[tuple[int, Mapping[str, float]]]) -> int:
        """Many steps of metrics in as few requests as possible (used by benchmarks and imports)."""
        ts = int(time.time() * 1000)
        items = _metric_items(history, ts)
        for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=list(chunk))
        return math.ceil(len(items) / MAX_METRICS_PER_BATCH)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Upload a folder's files."""
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload one file."""
        self.client.log_artifact(run_id, str(local_path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """A text artifact (the space file, a resolved config)."""
        self.client.log_text(run_id, redact(text), artifact_file)

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, context: str) -> None:
        """Record the data set as an MLflow input (name, digest, where it lives)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": redact(source)}),
                     schema=None, profile=None)
        self.client.log_inputs(run_id, [DatasetInput(ds, [InputTag("mlflow.data.context", context)])])

    def set_experiment_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags of the study's experiment (its kind, description and saved views: experiments.results.ui)."""
        for key, value in scrub_mapping(tags).items():
            self.client.set_experiment_tag(self.experiment_id, key, str(value))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set tags (batched)."""
        self.log_params_tags(run_id, tags={k: str(v) for k, v in tags.items()})

    def delete_tag(self, run_id: str, key: str) -> None:
        """Remove a tag if the run has it."""
        if key in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, key)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status)

    def reopen(self, run_id: str, status: str = "RUNNING") -> None:
        """Mark an unfinished run as running again (resume continues into the same run), or SCHEDULED (planned)."""
        self.client.update_run(run_id, status=status)

    def metric_history(self, run_id: str, key: str) -> list[Any]:
        """Every logged value of a metric, by step."""
        return sorted(self.client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))


def configure_client_retries(max_retries: int = CLIENT_MAX_RETRIES, backoff_factor: int = CLIENT_BACKOFF_FACTOR,
                             backoff_jitter: float = CLIENT_BACKOFF_JITTER,
                             timeout_s: int = CLIENT_TIMEOUT_S) -> dict[str, str]:
    """Let MLflow's REST client ride out a tracking-server restart without losing metrics.

    Sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``..._BACKOFF_FACTOR``, ``..._BACKOFF_JITTER`` and
    ``..._TIMEOUT`` in ``os.environ`` — only those the user has not set — so that refused
    connections, resets and 429/5xx answers are retried with exponential backoff (MLflow retries
    every method, POST included; a retried ``log_batch`` cannot duplicate a metric because the
    store's primary key covers key, step, timestamp and value). The defaults survive an outage of
    several minutes. MLflow reads these variables on every request, so calling this once at start
    covers every client of the process and the child processes it spawns afterwards.

    Args:
        max_retries: retries per request (MLflow allows at most 10).
        backoff_factor: seconds; the n-th wait is ``factor * 2**(n-1)`` (capped at 120 s by urllib3).
        backoff_jitter: up to this many random seconds added to each wait.
        timeout_s: per-request connect/read timeout.

    Returns:
        The variables this call set (name -> value); empty when the user had set them all.
    """
    if not 0 <= max_retries <= 10:
        raise ValueError(f"max_retries={max_retries}: MLflow accepts 0..10")
    if backoff_factor < 0 or backoff_jitter < 0 or timeout_s <= 0:
        raise ValueError("backoff_factor and backoff_jitter must be >= 0 and timeout_s > 0")
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(int(max_retries)),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(int(backoff_factor)),  # MLflow parses it as int
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(float(backoff_jitter)),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout_s)),
    }
    applied = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(applied)
    return applied


def usable_run(status: str, tags: Mapping[str, str], metrics: Mapping[str, Any], stage: str, metric: str = DET_AP50) -> bool:
    """Whether a trial run's result counts (reused, reported, registered).

    It must be FINISHED, not pruned, without an ``ablate.error``, and, for fine-tuning, have a
    finite final ``metric`` (``det/AP50`` by default; ``run.data.metrics`` holds the last step's value).
    """
    if status != "FINISHED" or tags.get(TAG_PRUNED) == "true" or TAG_ERROR in tags:
        return False
    return stage != STAGE_FINETUNE or finite_or_none(metrics.get(metric)) is not None


def driver_id() -> str:
    """``host:pid`` of this process, as recorded on the launch runs it drives."""
    return f"{socket.gethostname()}:{os.getpid()}"


def launch_alive(run: Any, now: float | None = None) -> bool:
    """Whether a launch run's driver is still at work.

    Only a RUNNING run can be. On this host the recorded driver process must still exist (and be
    older than its heartbeats: a reused pid is not the driver); elsewhere its heartbeat must be fresher
    than :data:`HEARTBEAT_STALE_S`. A run from before drivers were recorded counts as alive while
    its start is that recent.
    """
    import psutil

    if run.info.status != "RUNNING":
        return False
    tags = run.data.tags
    host, _, pid = tags.get(TAG_DRIVER, "").rpartition(":")
    try:
        beat = float(tags.get(TAG_HEARTBEAT, (run.info.start_time or 0) / 1000))
    except ValueError:
        beat = 0.0
    if host == socket.gethostname() and pid.isdigit():
        try:  # the driver beats from its start on, so it is older than every heartbeat it wrote
            return psutil.Process(int(pid)).create_time() <= beat + 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
    return (now if now is not None else time.time()) - beat < HEARTBEAT_STALE_S


def _exp_location(tracking_uri: str, study: str) -> str | None:
    root = artifact_root_for(tracking_uri)
    return f"{root}/{study}" if root else None
