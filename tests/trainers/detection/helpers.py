"""Helpers of the detection tests: a tiny config on the sample data, and a hand-made COCO ground truth."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace
from typing import Any

import torch
from pycocotools.coco import COCO

from trainers.detection.config import DetectionConfig

TINY = dict(
    min_size=128, max_size=128, batch_size=2, workers=0, rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_train=50, rpn_post_nms_top_n_test=50, box_batch_size_per_image=32, warmup_iters=1,
)


def data_paths(sample: Any) -> dict[str, str]:
    return {
        "train_images": str(sample.train_images), "train_annotations": str(sample.train_annotations),
        "val_images": str(sample.val_images), "val_annotations": str(sample.val_annotations),
    }


def tiny_config(sample: Any, **overrides: Any) -> DetectionConfig:
    # frozen_bn (the default norm) for a pretrained backbone; a scratch trunk cannot take it.
    norm = "bn" if overrides.get("backbone", "scratch") == "scratch" else "frozen_bn"
    values = {"arch": "resnet18", "norm": norm, "head": "mlp", "lr_scheme": "357", **TINY, **data_paths(sample)}
    values.update(overrides)
    return DetectionConfig(**values)


def make_ground_truth(images: list[tuple[int, int, int]], annotations: list[dict[str, Any]],
                      categories: list[tuple[int, str]]) -> SimpleNamespace:
    """A minimal stand-in for CocoDetection: ``coco``, ``label_to_cat_id``, ``class_names``, ``image_ids``."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, w, h in images],
        "annotations": [{"id": n + 1, "iscrowd": 0, **a} for n, a in enumerate(annotations)],
        "categories": [{"id": c, "name": name} for c, name in categories],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    cat_ids = sorted(c for c, _ in categories)
    names = dict(categories)
    return SimpleNamespace(coco=coco, label_to_cat_id={i + 1: c for i, c in enumerate(cat_ids)},
                           class_names=[names[c] for c in cat_ids], image_ids=sorted(i for i, _, _ in images))


def box(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y + h]


def prediction(image_id: int, boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, Any]:
    return {"image_id": image_id, "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores), "labels": torch.tensor(labels, dtype=torch.int64)}
