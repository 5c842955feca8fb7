"""The model registry: register a study's best detector (and its backbone), list, pull.

Registered models, per study:

* ``<study>-detector`` — versions are fine-tuning runs. Each version is an MLflow pyfunc
  "model from code" (``experiments/pyfunc_models/detector.py``) logged to the fine-tuning run
  itself, so the version, the logged model and the run's params, metrics and lineage tags stay
  linked in the UI. Its artifacts are the exported files — ``artifacts/detector/`` holds
  ``detector.safetensors``, ``detector.json``, ``config.json`` and ``config.yaml`` — and the
  ``trainers`` package as code, so ``mlflow models serve`` needs no checkout. No Python object
  is pickled: MLflow stores the model's source file, never a cloudpickle.
* ``<study>-backbone`` — the pretraining run behind the detector (``ablate.upstream_run_id``;
  none for a scratch detector), logged the same way (``backbone.py``, ``artifacts/backbone/``).

The alias ``champion`` marks the best version: it moves to a new version only when that one
scores strictly higher (``det/AP50``, ties broken by ``det/AP``), so a worse launch never
demotes a better model; every version is kept. A backbone's score is that of the best detector
fine-tuned on it (tagged ``downstream.*`` on its version), so the backbone champion is the
pretrained backbone with the best downstream detector — when a scratch detector wins, the
backbone champion is left alone.

``pull`` downloads a version's files into a folder that ``trainers.detection.load_detector``
(or, for a backbone, ``DetectionConfig(backbone=DEST)`` and ``trainers.swav.load_backbone``)
reads directly, checks the weights' sha256 against the one recorded at registration, and
writes a ``MODEL_CARD.md``. It downloads into a temporary folder beside ``dest`` and moves it
into place only when everything checked out, so a failed pull leaves nothing behind. It
replaces an existing folder only with ``overwrite`` and only when that folder holds an earlier
pull and nothing else; the current, home and root folders, and any folder containing the working
directory or the local tracking store, are never replaced.

Errors the user can act on (unknown study / model / alias / version, a store that cannot be
reached, a destination that cannot be written, a corrupted or unsafe artifact) raise
:class:`RegistryError`, a ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import yaml

from experiments.pyfunc_models import BACKBONE_CODE, DETECTOR_CODE
from experiments.redaction import redact
from experiments.tracking import (
    TAG_ERROR, TAG_GIT, TAG_HASH, TAG_NAME, TAG_PRUNED, TAG_SEED, TAG_STAGE, TAG_UPSTREAM,
)

CHAMPION = "champion"
DEFAULT_METRIC = "det/AP50"
TIE_BREAK_METRIC = "det/AP"
DETECTOR, BACKBONE = "detector", "backbone"
MODEL_CARD = "MODEL_CARD.md"
CONFIG_JSON, CONFIG_YAML = "config.json", "config.yaml"

# Model-version tags (besides the run's metrics, tagged under their own names).
TAG_KIND = "ablate.kind"
TAG_STUDY = "ablate.study"
TAG_RUN = "ablate.run_id"
TAG_WEIGHTS_SHA = "ablate.weights_sha256"
TAG_WEIGHTS_FILE = "ablate.weights_file"
TAG_DOWNSTREAM_RUN = "downstream.run_id"
DOWNSTREAM_PREFIX = "downstream."

TRAINERS_DIR = Path(__file__).resolve().parent.parent / "trainers"
# What the logged model needs to run: pinned to this environment's versions when installed.
MODEL_REQUIREMENTS = ("torch", "torchvision", "safetensors", "numpy", "pandas", "pillow", "pycocotools",
                      "matplotlib", "pyyaml", "tqdm", "mlflow")
PROBE_TIMEOUT_S = 5.0  # an unreachable server fails in seconds, not after MLflow's minutes of retries
SPEC_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>\d+))?$")


class RegistryError(ValueError):
    """A registry request that cannot be served; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class ModelKind:
    """What differs between the two kinds of registered model."""

    kind: str  # "detector" or "backbone"
    stage: str  # the run stage it comes from
    weights: str  # weights file name (in the run's artifact folder ``<kind>/`` and in the model)
    config: str  # JSON file name beside it
    code: Path  # the pyfunc model-from-code file


KINDS = {
    DETECTOR: ModelKind(DETECTOR, "finetune", "detector.safetensors", "detector.json", DETECTOR_CODE),
    BACKBONE: ModelKind(BACKBONE, "pretrain", "backbone.safetensors", "backbone.json", BACKBONE_CODE),
}


def model_name(study: str, kind: str) -> str:
    """``<study>-detector`` or ``<study>-backbone``; the study name must pass the launch's rule, so `pull` parses it."""
    from experiments.spaces import validate_study_name  # lazy: spaces imports the trainers (torch)

    return f"{validate_study_name(study, RegistryError)}-{kind}"


# ---------------------------------------------------------------------------
# Store access
# ---------------------------------------------------------------------------


def check_store(tracking_uri: str, error: type[ValueError] = RegistryError) -> None:
    """Fail fast, with one line, when the tracking store cannot be reached.

    A sqlite store must exist (a typo would otherwise create an empty database); an
    ``http(s)://`` server must answer its ``/health`` endpoint within a few seconds (MLflow's
    own client would retry for minutes before giving up).
    """
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        if not db.is_file():
            raise error(f"no MLflow store at {db} (tracking URI {redact(tracking_uri)}); "
                        "run `ablate launch` first or pass --tracking-uri")
    elif tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S):  # noqa: S310 - the user's own server
                pass
        except urllib.error.HTTPError:
            return  # it answered: a proxy or auth layer may refuse /health, the API calls will tell
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise error(f"tracking server {redact(tracking_uri)} is unreachable ({reason}); "
                        "start it (docker compose up) or check --tracking-uri") from exc


def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    check_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _is_missing(exc: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def one_line(text: Any) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed: error messages stay one line."""
    return " ".join(str(text).split())


@contextlib.contextmanager
def store_errors(tracking_uri: str, what: str, error: type[ValueError] = RegistryError) -> Iterator[None]:
    """Turn store failures inside the block (MLflow, SQL, HTTP, disk) into a one-line ``error`` naming ``what``.

    Our own errors (``error`` and its subclasses) pass through unchanged.
    """
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except error:
        raise
    except MlflowException as exc:
        raise error(one_line(f"{what} ({redact(tracking_uri)}) failed: {exc.message}")) from exc
    except (SQLAlchemyError, RequestException, OSError) as exc:  # a database or server that went away, a full disk
        raise error(one_line(f"{what} ({redact(tracking_uri)}) failed: {type(exc).__name__}: {exc}")) from exc


@contextlib.contextmanager
def _fluent_store(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``tracking_uri`` for a block, then restore it.

    ``log_model`` has no tracking-URI argument, and the SQL registry store looks logged models
    up through the process-wide URI. ``mlflow.set_tracking_uri`` also writes (or, given None,
    deletes) ``MLFLOW_TRACKING_URI`` in the environment, so both are put back exactly as found.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_uri = tracking_utils._tracking_uri
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


# ---------------------------------------------------------------------------
# Scores and version tags
# ---------------------------------------------------------------------------


def finite_or_none(value: Any) -> float | None:
    """``float(value)`` when that is a finite number, else None (missing, NaN, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _score(values: Mapping[str, Any], metric: str, prefix: str = "") -> tuple[float, float]:
    """(metric, tie-break) for ranking; a missing or NaN value ranks lowest."""
    tie = TIE_BREAK_METRIC if metric != TIE_BREAK_METRIC else DEFAULT_METRIC
    primary, secondary = finite_or_none(values.get(prefix + metric)), finite_or_none(values.get(prefix + tie))
    return (primary if primary is not None else -math.inf, secondary if secondary is not None else -math.inf)


def _fmt(value: Any) -> str:
    number = finite_or_none(value)
    return f"{number:.4f}" if number is not None else "-"


def _check_metric(metric: str) -> None:
    if not metric.startswith("det/AP"):
        raise RegistryError(f"metric {metric!r} cannot rank detectors: use a COCO AP metric such as det/AP50 or det/AP "
                            "(higher is better)")


def eligible_runs(client: Any, experiment_id: str, metric: str = DEFAULT_METRIC) -> list[Any]:
    """Fine-tuning runs that may be registered, best first.

    A run qualifies when it is FINISHED, not pruned, has no ``ablate.error`` tag and a finite
    final ``metric`` (``run.data.metrics`` holds the value of the last step). Ordered by
    ``metric``, then ``det/AP``, then the earlier run first (stable across calls).
    """
    from mlflow.entities import ViewType

    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_STAGE}` = 'finetune'",
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=50000)
    ok = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get(TAG_PRUNED) != "true"
          and TAG_ERROR not in r.data.tags and finite_or_none(r.data.metrics.get(metric)) is not None]
    ok.sort(key=lambda r: r.info.start_time or 0)
    ok.sort(key=lambda r: _score(r.data.metrics, metric), reverse=True)  # stable: ties keep the earlier run
    return ok


# ---------------------------------------------------------------------------
# Logging a run's export as a pyfunc model
# ---------------------------------------------------------------------------


def encode_image(image: str | Path | bytes | np.ndarray) -> str:
    """The registered models' input value for one image: base64 text of a PNG/JPEG file.

    Args:
        image: a PNG/JPEG file path, its bytes, or a uint8 HxWx3 (or HxW) array (encoded as PNG).

    Example:
        ``model.predict(pd.DataFrame({"image": [encode_image("street.jpg")]}))``
    """
    if isinstance(image, np.ndarray):
        from PIL import Image

        if image.dtype != np.uint8:
            raise ValueError(f"image array has dtype {image.dtype}: pass uint8 pixels (0..255)")
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        data = buf.getvalue()
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        data = Path(image).read_bytes()
    return base64.b64encode(data).decode("ascii")


def example_image(height: int = 96, width: int = 128) -> np.ndarray:
    """A deterministic RGB test card (gradient background, a light square and a dark disc) as uint8 HxWx3."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                      np.full_like(x, 96)], axis=-1).astype(np.uint8)
    image[height // 4: height // 2, width // 8: width // 3] = (230, 230, 230)
    disc = (y - 2 * height // 3) ** 2 + (x - 2 * width // 3) ** 2 <= (min(height, width) // 6) ** 2
    image[disc] = (20, 20, 20)
    return image


def _signature(kind: str, width: int | None) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("string", "image")])
    if kind == DETECTOR:
        outputs = Schema([ColSpec("long", "image"), ColSpec("double", "x_min"), ColSpec("double", "y_min"),
                          ColSpec("double", "x_max"), ColSpec("double", "y_max"), ColSpec("double", "score"),
                          ColSpec("long", "label"), ColSpec("long", "category_id"), ColSpec("string", "category_name")])
        params = ParamSchema([ParamSpec("score_threshold", "double", 0.0)])
    else:
        outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, int(width or -1)))])
        params = ParamSchema([ParamSpec("image_size", "long", 224)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _requirements() -> list[str]:
    out = []
    for package in MODEL_REQUIREMENTS:
        try:
            out.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(package)
    return out


def _resolved_config(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The run's resolved config as recorded in the export (detector.json ``config``; backbone.json's fields)."""
    if isinstance(record.get("config"), Mapping):
        return dict(record["config"])
    return {k: v for k, v in record.items() if k not in ("format", "sha256", "metrics", "git_sha", "trainer")}


def _stage_export(client: Any, run: Any, spec: ModelKind, into: Path) -> tuple[Path, dict[str, Any], str]:
    """Download the run's ``<kind>/`` export, check it and add ``config.json`` / ``config.yaml``.

    Returns the folder, the export's JSON record and the weights' sha256.
    """
    from trainers.checkpoints import sha256_file

    run_id = run.info.run_id
    names = {PurePosixPath(f.path).name for f in client.list_artifacts(run_id, spec.kind)}
    missing = [n for n in (spec.weights, spec.config) if n not in names]
    if missing:
        raise RegistryError(f"run {run_id} ({run.data.tags.get(TAG_NAME, '?')}) has no {spec.kind}/"
                            f"{' or '.join(missing)} artifact: it did not finish exporting; re-run it with `ablate launch`")
    folder = into / spec.kind
    folder.mkdir(parents=True)
    for name in (spec.weights, spec.config):
        client.download_artifacts(run_id, f"{spec.kind}/{name}", str(folder))  # a file lands as folder/<name>
    record = json.loads((folder / spec.config).read_text())
    digest = sha256_file(folder / spec.weights)
    if record.get("sha256") and record["sha256"] != digest:
        raise RegistryError(f"run {run_id}: {spec.kind}/{spec.weights} does not match the sha256 in {spec.config} "
                            "(artifact corrupted); re-run the trial")
    config = _resolved_config(spec.kind, record)
    (folder / CONFIG_JSON).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    (folder / CONFIG_YAML).write_text(yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=True))
    return folder, record, digest


def _final_step(client: Any, run_id: str, metric: str) -> int:
    """The step (epoch) of a run's last ``metric`` value: the logged model is linked to that epoch's metrics."""
    history = client.get_metric_history(run_id, metric)
    return max((m.step for m in history), default=0)


def _log_model(tracking_uri: str, client: Any, run: Any, spec: ModelKind, folder: Path, record: Mapping[str, Any],
               step: int) -> Any:
    """Log ``folder`` as a pyfunc model from code into ``run`` (re-opened for the call); returns the ModelInfo."""
    import mlflow
    import pandas as pd

    width = None
    if spec.kind == BACKBONE:
        from trainers.resnet import TRUNK_CHANNELS

        width = TRUNK_CHANNELS.get(str(record.get("arch")))
    example = pd.DataFrame({"image": [encode_image(example_image())]})
    status = run.info.status
    with _fluent_store(tracking_uri):
        if mlflow.active_run() is not None:
            raise RegistryError(f"cannot log the {spec.kind} model while MLflow run {mlflow.active_run().info.run_id} "
                                "is active in this process; end it first")
        # Re-opening the finished run attaches the model to it (lineage: the version's run is
        # the trial's run); end_run restores its terminal status.
        try:
            with mlflow.start_run(run_id=run.info.run_id, log_system_metrics=False):
                info = mlflow.pyfunc.log_model(
                    # not named like the run's `<kind>/` artifact folder: MLflow lists a logged model's files
                    # under its name, and a clash makes `list_artifacts(run, "<kind>")` resolve the model instead
                    name=f"{spec.kind}_model", python_model=str(spec.code), artifacts={spec.kind: str(folder)},
                    code_paths=[str(TRAINERS_DIR)], signature=_signature(spec.kind, width), input_example=example,
                    pip_requirements=_requirements(), step=step,
                    metadata={"ablate_kind": spec.kind, "weights": f"artifacts/{spec.kind}/{spec.weights}"},
                )
        finally:
            # start_run set RUNNING, and a failure inside it FAILED: the trial's own outcome stays as it was
            client.set_terminated(run.info.run_id, status, end_time=run.info.end_time)
    return info


def _version_tags(run: Any, spec: ModelKind, study: str, digest: str) -> dict[str, str]:
    tags = {TAG_KIND: spec.kind, TAG_STUDY: study, TAG_RUN: run.info.run_id, TAG_WEIGHTS_SHA: digest,
            TAG_WEIGHTS_FILE: spec.weights}
    for key in (TAG_NAME, TAG_HASH, TAG_UPSTREAM, TAG_GIT, TAG_SEED):
        if key in run.data.tags:
            tags[key] = run.data.tags[key]
    for key, value in run.data.metrics.items():
        tags[key] = repr(float(value))
    return tags


def _ensure_registered_model(client: Any, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=description)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _versions(client: Any, name: str) -> list[Any]:
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def _register_run(tracking_uri: str, client: Any, study: str, run: Any, spec: ModelKind) -> tuple[Any, bool]:
    """The registered version of ``run`` under ``<study>-<kind>``: the existing one, or a new one.

    Returns (model version, created).
    """
    name = model_name(study, spec.kind)
    if run.data.tags.get(TAG_STAGE) != spec.stage:
        raise RegistryError(f"run {run.info.run_id} is a {run.data.tags.get(TAG_STAGE, 'untagged')!r} run, not a "
                            f"{spec.stage} run: it cannot be registered as {name}")
    _ensure_registered_model(client, name, f"{spec.kind} of study {study} (registered by `ablate register`)")
    for version in _versions(client, name):
        # Same run and same kind tag: already registered (e.g. a second `ablate register`).
        if version.tags.get(TAG_RUN) == run.info.run_id and version.tags.get(TAG_KIND) == spec.kind:
            return version, False
    with tempfile.TemporaryDirectory(prefix="ablate-register-") as tmp:
        folder, record, digest = _stage_export(client, run, spec, Path(tmp))
        metric = DEFAULT_METRIC if spec.kind == DETECTOR else "swav/loss"
        info = _log_model(tracking_uri, client, run, spec, folder, record, _final_step(client, run.info.run_id, metric))
    with _fluent_store(tracking_uri):  # the SQL registry resolves ``models:/<model_id>`` through the global URI
        version = client.create_model_version(
            name, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id,
            tags=_version_tags(run, spec, study, digest),
            description=f"{run.data.tags.get(TAG_NAME, run.info.run_id)} (run {run.info.run_id})",
        )
    return client.get_model_version(name, version.version), True


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if _is_missing(exc) or exc.error_code == "INVALID_PARAMETER_VALUE":
            return None
        raise


def _promote(client: Any, name: str, version: Any, metric: str, prefix: str = "") -> str:
    """Move ``champion`` to ``version`` if it scores strictly higher than the current champion; describe what happened."""
    current = _champion(client, name)
    new_score = _score(version.tags, metric, prefix)
    if current is None:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        return f"champion -> v{version.version}"
    if current.version == version.version:
        return f"v{version.version} is the champion"
    old_score = _score(current.tags, metric, prefix)
    if new_score > old_score:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        return f"champion v{current.version} -> v{version.version} ({metric} {_fmt(old_score[0])} -> {_fmt(new_score[0])})"
    return f"champion stays v{current.version} ({metric} {_fmt(old_score[0])} >= {_fmt(new_score[0])})"


def register_best(tracking_uri: str, study: str, metric: str = DEFAULT_METRIC) -> str:
    """Register the study's best fine-tuning run (and its backbone); returns a one-line message.

    Best = highest final ``metric`` (default ``det/AP50``; ties broken by ``det/AP``) among
    FINISHED, unpruned, error-free runs with a finite value. The run's detector is logged to
    the run as a pyfunc model and registered as a new version of ``<study>-detector`` (unless
    that run is registered already); its pretraining run, unless scratch, likewise under
    ``<study>-backbone``. ``champion`` moves only to a strictly better version.

    Raises:
        RegistryError: unknown study, no eligible run, missing export, unreachable store.
    """
    _check_metric(metric)
    client = _client(tracking_uri)
    with store_errors(tracking_uri, f"registering the best model of study {study!r}"):
        experiment = client.get_experiment_by_name(study)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            names = sorted(e.name for e in client.search_experiments())
            raise RegistryError(f"no study {study!r} in {redact(tracking_uri)}; studies: {', '.join(names) or 'none'}")
        candidates = eligible_runs(client, experiment.experiment_id, metric)
        if not candidates:
            raise RegistryError(f"study {study!r} has no finished, unpruned fine-tuning run with a finite {metric}; "
                                "nothing to register (see `ablate report` for failed and pruned trials)")
        best = candidates[0]
        detector, created = _register_run(tracking_uri, client, study, best, KINDS[DETECTOR])
        det_name = model_name(study, DETECTOR)
        what = "registered" if created else "already registered"
        parts = [f"{det_name} v{detector.version} {what} (run {best.info.run_id[:8]} "
                 f"{best.data.tags.get(TAG_NAME, '')}, {metric} {_fmt(best.data.metrics.get(metric))}); "
                 + _promote(client, det_name, detector, metric)]
        upstream = best.data.tags.get(TAG_UPSTREAM, "")
        if upstream and upstream != "scratch":
            parts.append(_register_backbone(tracking_uri, client, study, best, upstream, metric))
        else:
            parts.append("no backbone to register (scratch baseline)")
        return "; ".join(parts)


def _register_backbone(tracking_uri: str, client: Any, study: str, detector_run: Any, upstream: str, metric: str) -> str:
    """Register the detector's pretraining run and record the detector's score on the backbone version."""
    from mlflow.exceptions import MlflowException

    try:
        pre = client.get_run(upstream)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        # A deleted or foreign pretraining run: say so and keep the detector registered.
        return f"backbone run {upstream} not found; backbone not registered"
    version, created = _register_run(tracking_uri, client, study, pre, KINDS[BACKBONE])
    name = model_name(study, BACKBONE)
    # The backbone's score is its best downstream detector's: update it when this one is better.
    if _score(detector_run.data.metrics, metric) > _score(version.tags, metric, DOWNSTREAM_PREFIX):
        for key, value in detector_run.data.metrics.items():
            if key.startswith("det/"):
                client.set_model_version_tag(name, version.version, DOWNSTREAM_PREFIX + key, repr(float(value)))
        client.set_model_version_tag(name, version.version, TAG_DOWNSTREAM_RUN, detector_run.info.run_id)
        version = client.get_model_version(name, version.version)
    what = "registered" if created else "already registered"
    return f"{name} v{version.version} {what} (run {upstream[:8]} {pre.data.tags.get(TAG_NAME, '')}); " + \
        _promote(client, name, version, metric, DOWNSTREAM_PREFIX)


# ---------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------


def list_models(tracking_uri: str) -> str:
    """A text table of every registered model version: aliases, scores, run and trial name.

    For a backbone, AP50 / AP are those of the best detector fine-tuned on it (``downstream.*`` tags).
    """
    client = _client(tracking_uri)
    with store_errors(tracking_uri, "listing registered models"):
        models = sorted(client.search_registered_models(max_results=1000), key=lambda m: m.name)
        header = ["model", "version", "aliases", "AP50", "AP", "run", "trial", "registered"]
        rows: list[list[str]] = []
        for model in models:
            aliases: dict[str, list[str]] = {}
            for alias, version in (model.aliases or {}).items():
                aliases.setdefault(str(version), []).append(alias)
            for v in _versions(client, model.name):
                prefix = DOWNSTREAM_PREFIX if v.tags.get(TAG_KIND) == BACKBONE else ""
                rows.append([
                    model.name, str(v.version), ",".join(sorted(aliases.get(str(v.version), []))) or "-",
                    _fmt(v.tags.get(prefix + DEFAULT_METRIC)), _fmt(v.tags.get(prefix + TIE_BREAK_METRIC)),
                    (v.run_id or v.tags.get(TAG_RUN, "-"))[:8], v.tags.get(TAG_NAME, "-"),
                    time.strftime("%Y-%m-%d %H:%M", time.localtime((v.creation_timestamp or 0) / 1000)),
                ])
    if not rows:
        return f"no registered models in {redact(tracking_uri)} (run `ablate register STUDY` after a launch)"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.append("(backbone AP50/AP: its best downstream detector)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Pulling
# ---------------------------------------------------------------------------


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION`` -> (name, alias, version); a bare name means ``@champion``."""
    match = SPEC_RE.match(spec.strip())
    if not match:
        raise RegistryError(f"model spec {spec!r} is invalid: use NAME, NAME@ALIAS or NAME/VERSION, "
                            "e.g. norm_type-detector@champion or norm_type-detector/3")
    name, alias, version = match.group("name"), match.group("alias"), match.group("version")
    if alias is None and version is None:
        alias = CHAMPION
    return name, alias, version


def safe_relpath(path: str) -> PurePosixPath:
    """An artifact path checked to stay inside its folder: no ``..``, not absolute, no drive or backslash.

    Raises:
        RegistryError: the path could escape the destination folder.
    """
    bad = (not path or "\x00" in path or "\\" in path or path.startswith("/") or re.match(r"^[A-Za-z]:", path)
           or any(part in ("..", "") for part in path.split("/")))
    if bad:
        raise RegistryError(f"refusing artifact path {path!r}: it could write outside the destination folder "
                            "(absolute, '..' or a drive); the model's artifacts look tampered with")
    return PurePosixPath(path)


def _resolve_version(client: Any, name: str, alias: str | None, version: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        known = sorted(m.name for m in client.search_registered_models(max_results=1000))
        raise RegistryError(f"no registered model {name!r}; registered: {', '.join(known) or 'none'} "
                            "(`ablate models` lists them)") from exc
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if not (_is_missing(exc) or exc.error_code == "INVALID_PARAMETER_VALUE"):
            raise
        if alias is not None:
            have = ", ".join(f"{a} -> v{v}" for a, v in sorted((model.aliases or {}).items())) or "none"
            raise RegistryError(f"{name} has no alias {alias!r}; aliases: {have}") from exc
        have = ", ".join(str(v.version) for v in _versions(client, name)) or "none"
        raise RegistryError(f"{name} has no version {version}; versions: {have}") from exc


def _list_files(repo: Any, path: str | None = None) -> list[PurePosixPath]:
    """Every file below ``path`` in an artifact repository; each listed path is checked with :func:`safe_relpath`."""
    out: list[PurePosixPath] = []
    for info in repo.list_artifacts(path):
        rel = safe_relpath(info.path)
        if info.is_dir:
            out.extend(_list_files(repo, str(rel)))
        else:
            out.append(rel)
    return out


def _local_root(uri: str) -> Path | None:
    """The folder behind a local artifact URI (``file://`` or a plain path); None for remote stores."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    if uri.startswith("file:") or "://" not in uri:
        return Path(local_file_uri_to_path(uri))
    return None


def _inside(path: Path, root: Path) -> bool:
    return path.resolve() == root.resolve() or root.resolve() in path.resolve().parents


def _download_version(client: Any, tracking_uri: str, name: str, version: Any, staging: Path) -> str:
    """Download the version's ``artifacts/<kind>/`` files into ``staging`` (flat); returns the kind."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    uri = client.get_model_version_download_uri(name, version.version)
    repo = get_artifact_repository(uri, tracking_uri=tracking_uri, registry_uri=tracking_uri)
    files = _list_files(repo)
    kind = version.tags.get(TAG_KIND)
    if kind not in KINDS:
        kinds = [k for k in KINDS if any(f.parts[:2] == ("artifacts", k) for f in files)]
        if len(kinds) != 1:
            raise RegistryError(f"{name} v{version.version} is not an ablate detector or backbone (no artifacts/detector/ "
                                "or artifacts/backbone/ folder)")
        kind = kinds[0]
    wanted = [f for f in files if f.parts[:2] == ("artifacts", kind) and len(f.parts) > 2]
    root = _local_root(uri)
    (staging / "_raw").mkdir()
    for rel in wanted:
        if root is not None:
            source = root / rel
            if source.is_symlink() and not _inside(source, root):
                raise RegistryError(f"refusing artifact {rel}: it is a symlink pointing outside the model's artifacts "
                                    f"({os.readlink(source)})")
        local = Path(repo.download_artifacts(str(rel), dst_path=str(staging / "_raw")))
        if not _inside(local, staging) or local.is_symlink():
            raise RegistryError(f"refusing artifact {rel}: it was written outside the destination or as a symlink")
        target = staging.joinpath(*rel.parts[2:])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(local), str(target))
    shutil.rmtree(staging / "_raw", ignore_errors=True)
    for path in staging.rglob("*"):
        if path.is_symlink() and not _inside(path, staging):
            raise RegistryError(f"refusing {path.name}: a symlink pointing outside the destination")
    spec = KINDS[kind]
    for needed in (spec.weights, spec.config):
        if not (staging / needed).is_file():
            raise RegistryError(f"{name} v{version.version} lacks artifacts/{kind}/{needed}; re-register it "
                                f"(`ablate register STUDY`)")
    return kind


def _verify(staging: Path, spec: ModelKind, name: str, version: Any) -> None:
    """The weights' sha256 equals the one recorded at registration, and the JSON is a valid export."""
    from trainers.checkpoints import CheckpointError, read_backbone_config, sha256_file
    from trainers.detection import read_detector_config

    digest = sha256_file(staging / spec.weights)
    expected = version.tags.get(TAG_WEIGHTS_SHA)
    if not expected:
        raise RegistryError(f"{name} v{version.version} has no {TAG_WEIGHTS_SHA} tag: it was not registered by ablate, "
                            "so its weights cannot be verified")
    if digest != expected:
        raise RegistryError(f"{name} v{version.version}: {spec.weights} has sha256 {digest[:12]}..., registration "
                            f"recorded {expected[:12]}... (corrupted or replaced in the artifact store); nothing written")
    try:
        record = read_detector_config(staging) if spec.kind == DETECTOR else read_backbone_config(staging)
    except CheckpointError as exc:
        raise RegistryError(one_line(f"{name} v{version.version}: {exc}")) from exc
    if record.get("sha256") and record["sha256"] != digest:
        raise RegistryError(f"{name} v{version.version}: {spec.config} records a different sha256 than its weights")


def model_card(name: str, version: Any, aliases: Sequence[str], kind: str, dest: Path, tracking_uri: str) -> str:
    """The MODEL_CARD.md text: metrics, lineage and how to load the pulled folder."""
    tags = version.tags
    prefix = DOWNSTREAM_PREFIX if kind == BACKBONE else ""
    metric_keys = sorted(k for k in tags if k.startswith(("det/", "swav/", DOWNSTREAM_PREFIX + "det/")))
    lines = [f"# {name} v{version.version}" + (f" ({', '.join(aliases)})" if aliases else ""), ""]
    lines.append(f"{kind.capitalize()} registered from study `{tags.get(TAG_STUDY, '?')}` "
                 f"({redact(tracking_uri)}); trial `{tags.get(TAG_NAME, '?')}`.")
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(tags[k])} |" for k in metric_keys] or ["| - | - |"]
    if kind == BACKBONE:
        lines += ["", f"`{DOWNSTREAM_PREFIX}*`: the best detector fine-tuned on this backbone "
                  f"(run `{tags.get(TAG_DOWNSTREAM_RUN, '?')}`); {prefix}{DEFAULT_METRIC} ranks backbones."]
    upstream = tags.get(TAG_UPSTREAM, "")
    lines += ["", "## Lineage", "",
              f"- {'fine-tuning' if kind == DETECTOR else 'pretraining'} run: `{version.run_id or tags.get(TAG_RUN, '?')}`",
              f"- config hash: `{tags.get(TAG_HASH, '?')}` (resolved config: `{CONFIG_JSON}`, `{CONFIG_YAML}`)",
              f"- git sha: `{tags.get(TAG_GIT, '?')}`",
              f"- weights: `{KINDS[kind].weights}`, sha256 `{tags.get(TAG_WEIGHTS_SHA, '?')}` (verified on pull)"]
    if kind == DETECTOR:
        lines.append("- upstream backbone: " + ("none (scratch baseline)" if upstream in ("", "scratch")
                                                else f"pretraining run `{upstream}`"))
    if tags.get(TAG_SEED):
        lines.append(f"- seed: {tags[TAG_SEED]}")
    lines += ["", "## How to load", "", "```python"]
    if kind == DETECTOR:
        lines += ["from trainers.detection import load_detector", "", f'model = load_detector("{dest}")  # eval mode, CPU',
                  "# images: list of float 3xHxW tensors in [0, 1]; returns boxes (xyxy), labels (1..C), scores",
                  "# detector.json maps labels to COCO category ids (label_to_cat_id) and names (class_names)"]
    else:
        lines += ["from trainers.swav import load_backbone", "", f'trunk = load_backbone("{dest}")  # ResNet, fc = Identity',
                  "# or fine-tune a detector on it:", f"#   ablate finetune CONFIG.yaml --set backbone={dest}"]
    lines += ["```", "", "Served or loaded through MLflow (input: a DataFrame column `image` of base64 PNG/JPEG text):",
              "", "```python", "import mlflow, pandas as pd", "from experiments.registry import encode_image", "",
              f'model = mlflow.pyfunc.load_model("models:/{name}/{version.version}")',
              'model.predict(pd.DataFrame({"image": [encode_image("photo.jpg")]}))', "```", "",
              "Written by `ablate pull`: `ablate pull --overwrite` replaces this folder only while it holds "
              "nothing but the pulled files.", ""]
    return "\n".join(lines)


# Folders a pull replaces: exactly the files it writes, nothing else.
PULL_FILES = frozenset({MODEL_CARD, CONFIG_JSON, CONFIG_YAML, *(k.weights for k in KINDS.values()),
                        *(k.config for k in KINDS.values())})
CARD_TITLE_RE = re.compile(r"^# [A-Za-z0-9][A-Za-z0-9_.\-]* v\d+\b")  # model_card's first line
CARD_MARK = "(verified on pull)"  # in model_card's lineage section, in every card a pull has written
LISTED_ENTRIES = 5  # how many of a refused folder's entries an error names


def _entry_label(path: Path) -> str:
    return path.name + ("/" if path.is_dir() and not path.is_symlink() else "")


def _describe_entries(labels: Sequence[str]) -> str:
    """``a.txt, mlruns/, src/ and 9 more (12 entries)``: a few names and the count."""
    shown = ", ".join(labels[:LISTED_ENTRIES])
    more = f" and {len(labels) - LISTED_ENTRIES} more" if len(labels) > LISTED_ENTRIES else ""
    return f"{shown}{more} ({len(labels)} entr{'y' if len(labels) == 1 else 'ies'})"


def _not_an_earlier_pull(folder: Path) -> str | None:
    """What keeps the non-empty ``folder`` from counting as an earlier pull; None when it is one.

    An earlier pull holds nothing but plain files named like those :func:`pull` writes, among
    them a ``MODEL_CARD.md`` that :func:`model_card` wrote (its title line and its "verified on
    pull" note). A folder, a symlink or any other name is foreign.
    """
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    foreign = [_entry_label(p) for p in entries if p.name not in PULL_FILES or p.is_symlink() or not p.is_file()]
    if foreign:
        return f"it holds {_describe_entries(foreign)} that `ablate pull` does not write"
    card = folder / MODEL_CARD
    if not card.is_file():
        return f"it holds {_describe_entries([p.name for p in entries])} but no {MODEL_CARD} of an earlier pull"
    with card.open("r", encoding="utf-8", errors="replace") as fh:
        text = fh.read(64 * 1024)  # a card is a few KiB; a huge file is not ours anyway
    if not CARD_TITLE_RE.match(text) or CARD_MARK not in text:
        return f"its {MODEL_CARD} was not written by `ablate pull`"
    return None


def _store_folders(tracking_uri: str) -> list[tuple[Path, str]]:
    """The local folders of the tracking store, each with what it is: the sqlite file's folder and
    its artifact root, or a file store; none for a server."""
    from experiments.tracking import artifact_root_for

    out: list[tuple[Path, str]] = []
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])
        out.append((db.parent, f"the MLflow store {db}"))
        root = artifact_root_for(tracking_uri)
        local = _local_root(root) if root else None
        if local is not None:
            out.append((local, f"the artifact root {local} (every checkpoint and registered model)"))
    elif tracking_uri.startswith("file:") or ("://" not in tracking_uri and tracking_uri.strip()):
        local = _local_root(tracking_uri)
        if local is not None:
            out.append((local, f"the MLflow file store {local}"))
    return out


def _protected_reason(dest: Path, tracking_uri: str) -> str | None:
    """Why ``dest`` must never be replaced by a pull (None when it may): the current folder, the
    home folder, the filesystem root, an ancestor of the working directory or of the local store."""
    real = Path(os.path.realpath(dest))
    if real == Path(real.anchor):
        return "is the filesystem root"
    try:
        cwd = Path(os.path.realpath(Path.cwd()))
    except OSError:  # the working directory was deleted: nothing to protect there
        cwd = None
    if cwd is not None and real == cwd:
        return "is the current folder"
    if real == Path(os.path.realpath(Path.home())):
        return "is your home folder"
    if cwd is not None and real in cwd.parents:
        return f"contains the working directory {cwd}"
    for folder, what in _store_folders(tracking_uri):
        store = Path(os.path.realpath(folder))
        if real == store or real in store.parents:
            return f"contains {what}"
    return None


def _check_dest(dest: Path, overwrite: bool, tracking_uri: str) -> None:
    """Refuse a destination a pull must not write or replace; see :func:`pull` for the rules.

    Raises:
        RegistryError: naming the folder, what is in the way and the fix; nothing is deleted.
    """
    fix = "pull into a folder of its own, e.g. --dest pulled_model"
    if dest.is_symlink():
        raise RegistryError(f"destination {dest} is a symlink (to {os.readlink(dest)}); pass the folder itself, "
                            f"or {fix}")
    if dest.exists() and not dest.is_dir():
        raise RegistryError(f"destination {dest} exists and is not a folder; choose another --dest")
    reason = _protected_reason(dest, tracking_uri)
    if reason is not None:
        raise RegistryError(f"destination {dest} {reason}: a pull never replaces it (nothing was deleted); {fix}")
    if not dest.is_dir():
        return
    try:
        empty = not any(dest.iterdir())
        problem = None if empty else _not_an_earlier_pull(dest)
    except OSError as exc:
        raise RegistryError(f"destination {dest} cannot be read ({exc.strerror or exc}); choose another --dest") from exc
    if empty:
        return
    if problem is not None:
        why = ("--overwrite only replaces an earlier pull (MODEL_CARD.md and the model files, nothing else), so "
               "nothing was deleted" if overwrite else "nothing was written")
        raise RegistryError(f"destination {dest} is not empty and not an earlier pull: {problem}; {why}; {fix} "
                            "(a new or empty folder)")
    if not overwrite:
        raise RegistryError(f"destination {dest} is not empty: it holds an earlier pull; pass --overwrite to "
                            "replace it, or choose another --dest")


def _prepare_dest(dest: Path, overwrite: bool, tracking_uri: str = "") -> Path:
    """Check that ``dest`` can be written (:func:`_check_dest`); returns a fresh staging folder beside it."""
    _check_dest(dest, overwrite, tracking_uri)
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=parent))
    except OSError as exc:
        raise RegistryError(f"destination {dest} is not writable ({exc.strerror or exc}); choose another --dest") from exc


def _remove_earlier_pull(folder: Path) -> None:
    """Delete the files an earlier pull wrote, then the folder; anything else found there is left alone."""
    for entry in folder.iterdir():
        if entry.name in PULL_FILES and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(OSError):
                entry.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()  # fails, and keeps the folder, if something else appeared in it


def _move_into_place(staging: Path, dest: Path) -> None:
    """Replace ``dest`` by ``staging`` with renames in the same folder (no half-written state visible).

    A non-empty ``dest`` is checked again right before (it may have changed during the download):
    only an earlier pull is replaced, and only its own files are deleted.
    """
    old = None
    if dest.exists():
        if dest.is_symlink() or not dest.is_dir():
            raise RegistryError(f"destination {dest} changed during the pull (now a file or symlink); nothing replaced")
        problem = _not_an_earlier_pull(dest) if any(dest.iterdir()) else None
        if problem is not None:
            raise RegistryError(f"destination {dest} changed during the pull: {problem}; nothing replaced, "
                                "choose another --dest")
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.time_ns()}")
        dest.rename(old)
    try:
        staging.rename(dest)
    except OSError:
        if old is not None:
            old.rename(dest)
        raise
    if old is not None:
        _remove_earlier_pull(old)


def pull(spec: str, dest: str | Path, tracking_uri: str, overwrite: bool = False) -> Path:
    """Download a registered model version into ``dest``, verified and ready to load.

    ``dest`` receives the weights (``detector.safetensors`` or ``backbone.safetensors``), their
    JSON (``detector.json`` / ``backbone.json``), the resolved config (``config.json``,
    ``config.yaml``) — the same files as ``mlflow artifacts download -u models:/SPEC`` puts
    under ``artifacts/<kind>/`` — and ``MODEL_CARD.md``.

    ``dest`` must be new or empty, or — with ``overwrite`` — hold an earlier pull and nothing
    else (plain files with the names above, the model card among them). Never replaced, even
    empty or with ``overwrite``: the current folder, the home folder, the filesystem root, an
    ancestor of the working directory, and the local tracking store's folders (the sqlite
    file's folder, its artifact root, a file store) and their ancestors.

    Args:
        spec: ``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION`` (a bare name means ``@champion``).
        dest: target folder (see above).
        tracking_uri: the MLflow store.
        overwrite: replace an earlier pull in ``dest``.

    Returns:
        ``dest`` as a Path.

    Raises:
        RegistryError: bad spec, unknown model / alias / version, unreachable store, destination
            protected, not writable, or holding anything but an earlier pull (that one too
            without ``overwrite``), checksum mismatch, unsafe artifact paths.
    """
    name, alias, version_id = parse_spec(spec)
    dest = Path(dest).expanduser().absolute()
    client = _client(tracking_uri)
    with store_errors(tracking_uri, f"looking up {spec}"):
        version = _resolve_version(client, name, alias, version_id)
    staging = _prepare_dest(dest, overwrite, tracking_uri)
    try:
        with store_errors(tracking_uri, f"downloading {name} v{version.version}"):
            kind = _download_version(client, tracking_uri, name, version, staging)
        _verify(staging, KINDS[kind], name, version)
        aliases = sorted(version.aliases or [])
        (staging / MODEL_CARD).write_text(model_card(name, version, aliases, kind, dest, tracking_uri))
        _move_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
