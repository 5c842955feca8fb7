"""MLflow pyfunc "models from code" for the registry.

Each file here is handed to ``mlflow.pyfunc.log_model(python_model=<file path>)``: MLflow copies
the *source file* into the logged model and executes it at load time (it calls
``mlflow.models.set_model``), so nothing of ours is cloudpickled. The weights travel as the
model's artifacts (safetensors + JSON). Import the files through MLflow, not as modules:
importing one registers its model object with ``mlflow.models.set_model``.

* ``detector.py`` — Faster R-CNN: base64 images in, one row per detection out.
* ``backbone.py`` — the SwAV-pretrained ResNet trunk: base64 images in, pooled embeddings out.
"""

from pathlib import Path

PYFUNC_DIR = Path(__file__).resolve().parent
DETECTOR_CODE = PYFUNC_DIR / "detector.py"
BACKBONE_CODE = PYFUNC_DIR / "backbone.py"
