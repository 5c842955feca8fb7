"""trainers/detection/export.py: a trained detector exported, reloaded and run, for each res5 head."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from trainers.data import CocoDetection
from trainers.detection.evaluation import METRIC_NAMES, evaluate
from trainers.detection.export import export_detector, load_detector
from trainers.detection.model import Res5FPNHead, Res5ROIHead, build_detector, param_groups
from trainers.detection.record import DETECTOR_CONFIG, DETECTOR_FORMAT, read_detector_config
from tests.trainers.detection.helpers import tiny_config


@pytest.mark.parametrize("head", ["res5", "res5_fpn"])
def test_res5_heads_train_export_and_reload(sample_data: Any, backbones: dict[str, Path], tmp_path: Path,
                                            head: str) -> None:
    config = tiny_config(sample_data, backbone=str(backbones["bn"]), arch=None, head=head, min_size=64, max_size=64,
                         rpn_pre_nms_top_n_train=30, rpn_post_nms_top_n_train=15, rpn_pre_nms_top_n_test=30,
                         rpn_post_nms_top_n_test=15, box_batch_size_per_image=16)
    torch.manual_seed(0)
    model = build_detector(config, 3)
    optimizer = torch.optim.SGD(param_groups(model, config), lr=0.01, momentum=0.9)
    head_before = model.roi_heads.box_head.norm.weight.clone()
    model.train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 80)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[20.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])}]
    losses = model(images, targets)
    loss = sum(losses.values())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    optimizer.step()
    assert not torch.equal(model.roi_heads.box_head.norm.weight, head_before)  # the head trained

    export_detector(tmp_path / "det", model, config, ["disc", "square", "triangle"], {1: 1, 2: 3, 3: 7})
    record = read_detector_config(tmp_path / "det")
    assert record["format"] == DETECTOR_FORMAT and record["head"] == record["model"]["head"] == head
    if head == "res5_fpn":  # written as a v1 export, whose "res5" was this FPN head: it loads as res5_fpn
        meta = json.loads((tmp_path / "det" / DETECTOR_CONFIG).read_text())
        meta.update(format="ablate-faster-rcnn-fpn/v1", head="res5")
        meta["model"]["head"] = meta["config"]["head"] = "res5"
        (tmp_path / "det" / DETECTOR_CONFIG).write_text(json.dumps(meta))
        assert read_detector_config(tmp_path / "det")["model"]["head"] == "res5_fpn"
    loaded = load_detector(tmp_path / "det")
    assert isinstance(loaded.roi_heads.box_head, Res5ROIHead if head == "res5" else Res5FPNHead)
    model.eval()
    for m in (model, loaded):
        m.roi_heads.score_thresh = 0.0
    val = CocoDetection(sample_data.val_images, sample_data.val_annotations)
    image = val[0][0].float() / 255
    with torch.no_grad():
        got, want = loaded([image])[0], model([image])[0]
    assert len(want["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[key], want[key])
    if head == "res5":  # evaluate() runs on the reloaded C4 detector
        assert set(evaluate(loaded, val, batch_size=4)) == set(METRIC_NAMES)
