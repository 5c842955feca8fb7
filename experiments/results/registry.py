"""The model registry: register a study's best detector (and its backbone), list the versions.

Registered models, per study:

* ``<study>-detector`` — versions are fine-tuning runs. Each version is an MLflow pyfunc
  "model from code" (``experiments/results/pyfunc_models/detector.py``) logged to the fine-tuning run
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

``ablate pull`` (:mod:`experiments.results.pull`) fetches a version as a verified folder with its model card.

Errors the user can act on (unknown study / model / alias / version, a store that cannot be
reached, a destination that cannot be written, a corrupted or unsafe artifact) raise
:class:`RegistryError`, a ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np
import yaml

from experiments.results.pyfunc_models import BACKBONE_CODE, DETECTOR_CODE
from experiments.store.redaction import redact
from experiments.store.sqlite_reader import ACTIVE_ONLY, read_client
from experiments.store.checks import check_store, finite_or_none, fluent_store, is_missing, store_errors
from experiments.store.tracking import UPSTREAM_SCRATCH, uri_to_read, usable_run
from trainers.vocabulary import (
    DET_AP,
    DET_AP50,
    DET_PREFIX,
    STAGE_FINETUNE,
    STAGE_PRETRAIN,
    STAGE_RECORDS,
    SWAV_LOSS,
    SWAV_LOSS_OVER_LN_K,
    TAG_GIT,
    TAG_HASH,
    TAG_KIND,
    TAG_NAME,
    TAG_RUN,
    TAG_SEED,
    TAG_STAGE,
    TAG_STUDY,
    TAG_UPSTREAM,
    TAG_WEIGHTS_FILE,
    TAG_WEIGHTS_SHA,
)

CHAMPION = "champion"
DEFAULT_METRIC = DET_AP50
TIE_BREAK_METRIC = DET_AP
# a registered model's kind: its stage's export (the folder of the run's artifacts it comes from)
DETECTOR, BACKBONE = STAGE_RECORDS[STAGE_FINETUNE].export, STAGE_RECORDS[STAGE_PRETRAIN].export
CONFIG_JSON, CONFIG_YAML = "config.json", "config.yaml"

# Model-version tags (besides the run's metrics, tagged under their own names, and trainers.vocabulary's TAG_*).
TAG_DOWNSTREAM_RUN = "downstream.run_id"
DOWNSTREAM_PREFIX = "downstream."

TRAINERS_DIR = Path(__file__).resolve().parents[2] / "trainers"
# What the logged model needs to run: pinned to this environment's versions when installed.
MODEL_REQUIREMENTS = ("torch", "torchvision", "safetensors", "numpy", "pandas", "pillow", "pycocotools",
                      "matplotlib", "pyyaml", "tqdm", "mlflow")


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
    DETECTOR: ModelKind(DETECTOR, STAGE_FINETUNE, "detector.safetensors", "detector.json", DETECTOR_CODE),
    BACKBONE: ModelKind(BACKBONE, STAGE_PRETRAIN, "backbone.safetensors", "backbone.json", BACKBONE_CODE),
}


def model_name(study: str, kind: str) -> str:
    """``<study>-detector`` or ``<study>-backbone``; the study name must pass the launch's rule, so `pull` parses it."""
    from experiments.spaces import validate_study_name  # lazy: spaces imports the trainers (torch)

    return f"{validate_study_name(study, RegistryError)}-{kind}"


def open_registry(tracking_uri: str, read_only: bool = False) -> Any:
    """An ``MlflowClient`` on the tracking store and its model registry (the same URI); ``read_only``: on a local
    sqlite store, :class:`~experiments.store.sqlite_reader.SqliteReader` (no MLflow import) for a command that only reads.

    Raises:
        RegistryError: the store cannot be reached.
    """
    check_store(tracking_uri, RegistryError)
    if read_only:
        return read_client(tracking_uri, registry=True)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


# ---------------------------------------------------------------------------
# Scores and version tags
# ---------------------------------------------------------------------------


def _score(values: Mapping[str, Any], metric: str, prefix: str = "") -> tuple[float, float]:
    """(metric, tie-break) for ranking; a missing or NaN value ranks lowest."""
    tie = TIE_BREAK_METRIC if metric != TIE_BREAK_METRIC else DEFAULT_METRIC
    primary, secondary = finite_or_none(values.get(prefix + metric)), finite_or_none(values.get(prefix + tie))
    return (primary if primary is not None else -math.inf, secondary if secondary is not None else -math.inf)


def fmt_score(value: Any) -> str:
    """A metric value as shown in registry lines, tables and model cards: 4 decimals, ``-`` when not finite."""
    number = finite_or_none(value)
    return f"{number:.4f}" if number is not None else "-"


def _check_metric(metric: str) -> None:
    if not metric.startswith(DET_AP):
        raise RegistryError(f"metric {metric!r} cannot rank detectors: use a COCO AP metric such as det/AP50 or det/AP "
                            "(higher is better)")


def eligible_runs(client: Any, experiment_id: str, metric: str = DEFAULT_METRIC) -> list[Any]:
    """Fine-tuning runs that may be registered, best first.

    A run qualifies when it is usable (:func:`~experiments.store.tracking.usable_run`: FINISHED, not
    pruned, no ``ablate.error`` tag, a finite final ``metric``). Ordered by
    ``metric``, then ``det/AP``, then the earlier run first (stable across calls).
    """
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_STAGE}` = 'finetune'",
                              run_view_type=ACTIVE_ONLY, max_results=50000)
    ok = [r for r in runs if usable_run(r.info.status, r.data.tags, r.data.metrics, STAGE_FINETUNE, metric)]
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
    with fluent_store(tracking_uri):
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


def model_versions(client: Any, name: str) -> list[Any]:
    """Every version of a registered model, oldest first."""
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
    for version in model_versions(client, name):
        # Same run and same kind tag: already registered (e.g. a second `ablate register`).
        if version.tags.get(TAG_RUN) == run.info.run_id and version.tags.get(TAG_KIND) == spec.kind:
            return version, False
    with tempfile.TemporaryDirectory(prefix="ablate-register-") as tmp:
        folder, record, digest = _stage_export(client, run, spec, Path(tmp))
        metric = DEFAULT_METRIC if spec.kind == DETECTOR else SWAV_LOSS
        info = _log_model(tracking_uri, client, run, spec, folder, record, _final_step(client, run.info.run_id, metric))
    with fluent_store(tracking_uri):  # the SQL registry resolves ``models:/<model_id>`` through the global URI
        version = client.create_model_version(
            name, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id,
            tags=_version_tags(run, spec, study, digest),
            description=version_description(client, run),
        )
    return client.get_model_version(name, version.version), True


def version_description(client: Any, run: Any) -> str:
    """A model version's description (Markdown): the run, its final COCO metrics and the study's headline."""
    from experiments.results.headline import study_headline
    from trainers.vocabulary import METRIC_LABELS

    labels = {**METRIC_LABELS, SWAV_LOSS: SWAV_LOSS, SWAV_LOSS_OVER_LN_K: SWAV_LOSS_OVER_LN_K}
    shown = [f"{label} {run.data.metrics[key]:.3f}" for key, label in labels.items() if key in run.data.metrics]
    lines = [f"{run.data.tags.get(TAG_NAME, run.info.run_id)} (run {run.info.run_id})", "",
             "Final metrics: " + (", ".join(shown) or "none recorded")]
    if run.data.tags.get(TAG_STAGE) == "finetune":
        lines += ["", study_headline(client, run.info.experiment_id).markdown()]
    return "\n".join(lines)


def _champion(client: Any, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except Exception as exc:
        if is_missing(exc) or getattr(exc, "error_code", None) == "INVALID_PARAMETER_VALUE":
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
        return (f"champion v{current.version} -> v{version.version} "
                f"({metric} {fmt_score(old_score[0])} -> {fmt_score(new_score[0])})")
    return f"champion stays v{current.version} ({metric} {fmt_score(old_score[0])} >= {fmt_score(new_score[0])})"


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
    client = open_registry(tracking_uri)
    with store_errors(tracking_uri, f"registering the best model of study {study!r}", RegistryError):
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
                 f"{best.data.tags.get(TAG_NAME, '')}, {metric} {fmt_score(best.data.metrics.get(metric))}); "
                 + _promote(client, det_name, detector, metric)]
        upstream = best.data.tags.get(TAG_UPSTREAM, "")
        if upstream and upstream != UPSTREAM_SCRATCH:
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
        if not is_missing(exc):
            raise
        # A deleted or foreign pretraining run: say so and keep the detector registered.
        return f"backbone run {upstream} not found; backbone not registered"
    version, created = _register_run(tracking_uri, client, study, pre, KINDS[BACKBONE])
    name = model_name(study, BACKBONE)
    # The backbone's score is its best downstream detector's: update it when this one is better.
    if _score(detector_run.data.metrics, metric) > _score(version.tags, metric, DOWNSTREAM_PREFIX):
        for key, value in detector_run.data.metrics.items():
            if key.startswith(DET_PREFIX):
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
    client = open_registry(tracking_uri, read_only=True)
    with store_errors(tracking_uri, "listing registered models", RegistryError):
        models = sorted(client.search_registered_models(max_results=1000), key=lambda m: m.name)
        header = ["model", "version", "aliases", "AP50", "AP", "run", "trial", "registered"]
        rows: list[list[str]] = []
        for model in models:
            aliases: dict[str, list[str]] = {}
            for alias, version in (model.aliases or {}).items():
                aliases.setdefault(str(version), []).append(alias)
            for v in model_versions(client, model.name):
                prefix = DOWNSTREAM_PREFIX if v.tags.get(TAG_KIND) == BACKBONE else ""
                rows.append([
                    model.name, str(v.version), ",".join(sorted(aliases.get(str(v.version), []))) or "-",
                    fmt_score(v.tags.get(prefix + DEFAULT_METRIC)), fmt_score(v.tags.get(prefix + TIE_BREAK_METRIC)),
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


def register(subparsers: Any, name: str, summary: str, common: Any) -> None:
    """``ablate register STUDY [--metric KEY]`` (experiments/cli.py wires it)."""
    p = subparsers.add_parser(name, help=summary, parents=[common])
    p.add_argument("study", help="study name")
    p.add_argument("--metric", default=DET_AP50, help="what 'best' means (ties broken by det/AP)")
    p.set_defaults(run=lambda args: print(register_best(uri_to_read(args.tracking_uri), args.study, args.metric)) or 0)


def register_models(subparsers: Any, name: str, summary: str, common: Any) -> None:
    """``ablate models`` (experiments/cli.py wires it)."""
    p = subparsers.add_parser(name, help=summary, parents=[common])
    p.set_defaults(run=lambda args: print(list_models(uri_to_read(args.tracking_uri))) or 0)
