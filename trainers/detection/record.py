"""An exported detector's record (``detector.json``): its names, its format and the checked reader, without torch.

``ablate pull`` verifies a registered detector with :func:`read_detector_config` before it writes a
file; :mod:`trainers.detection.export` writes and loads the detector itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trainers.checkpoints import CheckpointError
from trainers.detection.config import MODEL_FIELDS

DETECTOR_WEIGHTS = "detector.safetensors"
DETECTOR_CONFIG = "detector.json"
# v2: head "res5" is the paper's C4 detector. v1 exports are still read: their "res5" was the
# stage-5-from-scratch head on FPN RoIs, which v2 calls "res5_fpn".
DETECTOR_FORMAT = "ablate-faster-rcnn/v2"
LEGACY_FORMATS = {"ablate-faster-rcnn-fpn/v1": {"res5": "res5_fpn"}}  # format -> old head name -> current


def json_number(value: float) -> float | None:
    """NaN/inf as JSON null (strict JSON has no NaN), other numbers unchanged."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def read_detector_config(directory: str | Path) -> dict[str, Any]:
    """The ``detector.json`` of an exported detector, checked for format and completeness.

    ``label_to_cat_id`` comes back with integer keys; a head name of an older format comes back
    under its current name (v1's ``res5`` is ``res5_fpn``).
    """
    directory = Path(directory)
    cfg_path, weights = directory / DETECTOR_CONFIG, directory / DETECTOR_WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{directory}: not an exported detector (expected {DETECTOR_WEIGHTS} and {DETECTOR_CONFIG}; "
                              "`ablate finetune` writes them into its final checkpoint)")
    record = json.loads(cfg_path.read_text())
    fmt = record.get("format")
    if fmt != DETECTOR_FORMAT and fmt not in LEGACY_FORMATS:
        raise CheckpointError(f"{cfg_path}: format {fmt!r} is not {DETECTOR_FORMAT!r}"
                              f" (or the older {', '.join(map(repr, LEGACY_FORMATS))})")
    missing = [k for k in ("model", "num_classes", "class_names", "label_to_cat_id") if k not in record]
    missing += [f"model.{k}" for k in MODEL_FIELDS if k not in record.get("model", {})]
    if missing:
        raise CheckpointError(f"{cfg_path}: missing {', '.join(missing)}")
    record["label_to_cat_id"] = {int(k): int(v) for k, v in record["label_to_cat_id"].items()}
    renamed = LEGACY_FORMATS.get(fmt, {})
    for part in (record, record["model"], record.get("config")):  # an old name for a head now named otherwise
        if isinstance(part, dict) and part.get("head") in renamed:
            part["head"] = renamed[part["head"]]
    return record
