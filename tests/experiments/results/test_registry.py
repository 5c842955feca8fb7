"""The registry against a real MLflow sqlite store: register best, champion, pyfunc models logged and served,
refusals (the store: conftest.py's ``registry_store``; pulling its versions: test_pull.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from experiments.results import registry
from experiments.results.pull import pull
from experiments.results.registry import RegistryError
from experiments.store.tracking import Tracker
from tests.experiments.results.helpers import BB, DET, STUDY, model_dir
from trainers.checkpoints import sha256_file
from trainers import vocabulary as V
from trainers.vocabulary import TAG_GIT, TAG_HASH, TAG_PRUNED, TAG_STAGE, TAG_UPSTREAM


@pytest.fixture
def store(registry_store: dict[str, Any]) -> dict[str, Any]:
    """The registry study (conftest.py), built once per session."""
    return registry_store


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
    folder = model_dir(store, DET, "1")
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


@pytest.mark.parametrize("name, kind", [(DET, "detector"), (BB, "backbone")])
def test_scoring_server_answers_the_serving_example(store: dict[str, Any], name: str, kind: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """What `mlflow models serve` does per request, fed the request body MLflow stored with the model."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    body = (model_dir(store, name, "1") / "serving_input_example.json").read_text()
    result = scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
    assert result.status == 200, result.response
    predictions = json.loads(result.response)["predictions"]
    if kind == "detector":
        assert predictions and set(predictions[0]) == {"image", "x_min", "y_min", "x_max", "y_max", "score", "label",
                                                       "category_id", "category_name"}
    else:
        assert len(predictions) == 1 and len(predictions[0]) == 512


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


def test_list_models_table(store: dict[str, Any]) -> None:
    text = registry.list_models(store["uri"])
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["model", "version", "aliases", "AP50", "AP"]
    rows = {(ln.split()[0], ln.split()[1]): ln for ln in lines[2:] if ln.startswith(STUDY)}
    assert set(rows) == {(DET, "1"), (DET, "2"), (DET, "3"), (BB, "1")}
    assert "champion" in rows[(DET, "2")] and "0.5000" in rows[(DET, "2")]
    assert "champion" not in rows[(DET, "3")] and "0.4000" in rows[(DET, "3")]
    assert "0.4000" in rows[(BB, "1")]  # its downstream detector's AP50


def test_no_eligible_run(tmp_path: Path, new_store: Callable[[Path], str]) -> None:
    uri = new_store(tmp_path)
    tracker = Tracker(uri, "empty")
    run = tracker.create_run("pruned", {TAG_STAGE: "finetune", TAG_PRUNED: "true"})
    tracker.log_metrics(run, {"det/AP50": 0.5}, step=1)
    tracker.finish(run)
    with pytest.raises(RegistryError, match="no finished, unpruned fine-tuning run"):
        registry.register_best(uri, "empty")
    assert registry.list_models(uri).startswith("no registered models")

