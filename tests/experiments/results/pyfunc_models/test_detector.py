"""experiments/results/pyfunc_models/detector.py: the registered detector as an MLflow pyfunc model.

Loaded through MLflow from the registry (conftest.py's ``registry_store``) it predicts what ``load_detector`` of the
pulled folder predicts; loaded directly from an exported folder it returns one typed row per detection, applies
``score_threshold`` and refuses input without an ``image`` column.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.results import registry
from experiments.results.pull import pull
from experiments.results.pyfunc_models.detector import ARTIFACT_KEY, OUTPUT_COLUMNS, DetectorModel
from tests.experiments.results.helpers import BB, CAT_IDS, CLASSES, DET
from trainers.detection import load_detector


@pytest.fixture
def store(registry_store: dict[str, Any]) -> dict[str, Any]:
    """The registry study (conftest.py), built once per session."""
    return registry_store


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



@pytest.fixture(scope="module")
def detector(registry_store: dict[str, Any]) -> DetectorModel:
    """The pyfunc model loaded straight from an exported detector folder (the one registered as v1), no MLflow."""
    model = DetectorModel()
    model.load_context(SimpleNamespace(artifacts={ARTIFACT_KEY: str(registry_store["exports"]["det_a"])}))
    return model


@pytest.fixture(scope="module")
def found(detector: DetectorModel) -> pd.DataFrame:
    """The detections of two images: the test card and its mirror image."""
    card = registry.example_image()
    return detector.predict(None, pd.DataFrame({"image": [registry.encode_image(card),
                                                          registry.encode_image(card[:, ::-1].copy())]}))


def test_one_typed_row_per_detection_of_each_image(found: pd.DataFrame) -> None:
    height, width = registry.example_image().shape[:2]
    assert list(found.columns) == list(OUTPUT_COLUMNS) and len(found) > 0
    assert {c: str(t) for c, t in found.dtypes.items()} == {c: "object" if t == "str" else t
                                                            for c, t in OUTPUT_COLUMNS.items()}
    assert set(found["image"]) == {0, 1}  # the row number of each input image
    assert found["category_id"].tolist() == [CAT_IDS[lbl] for lbl in found["label"]]
    assert found["category_name"].tolist() == [CLASSES[lbl - 1] for lbl in found["label"]]
    assert ((found["x_min"] <= found["x_max"]) & (found["y_min"] <= found["y_max"])).all()
    assert found["x_max"].max() <= width and found["y_max"].max() <= height  # pixels of the original image


def test_score_threshold_drops_lower_boxes(detector: DetectorModel, found: pd.DataFrame) -> None:
    scores = found[found["image"] == 0]["score"]
    middle = float(scores.median())
    frame = pd.DataFrame({"image": [registry.encode_image(registry.example_image())]})
    kept = detector.predict(None, frame, params={"score_threshold": middle})
    assert 0 < len(kept) == int((scores >= middle).sum()) < len(scores) and (kept["score"] >= middle).all()
    np.testing.assert_allclose(kept["score"].to_numpy(), scores[scores >= middle].to_numpy(), atol=1e-6)


def test_input_without_an_image_column_is_refused(detector: DetectorModel) -> None:
    for bad in (pd.DataFrame({"picture": ["iVBORw0KGgo="]}), ["iVBORw0KGgo="]):
        with pytest.raises(ValueError, match="expected a DataFrame with a column 'image' of base64 PNG/JPEG text"):
            detector.predict(None, bad)
