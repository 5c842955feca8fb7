"""Exported detectors: ``detector.safetensors`` (the state dict) + ``detector.json`` (how to rebuild it).

The JSON holds the network-shape options, so :func:`load_detector` rebuilds the model with a
scratch trunk and loads every weight from the safetensors file: neither the backbone folder nor
the data named in the training config need exist where the detector is loaded. Nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import save_file
from torchvision.models.detection import FasterRCNN

from trainers.checkpoints import CheckpointError, check_sha256, read_tensors, sha256_file
from trainers.common.configs import config_to_dict
from trainers.common.provenance import git_sha
from trainers.detection.config import MODEL_FIELDS, DetectionConfig
from trainers.detection.model import assemble_detector
from trainers.detection.record import (  # noqa: F401 - importable from here too
    DETECTOR_CONFIG, DETECTOR_FORMAT, DETECTOR_WEIGHTS, LEGACY_FORMATS, json_number, read_detector_config,
)

def export_detector(
    directory: str | Path,
    model: FasterRCNN,
    config: DetectionConfig,
    class_names: Sequence[str],
    label_to_cat_id: Mapping[int, int],
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Write ``detector.safetensors`` and ``detector.json`` into ``directory``.

    The JSON records the resolved config, the network-shape options (``model``), num_classes,
    class_names, label_to_cat_id, arch, norm, head, the git sha, the final metrics (NaN as null)
    and the sha256 of the weights file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path = directory / DETECTOR_WEIGHTS
    save_file(weights, str(path), metadata={"format": DETECTOR_FORMAT})
    record = {
        "format": DETECTOR_FORMAT,
        "config": config_to_dict(config),
        "model": config.model_options(),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "label_to_cat_id": {str(label): int(cat) for label, cat in label_to_cat_id.items()},
        "arch": config.arch,
        "norm": config.norm,
        "head": config.head,
        "git_sha": git_sha(),
        "metrics": {k: json_number(float(v)) for k, v in (metrics or {}).items()},
        "sha256": sha256_file(path),
    }
    (directory / DETECTOR_CONFIG).write_text(json.dumps(record, indent=2, sort_keys=True))
    return directory


def load_detector(directory: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> FasterRCNN:
    """Rebuild an exported detector and load its weights (``strict=True``); returned in eval mode.

    Args:
        directory: folder with ``detector.safetensors`` and ``detector.json``.
        device: where the model goes.
        verify: check the weights' sha256 against ``detector.json``.

    Raises:
        CheckpointError: missing files, wrong format, sha256 mismatch or weights that do not fit.
    """
    directory = Path(directory)
    record = read_detector_config(directory)
    path = directory / DETECTOR_WEIGHTS
    if verify:
        check_sha256(path, record, DETECTOR_CONFIG)
    model = assemble_detector(int(record["num_classes"]), **{k: record["model"][k] for k in MODEL_FIELDS})
    try:
        model.load_state_dict(read_tensors(path), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model described in {DETECTOR_CONFIG}: {exc}") from exc
    return model.to(device).eval()


@torch.no_grad()
def detect(model: FasterRCNN, image: torch.Tensor, class_names: Sequence[str],
           label_to_cat_id: Mapping[int, int], score_threshold: float = 0.0) -> list[dict[str, Any]]:
    """The detections of one image, best first, as plain records.

    Args:
        model: a loaded detector (eval mode, e.g. from :func:`load_detector`).
        image: uint8 3xHxW RGB tensor, any size (the detector resizes it itself).
        class_names: the detector's class names (``label`` 1..C is ``class_names[label - 1]``).
        label_to_cat_id: the detector's label -> COCO category id table.
        score_threshold: boxes scoring below it are dropped (the detector itself keeps >= 0.05).

    Returns:
        One dict per box: ``x_min``, ``y_min``, ``x_max``, ``y_max`` (pixels of ``image``), ``score``,
        ``label``, ``category_id`` and ``category_name``.
    """
    device = next(model.parameters()).device
    det = model([image.to(device).float().div_(255.0)])[0]
    out = []
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
        if score < score_threshold:
            continue
        label = int(label)
        out.append({"x_min": box[0], "y_min": box[1], "x_max": box[2], "y_max": box[3], "score": float(score),
                    "label": label, "category_id": int(label_to_cat_id.get(label, -1)),
                    "category_name": class_names[label - 1] if 0 < label <= len(class_names) else ""})
    return sorted(out, key=lambda d: -d["score"])
