"""The registry against a real MLflow sqlite store: register best, champion, pull, pyfunc models, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.entities import FileInfo
from mlflow.tracking import MlflowClient

from experiments.results import registry
from experiments.results.pull import pull
from experiments.results.registry import RegistryError
from experiments.store.checks import fluent_store
from experiments.store.tracking import Tracker
from trainers.checkpoints import export_backbone, load_backbone_weights, sha256_file
from trainers.detection import DetectionConfig, build_detector, export_detector, load_detector
from trainers.resnet import build_trunk
from trainers.swav import load_backbone
from trainers import vocabulary as V
from trainers.vocabulary import (
    TAG_ERROR,
    TAG_GIT,
    TAG_HASH,
    TAG_NAME,
    TAG_PRUNED,
    TAG_PRUNE_REASON,
    TAG_SEED,
    TAG_STAGE,
    TAG_UPSTREAM,
)

STUDY = "regstudy"
DET, BB = f"{STUDY}-detector", f"{STUDY}-backbone"
CLASSES = ["disc", "square", "triangle"]
CAT_IDS = {1: 1, 2: 3, 3: 7}


def _export_detector(root: Path, name: str, seed: int) -> Path:
    data = root / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "ann.json").write_text("{}")
    cfg = DetectionConfig(
        backbone="scratch", arch="resnet18", norm="bn", head="mlp", min_size=64, max_size=96,
        rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, detections_per_img=10, seed=seed,
        train_images=str(data / "images"), train_annotations=str(data / "ann.json"),
        val_images=str(data / "images"), val_annotations=str(data / "ann.json"),
    )
    torch.manual_seed(seed)
    model = build_detector(cfg, num_classes=len(CLASSES))
    return export_detector(root / name, model, cfg, CLASSES, CAT_IDS, {"det/AP50": 0.0})


def _run(tracker: Tracker, parent: str, stage: str, name: str, metrics: dict[str, float], tags: dict[str, str],
         artifacts: Path | None = None, status: str = "FINISHED") -> str:
    run_id = tracker.create_run(name, {TAG_STAGE: stage, TAG_NAME: name, TAG_HASH: f"h-{name}", TAG_GIT: "abc123",
                                       TAG_PRUNED: "false", **tags}, parent_run_id=parent)
    tracker.log_params_tags(run_id, params={f"{stage}.arch": "resnet18", f"{stage}.seed": tags.get(TAG_SEED, "0")})
    for epoch in (1, 2):  # the last step's value is the run's final metric
        tracker.log_metrics(run_id, {k: (v / 2 if epoch == 1 else v) for k, v in metrics.items()}, step=epoch)
    if artifacts is not None:
        tracker.log_artifacts(run_id, artifacts, "detector" if stage == "finetune" else "backbone")
    tracker.finish(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A study with a backbone, eligible / pruned / failed / NaN fine-tuning runs, registered step by step.

    1. best eligible run A (upstream backbone P) -> detector v1, backbone v1 (pruned C, failed D and
       NaN E score higher but must be skipped); 2. the same call again -> no new version;
    3. better scratch run B -> v2, champion moves; 4. B deleted, worse run W -> v3, champion stays on v2.
    """
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    tracker = Tracker(uri, STUDY)
    parent = tracker.create_run("launch", {TAG_STAGE: "launch"})
    bb_dir = export_backbone(root / "bb", build_trunk("resnet18", "bn").state_dict(), {"arch": "resnet18", "norm": "bn"})
    exports = {n: _export_detector(root, n, s) for n, s in (("det_a", 1), ("det_b", 2), ("det_w", 3))}

    pre = _run(tracker, parent, "pretrain", "res18_ep2_p30", {"swav/loss": 3.1, "swav/ln_k": math.log(30)}, {}, bb_dir)
    ft = {"upstream": {TAG_UPSTREAM: pre, TAG_SEED: "0"}}
    a = _run(tracker, parent, "finetune", "res18_ep2_p30 · frozen_bn · mlp · 357 · seed0",
             {"det/AP50": 0.30, "det/AP": 0.10, "det/AP_small": float("nan")}, ft["upstream"], exports["det_a"])
    _run(tracker, parent, "finetune", "pruned", {"det/AP50": 0.90, "det/AP": 0.5},
         {TAG_UPSTREAM: pre, TAG_PRUNED: "true", TAG_PRUNE_REASON: "collapsed"}, exports["det_a"])
    _run(tracker, parent, "finetune", "failed", {"det/AP50": 0.95, "det/AP": 0.5},
         {TAG_UPSTREAM: pre, TAG_ERROR: "boom"}, exports["det_a"], status="FAILED")
    _run(tracker, parent, "finetune", "nan", {"det/AP50": float("nan"), "det/AP": 0.9}, {TAG_UPSTREAM: pre},
         exports["det_a"])
    steps = {"first": registry.register_best(uri, STUDY)}
    client = MlflowClient(uri, registry_uri=uri)
    steps["n_after_first"] = len(client.search_model_versions(f"name = '{DET}'"))
    steps["again"] = registry.register_best(uri, STUDY)
    steps["n_after_again"] = len(client.search_model_versions(f"name = '{DET}'"))

    b = _run(tracker, parent, "finetune", "scratch_res18 · frozen_bn · mlp · 357 · seed0",
             {"det/AP50": 0.50, "det/AP": 0.20}, {TAG_UPSTREAM: "scratch", TAG_SEED: "0"}, exports["det_b"])
    steps["better"] = registry.register_best(uri, STUDY)
    client.delete_run(b)
    w = _run(tracker, parent, "finetune", "res18_ep2_p30 · frozen_bn · mlp · 357 · seed1",
             {"det/AP50": 0.40, "det/AP": 0.15}, {TAG_UPSTREAM: pre, TAG_SEED: "1"}, exports["det_w"])
    steps["worse"] = registry.register_best(uri, STUDY)
    return {"root": root, "uri": uri, "client": client, "pre": pre, "a": a, "b": b, "w": w, "exports": exports,
            "bb_dir": bb_dir, "steps": steps}


def _model_dir(store: dict[str, Any], name: str, version: str) -> Path:
    """Where the local store keeps a version's model files."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    return Path(local_file_uri_to_path(store["client"].get_model_version_download_uri(name, version)))


def test_champion_moves_only_on_improvement(store: dict[str, Any]) -> None:
    client = store["client"]
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{DET}'")}
    assert sorted(versions, key=int) == ["1", "2", "3"]  # every version kept
    assert versions["1"].run_id == store["a"]  # pruned, failed and NaN runs were skipped
    assert versions["2"].run_id == store["b"] and versions["3"].run_id == store["w"]
    assert str(client.get_model_version_by_alias(DET, "champion").version) == "2"
    assert "champion stays v2" in store["steps"]["worse"]
    assert "champion v1 -> v2" in store["steps"]["better"]
    tags = versions["1"].tags
    assert float(tags["det/AP50"]) == pytest.approx(0.30) and float(tags["det/AP"]) == pytest.approx(0.10)
    assert tags[TAG_HASH] == "h-res18_ep2_p30 · frozen_bn · mlp · 357 · seed0"
    assert tags[TAG_UPSTREAM] == store["pre"] and tags[TAG_GIT] == "abc123"
    assert tags[V.TAG_WEIGHTS_SHA] == sha256_file(store["exports"]["det_a"] / "detector.safetensors")
    # the description says what the version scored and what the study found, not just a name and an id
    description = versions["1"].description
    assert description.startswith(f"res18_ep2_p30 · frozen_bn · mlp · 357 · seed0 (run {store['a']})")
    assert "Final metrics: AP@0.5 0.300, AP@[.5:.95] 0.100" in description
    assert "**Headline** (det/AP50, means over seeds)" in description and "- best trial: " in description


def test_registering_twice_makes_no_duplicate(store: dict[str, Any]) -> None:
    assert store["steps"]["n_after_first"] == store["steps"]["n_after_again"] == 1
    assert "already registered" in store["steps"]["again"]


def test_backbone_registered_with_downstream_score(store: dict[str, Any]) -> None:
    client = store["client"]
    versions = client.search_model_versions(f"name = '{BB}'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == store["pre"]
    assert str(client.get_model_version_by_alias(BB, "champion").version) == "1"
    # W (0.40) fine-tuned the same backbone better than A (0.30): the backbone's score follows.
    assert float(versions[0].tags["downstream.det/AP50"]) == pytest.approx(0.40)
    assert versions[0].tags["downstream.run_id"] == store["w"]
    assert "no backbone to register (scratch baseline)" in store["steps"]["better"]


def test_model_is_logged_to_the_run_without_pickles(store: dict[str, Any]) -> None:
    client = store["client"]
    run = client.get_run(store["a"])
    assert run.info.status == "FINISHED"
    assert run.outputs is not None and run.outputs.model_outputs  # the logged model hangs off the trial's run
    folder = _model_dir(store, DET, "1")
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    # Model from code: MLflow keeps the source file; a pickled PythonModel would be under `python_model`.
    assert flavor["model_code_path"].endswith("detector.py") and "python_model" not in flavor
    assert flavor["artifacts"]["detector"]["path"] == "artifacts/detector"
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.suffix not in (".pkl", ".pickle", ".joblib"), path
            head = path.read_bytes()[:2]
            assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), f"pickle: {path}"
    assert (folder / "artifacts/detector/detector.safetensors").is_file()
    assert (folder / "serving_input_example.json").is_file()  # what `mlflow models serve` is validated with


def test_pull_alias_and_version(store: dict[str, Any], tmp_path: Path) -> None:
    uri = store["uri"]
    champion = pull(f"{DET}@champion", tmp_path / "champ", uri)
    first = pull(f"{DET}/1", tmp_path / "v1", uri)
    bare = pull(DET, tmp_path / "bare", uri)  # a bare name means @champion
    for folder in (champion, first, bare):
        assert {p.name for p in folder.iterdir()} == {"detector.safetensors", "detector.json", "config.json",
                                                       "config.yaml", "MODEL_CARD.md"}
        load_detector(folder)  # the layout load_detector expects
    assert sha256_file(first / "detector.safetensors") == sha256_file(store["exports"]["det_a"] / "detector.safetensors")
    assert sha256_file(champion / "detector.safetensors") == sha256_file(store["exports"]["det_b"] / "detector.safetensors")
    assert sha256_file(bare / "detector.safetensors") == sha256_file(champion / "detector.safetensors")
    card = (first / "MODEL_CARD.md").read_text()
    assert store["a"] in card and store["pre"] in card and "load_detector" in card and str(first) in card
    assert json.loads((first / "config.json").read_text())["arch"] == "resnet18"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    backbone = pull(f"{BB}@champion", tmp_path / "bb", uri)
    trunk = load_backbone(backbone)
    reference, _ = load_backbone_weights(store["bb_dir"])
    assert all(torch.equal(trunk.state_dict()[k], v) for k, v in reference.items())
    assert sha256_file(backbone / "backbone.safetensors") == sha256_file(store["bb_dir"] / "backbone.safetensors")


def test_pull_matches_plain_mlflow_download(store: dict[str, Any], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    plain = Path(mlflow.artifacts.download_artifacts(f"models:/{DET}@champion", dst_path=str(tmp_path / "plain")))
    pulled = pull(f"{DET}@champion", tmp_path / "pulled", store["uri"])
    for name in ("detector.safetensors", "detector.json", "config.json", "config.yaml"):
        assert (plain / "artifacts" / "detector" / name).read_bytes() == (pulled / name).read_bytes()


def test_pyfunc_predict_equals_load_detector(store: dict[str, Any], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    image = registry.example_image()
    frame = pd.DataFrame({"image": [registry.encode_image(image)]})
    out = mlflow.pyfunc.load_model(f"models:/{DET}@champion").predict(frame)

    model = load_detector(pull(f"{DET}@champion", tmp_path / "d", store["uri"]))
    with torch.no_grad():
        ref = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255.0])[0]
    assert len(ref["boxes"]) > 0 and len(out) == len(ref["boxes"])
    np.testing.assert_allclose(out[["x_min", "y_min", "x_max", "y_max"]].to_numpy(), ref["boxes"].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["score"].to_numpy(), ref["scores"].numpy(), atol=1e-6)
    assert out["label"].tolist() == ref["labels"].tolist()
    assert out["category_id"].tolist() == [CAT_IDS[int(lbl)] for lbl in ref["labels"]]
    assert out["category_name"].tolist() == [CLASSES[int(lbl) - 1] for lbl in ref["labels"]]
    assert (out["image"] == 0).all()
    high = mlflow.pyfunc.load_model(f"models:/{DET}/2").predict(frame, params={"score_threshold": 1.1})
    assert len(high) == 0 and list(high.columns) == list(out.columns)

    other = registry.encode_image(registry.example_image()[::-1].copy())
    embed = mlflow.pyfunc.load_model(f"models:/{BB}@champion").predict(
        pd.DataFrame({"image": [frame["image"][0], other, frame["image"][0]]}), params={"image_size": 64})
    assert embed.shape == (3, 512) and np.isfinite(embed).all()
    assert np.array_equal(embed[0], embed[2]) and not np.allclose(embed[0], embed[1])


@pytest.mark.parametrize("name, kind", [(DET, "detector"), (BB, "backbone")])
def test_scoring_server_answers_the_serving_example(store: dict[str, Any], name: str, kind: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """What `mlflow models serve` does per request, fed the request body MLflow stored with the model."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    body = (_model_dir(store, name, "1") / "serving_input_example.json").read_text()
    result = scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
    assert result.status == 200, result.response
    predictions = json.loads(result.response)["predictions"]
    if kind == "detector":
        assert predictions and set(predictions[0]) == {"image", "x_min", "y_min", "x_max", "y_max", "score", "label",
                                                       "category_id", "category_name"}
    else:
        assert len(predictions) == 1 and len(predictions[0]) == 512


def test_fluent_store_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///somewhere-else.db")
    with fluent_store("sqlite:///inside.db"):
        assert mlflow.get_tracking_uri() == "sqlite:///inside.db"
    import os

    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///somewhere-else.db"
    assert mlflow.get_tracking_uri() == "sqlite:///somewhere-else.db"


@pytest.mark.parametrize("spec, message", [
    ("nosuch-detector@champion", "no registered model 'nosuch-detector'"),
    (f"{DET}@staging", "has no alias 'staging'; aliases: champion -> v2"),
    (f"{DET}/9", "has no version 9; versions: 1, 2, 3"),
    ("bad spec!", "is invalid"),
])
def test_pull_unknown_model_alias_version(store: dict[str, Any], tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message.replace("(", r"\(")):
        pull(spec, tmp_path / "out", store["uri"])
    assert not (tmp_path / "out").exists()


def test_pull_destination_problems(store: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(RegistryError, match="not writable|not a folder"):
        pull(f"{DET}@champion", blocker / "sub", store["uri"])
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    with pytest.raises(RegistryError, match="not empty"):
        pull(f"{DET}@champion", full, store["uri"])
    assert [p.name for p in full.iterdir()] == ["mine.txt"]
    # --overwrite replaces an earlier pull only: a folder holding anything else is left as it was
    with pytest.raises(RegistryError, match=r"not an earlier pull: it holds mine\.txt \(1 entry\).*nothing was deleted"):
        pull(f"{DET}@champion", full, store["uri"], overwrite=True)
    assert [p.name for p in full.iterdir()] == ["mine.txt"] and (full / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "full"]  # no staging folder left


def test_pull_overwrite_replaces_an_earlier_pull(store: dict[str, Any], tmp_path: Path) -> None:
    dest = pull(f"{DET}/1", tmp_path / "model", store["uri"])
    with pytest.raises(RegistryError, match="holds an earlier pull; pass --overwrite"):
        pull(f"{DET}/2", dest, store["uri"])
    assert pull(f"{DET}/2", dest, store["uri"], overwrite=True) == dest
    assert sha256_file(dest / "detector.safetensors") == sha256_file(store["exports"]["det_b"] / "detector.safetensors")
    assert (dest / "MODEL_CARD.md").read_text().startswith(f"# {DET} v2")
    # a backbone pull over the detector pull: both are earlier pulls, nothing of the detector is left
    pull(f"{BB}@champion", dest, store["uri"], overwrite=True)
    assert {p.name for p in dest.iterdir()} == {"backbone.safetensors", "backbone.json", "config.json", "config.yaml",
                                                "MODEL_CARD.md"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging or old folder left behind


@pytest.mark.parametrize("where", ["dest is cwd", "dest contains the store"])
def test_pull_overwrite_never_replaces_a_project_folder(store: dict[str, Any], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """`ablate pull X --dest . --overwrite` in a project folder: the store, sources and notes all stay."""
    import sqlite3

    project = tmp_path / "project"
    (project / "mlruns").mkdir(parents=True)
    db = project / "mlruns" / "mlflow.db"
    with sqlite3.connect(Path(store["uri"][len("sqlite:///"):])) as src, sqlite3.connect(db) as copy:
        src.backup(copy)  # the same registry; the artifacts stay where the fixture logged them
    (project / "notes.md").write_text("notes")
    (project / "train.py").write_text("print()")
    before = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    if where == "dest is cwd":
        monkeypatch.chdir(project)
        dest, message = ".", "is the current folder"
    else:
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        dest, message = str(project), "contains the MLflow store"
    with pytest.raises(RegistryError, match=f"{message}.*: a pull never replaces it .*--dest pulled_model"):
        pull(f"{DET}@champion", dest, f"sqlite:///{db}", overwrite=True)
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_store_unreachable(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="unreachable"):
        pull(f"{DET}@champion", tmp_path / "out", "http://127.0.0.1:9")
    with pytest.raises(RegistryError, match="no MLflow store"):
        registry.list_models(f"sqlite:///{tmp_path}/missing/mlflow.db")
    assert not (tmp_path / "out").exists()


def test_register_unknown_study_and_bad_metric(store: dict[str, Any]) -> None:
    with pytest.raises(RegistryError, match=f"no study 'nope'.*{STUDY}"):
        registry.register_best(store["uri"], "nope")
    with pytest.raises(RegistryError, match="cannot rank"):
        registry.register_best(store["uri"], STUDY, metric="swav/loss")


def test_checksum_mismatch_is_refused(store: dict[str, Any], tmp_path: Path) -> None:
    weights = _model_dir(store, DET, "1") / "artifacts" / "detector" / "detector.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-8] + bytes(8))  # corrupt the stored weights
        with pytest.raises(RegistryError, match="sha256"):
            pull(f"{DET}/1", tmp_path / "out", store["uri"])
    finally:
        weights.write_bytes(original)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("evil", ["artifacts/detector/../../../escape.txt", "/etc/passwd", "artifacts\\..\\x"])
def test_path_traversal_refused(store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                evil: str) -> None:
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    honest = LocalArtifactRepository.list_artifacts

    def listing(self: Any, path: str | None = None) -> list[FileInfo]:
        return [*honest(self, path), FileInfo(evil, False, 10)] if not path else honest(self, path)

    monkeypatch.setattr(LocalArtifactRepository, "list_artifacts", listing)
    with pytest.raises(RegistryError, match="refusing artifact path"):
        pull(f"{DET}/1", tmp_path / "out", store["uri"])
    assert not list(tmp_path.iterdir())


def test_symlink_out_of_the_store_refused(store: dict[str, Any], tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not a model file")
    link = _model_dir(store, DET, "1") / "artifacts" / "detector" / "extra.txt"
    link.symlink_to(secret)
    try:
        with pytest.raises(RegistryError, match="symlink"):
            pull(f"{DET}/1", tmp_path / "out", store["uri"])
    finally:
        link.unlink()
    assert not (tmp_path / "out").exists()


def test_list_models_table(store: dict[str, Any]) -> None:
    text = registry.list_models(store["uri"])
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["model", "version", "aliases", "AP50", "AP"]
    rows = {(ln.split()[0], ln.split()[1]): ln for ln in lines[2:] if ln.startswith(STUDY)}
    assert set(rows) == {(DET, "1"), (DET, "2"), (DET, "3"), (BB, "1")}
    assert "champion" in rows[(DET, "2")] and "0.5000" in rows[(DET, "2")]
    assert "champion" not in rows[(DET, "3")] and "0.4000" in rows[(DET, "3")]
    assert "0.4000" in rows[(BB, "1")]  # its downstream detector's AP50


def test_no_eligible_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "empty")
    run = tracker.create_run("pruned", {TAG_STAGE: "finetune", TAG_PRUNED: "true"})
    tracker.log_metrics(run, {"det/AP50": 0.5}, step=1)
    tracker.finish(run)
    with pytest.raises(RegistryError, match="no finished, unpruned fine-tuning run"):
        registry.register_best(uri, "empty")
    assert registry.list_models(uri).startswith("no registered models")
