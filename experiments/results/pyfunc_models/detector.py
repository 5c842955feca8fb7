"""The registered detector as an MLflow pyfunc model (a "model from code" file).

MLflow copies this file into the logged model and runs it at load time; the weights and the
rebuild recipe are the model's artifact ``detector`` — a folder with ``detector.safetensors`` and
``detector.json`` exactly as ``trainers.detection.export_detector`` writes them — so
``trainers.detection.load_detector`` rebuilds the network and nothing is unpickled.

Input: a pandas DataFrame with one column ``image``, each value the base64 text of an encoded
image file (PNG or JPEG, any size, RGB / grey / RGBA — converted to RGB);
``experiments.results.registry.encode_image(path)`` makes one. Served, that is::

    mlflow models serve -m models:/STUDY-detector@champion -p 5001 --env-manager local
    curl -X POST http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
         -d '{"dataframe_split": {"columns": ["image"], "data": [["iVBORw0KGgo..."]]},
              "params": {"score_threshold": 0.5}}'

(``--env-manager local`` serves from the current environment; without it MLflow builds one
from the model's pinned ``requirements.txt``. The model carries the ``trainers`` package as code.)

Output: a DataFrame with one row per detection: ``image`` (row number of the input),
``x_min``, ``y_min``, ``x_max``, ``y_max`` (pixels of the original image), ``score``, ``label``
(the detector's contiguous class index, 1..C), ``category_id`` (the COCO category id) and
``category_name``. Param ``score_threshold`` (default 0.0) drops lower-scoring boxes; the detector
itself keeps boxes scoring at least 0.05, as for COCO evaluation.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd

from trainers.data import decode_base64_image  # shipped with the model as code
from trainers.detection.export import detect

IMAGE_COLUMN = "image"
ARTIFACT_KEY = "detector"
# Output columns and their dtypes (also the model signature's output schema).
OUTPUT_COLUMNS: dict[str, str] = {
    "image": "int64", "x_min": "float64", "y_min": "float64", "x_max": "float64", "y_max": "float64",
    "score": "float64", "label": "int64", "category_id": "int64", "category_name": "str",
}


class DetectorModel(mlflow.pyfunc.PythonModel):
    """Faster R-CNN + FPN rebuilt from the ``detector`` artifact folder."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Rebuild the detector (sha256 checked against detector.json) and read its class table."""
        from trainers.detection import load_detector, read_detector_config

        folder = context.artifacts[ARTIFACT_KEY]
        self.model = load_detector(folder, device="cpu", verify=True)
        record = read_detector_config(folder)
        self.label_to_cat_id: dict[int, int] = record["label_to_cat_id"]
        self.class_names: list[str] = list(record["class_names"])

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Detections for every image of ``model_input`` (see the module docstring for the format)."""
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            raise ValueError(f"expected a DataFrame with a column {IMAGE_COLUMN!r} of base64 PNG/JPEG text")
        threshold = float((params or {}).get("score_threshold", 0.0) or 0.0)
        rows: list[dict[str, Any]] = []
        # One image per forward pass: images differ in size, and batching would not change the
        # result (the transform resizes and pads each image on its own).
        for index, value in enumerate(model_input[IMAGE_COLUMN].tolist()):
            found = detect(self.model, decode_base64_image(value, index), self.class_names, self.label_to_cat_id,
                           score_threshold=threshold)
            rows += [{"image": index, **record} for record in found]
        frame = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
        return frame.astype({k: (object if v == "str" else v) for k, v in OUTPUT_COLUMNS.items()})


mlflow.models.set_model(DetectorModel())
