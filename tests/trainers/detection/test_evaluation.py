"""trainers/detection/evaluation.py: COCO evaluation against hand-computed APs, the per-class file and the figure."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

from trainers.data import CocoDetection
from trainers.detection.evaluation import METRIC_NAMES, EvaluationHook, coco_eval, draw_detections
from tests.trainers.detection.helpers import box, make_ground_truth, prediction


def test_predictions_equal_to_ground_truth_score_one(sample_data: Any) -> None:
    val = CocoDetection(sample_data.val_images, sample_data.val_annotations)
    predictions = []
    for image_id in val.image_ids:
        anns = val.coco.imgToAnns[image_id]
        predictions.append(prediction(image_id, [box(*a["bbox"]) for a in anns], [0.9] * len(anns),
                                      [val.cat_id_to_label[a["category_id"]] for a in anns]))
    result = coco_eval(predictions, val)
    for name in METRIC_NAMES:  # the sample's val split has every class in every area range
        assert result.metrics[name] == pytest.approx(1.0), name
    assert all(r["ap50"] == pytest.approx(1.0) for r in result.per_class)
    assert {r["category_id"] for r in result.per_class} == {1, 3, 7}  # non-contiguous ids mapped back
    assert "Average Precision" in result.summary


def test_hand_computed_average_precision() -> None:
    # One image, one class, three medium (50x50) ground-truth boxes A, B, C. Detections by score:
    #   d1 0.9 = A (TP), d2 0.8 far from everything (FP), d3 0.7 = B (TP); C is never found (FN).
    # Precision/recall after each: (1, 1/3), (1/2, 1/3), (2/3, 2/3). COCO's interpolated
    # precision (max precision at recall >= r) is 1 for r <= 1/3 and 2/3 for 1/3 < r <= 2/3, 0
    # beyond. Of the 101 recall points 0.00..1.00, 34 (0.00..0.33) get 1 and 33 (0.34..0.66) get
    # 2/3, so AP = (34 + 33 * 2/3) / 101 = 56/101 at every IoU threshold (the TPs are exact).
    gt = make_ground_truth(
        [(1, 300, 300)],
        [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 50, 50], "area": 2500.0},
         {"image_id": 1, "category_id": 5, "bbox": [100, 0, 50, 50], "area": 2500.0},
         {"image_id": 1, "category_id": 5, "bbox": [200, 0, 50, 50], "area": 2500.0}],
        [(5, "thing")],
    )
    preds = [prediction(1, [box(0, 0, 50, 50), box(0, 200, 50, 50), box(100, 0, 50, 50)], [0.9, 0.8, 0.7], [1, 1, 1])]
    metrics = coco_eval(preds, gt).metrics
    for name in ("det/AP", "det/AP50", "det/AP75", "det/AP_medium"):
        assert metrics[name] == pytest.approx(56 / 101), name
    # No small or large ground truth: NaN, not COCOeval's -1.
    assert math.isnan(metrics["det/AP_small"]) and math.isnan(metrics["det/AP_large"])


def test_area_ranges_use_the_original_area_field() -> None:
    # The box is 50x50 (medium by its size) but the annotation's area says 100 (small): COCO
    # ranges go by the recorded area, as for a segmentation smaller than its box.
    gt = make_ground_truth([(1, 200, 200)], [{"image_id": 1, "category_id": 2, "bbox": [10, 10, 50, 50], "area": 100.0}],
                           [(2, "blob")])
    metrics = coco_eval([prediction(1, [box(10, 10, 50, 50)], [0.99], [1])], gt).metrics
    assert metrics["det/AP_small"] == pytest.approx(1.0)
    assert math.isnan(metrics["det/AP_medium"]) and math.isnan(metrics["det/AP_large"])


def test_no_predictions_give_zero_and_per_class_json(tmp_path: Path) -> None:
    gt = make_ground_truth(
        [(1, 200, 200), (2, 200, 200)],
        [{"image_id": 1, "category_id": 4, "bbox": [10, 10, 50, 50], "area": 2500.0}],
        [(4, "a"), (9, "b")],
    )
    result = coco_eval([prediction(1, [], [], []), prediction(2, [], [], [])], gt)
    assert result.metrics["det/AP"] == 0.0 and result.metrics["det/AP50"] == 0.0 and result.metrics["det/AP_medium"] == 0.0
    assert math.isnan(result.metrics["det/AP_small"])
    assert result.per_class[0]["ap50"] == 0.0 and math.isnan(result.per_class[1]["ap50"])  # "b" has no ground truth
    from trainers.detection import write_per_class

    payload = json.loads(write_per_class(tmp_path / "pc.json", result).read_text())
    assert payload["per_class_ap50"][1] == {"label": 2, "category_id": 9, "name": "b", "ap50": None}
    with pytest.raises(ValueError, match="image ids"):
        coco_eval([prediction(3, [box(0, 0, 5, 5)], [0.5], [1])], gt)
    with pytest.raises(ValueError, match="label 7"):
        coco_eval([prediction(1, [box(0, 0, 5, 5)], [0.5], [7])], gt)


def test_draw_detections_writes_png(tmp_path: Path) -> None:
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    path = draw_detections(
        [image, image], [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([1]), "image_id": 1},
                         {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 2}],
        [prediction(1, [box(6, 6, 20, 20), box(40, 10, 10, 10)], [0.9, 0.1], [1, 2]), prediction(2, [], [], [])],
        ["cat", "dog"], tmp_path / "fig.png", score_threshold=0.5, title="test",
    )
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > png.size[1]


def test_the_evaluation_hook_runs_every_eval_every_epochs_and_the_last_and_keeps_its_result(tmp_path: Path) -> None:
    config = SimpleNamespace(eval_every=2, epochs=5)
    evaluation = EvaluationHook(config, dataset=None, device=torch.device("cpu"), state={"latest": {"det/AP50": 0.5}})
    assert [epoch for epoch in range(5) if evaluation.due(epoch)] == [1, 3, 4]  # from 0: after epochs 2, 4 and 5
    assert evaluation.after_epoch(0, nn.Identity(), tmp_path) == ({}, [])  # not due: nothing run, the result kept
    assert evaluation.state_dict() == {"latest": {"det/AP50": 0.5}}
    evaluation.load_state_dict({})
    assert evaluation.latest == {}
