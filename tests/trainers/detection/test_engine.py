"""trainers/detection/engine.py: the lr schedule, the non-finite-loss guard, and the loop end to end on the sample
data (train, evaluate, export, reload; an exact resume)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

from trainers.checkpoints import load_checkpoint, sha256_file
from trainers.common.configs import config_to_dict
from trainers.common.precision import NonFiniteLossError
from trainers.data import CocoDetection, detection_collate
from trainers.detection.engine import lr_factor, train, train_one_epoch
from trainers.detection.evaluation import FIGURE_FILE, METRIC_NAMES, PER_CLASS_FILE, SUMMARY_FILE, evaluate
from trainers.detection.export import detect, load_detector
from trainers.detection.model import assemble_detector
from trainers.detection.record import DETECTOR_CONFIG, DETECTOR_WEIGHTS, read_detector_config
from trainers.reporting import InMemoryReporter
from tests.trainers.cuda import cuda_only
from tests.trainers.detection.helpers import tiny_config


def test_lr_factor_warmup_step_and_cosine(sample_data: Any) -> None:
    step = tiny_config(sample_data, warmup_iters=10, lr_steps=(0.5, 0.75), lr_gamma=0.1)
    assert lr_factor(0, 100, step) == pytest.approx(1e-3)
    assert lr_factor(5, 100, step) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert lr_factor(10, 100, step) == 1.0 and lr_factor(49, 100, step) == 1.0
    assert lr_factor(50, 100, step) == pytest.approx(0.1) and lr_factor(75, 100, step) == pytest.approx(0.01)
    cosine = dataclasses.replace(step, lr_schedule="cosine")
    assert lr_factor(10, 100, cosine) == pytest.approx(1.0)
    assert lr_factor(55, 100, cosine) == pytest.approx(0.5)
    assert lr_factor(100, 100, cosine) == pytest.approx(0.0, abs=1e-12)


def test_non_finite_loss_names_epoch_and_step(sample_data: Any) -> None:
    class NaNDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, images: list, targets: list) -> dict[str, torch.Tensor]:
            return {"loss": self.w.sum() * float("nan")}

    config = tiny_config(sample_data)
    model = NaNDetector()
    optimizer = torch.optim.SGD([{"name": "detector", "params": [model.w], "lr": 0.1, "peak_lr": 0.1}], lr=0.1)
    data = CocoDetection(sample_data.train_images, sample_data.train_annotations)
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=detection_collate)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(NonFiniteLossError, match="epoch 3, step 1"):  # epochs count from 0, messages from 1
        train_one_epoch(model, optimizer, scaler, loader, torch.device("cpu"), 2, 0, 10, config)  # type: ignore[arg-type]


@pytest.mark.slow
def test_train_evaluate_export_and_reload(sample_data: Any, backbones: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    backbone = tmp_path / "backbone"
    shutil.copytree(backbones["bn"], backbone)
    config = tiny_config(sample_data, backbone=str(backbone), arch=None, epochs=1, max_iters_per_epoch=2, figure_images=2)
    reporter = InMemoryReporter(root=tmp_path / "run")
    final = train(config, reporter, progress=True)

    assert len(reporter.reports) == 1
    report = reporter.reports[0]
    assert report.step == 1
    for name in METRIC_NAMES:
        value = report.metrics[name]
        assert math.isnan(value) or 0.0 <= value <= 1.0, (name, value)
    assert math.isfinite(report.metrics["det/loss"]) and report.metrics["det/images_per_s"] > 0
    assert report.metrics["lr"] > 0
    assert final == {**report.metrics}
    artifacts = {p.name: p for p in report.artifacts}
    assert set(artifacts) == {PER_CLASS_FILE, FIGURE_FILE, SUMMARY_FILE}
    per_class = json.loads(artifacts[PER_CLASS_FILE].read_text())["per_class_ap50"]
    assert [r["name"] for r in per_class] == ["disc", "square", "triangle"]
    with Image.open(artifacts[FIGURE_FILE]) as png:
        assert png.format == "PNG"

    checkpoint = reporter.last_checkpoint
    assert checkpoint is not None
    state = load_checkpoint(checkpoint)
    assert state["epoch"] == 1 and state["iteration"] == 2 and state["config"] == config_to_dict(config)
    assert isinstance(state["git_sha"], str) and state["git_sha"]
    record = read_detector_config(checkpoint)
    assert record["num_classes"] == 3 and record["class_names"] == ["disc", "square", "triangle"]
    assert record["label_to_cat_id"] == {1: 1, 2: 3, 3: 7}
    assert (record["arch"], record["norm"], record["head"]) == ("resnet18", "frozen_bn", "mlp")
    assert record["sha256"] == sha256_file(checkpoint / DETECTOR_WEIGHTS)
    assert record["metrics"]["det/loss"] == pytest.approx(report.metrics["det/loss"])
    assert (checkpoint / DETECTOR_CONFIG).is_file()

    # The export needs neither the backbone folder nor anything else from the training config.
    shutil.rmtree(backbone)
    loaded = load_detector(checkpoint)
    assert not loaded.training
    reference = assemble_detector(3, **config.model_options())  # rebuilt without the backbone folder
    reference.load_state_dict(state["model"])
    reference.eval()
    for model in (loaded, reference):
        model.roi_heads.score_thresh = 0.0  # keep every box, so the comparison is not of two empty sets
    val = CocoDetection(sample_data.val_images, sample_data.val_annotations)
    image = val[0][0].float() / 255
    with torch.no_grad():
        got, want = loaded([image])[0], reference([image])[0]
    assert len(want["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[key], want[key])
    # evaluate() on the reloaded model runs and writes its files.
    metrics = evaluate(loaded, val, out_dir=tmp_path / "eval", figure_images=1)
    assert set(metrics) == set(METRIC_NAMES)
    assert (tmp_path / "eval" / PER_CLASS_FILE).is_file() and (tmp_path / "eval" / FIGURE_FILE).is_file()

    # detect(): the same boxes as plain records, best first, named by the detector's class table.
    records = detect(loaded, val[0][0], record["class_names"], record["label_to_cat_id"])
    torch.testing.assert_close(torch.tensor([r["score"] for r in records]), want["scores"])
    torch.testing.assert_close(torch.tensor([[r["x_min"], r["y_min"], r["x_max"], r["y_max"]] for r in records]),
                               want["boxes"])
    for r in records:
        assert r["category_id"] == record["label_to_cat_id"][r["label"]]
        assert r["category_name"] == record["class_names"][r["label"] - 1]
    top = records[0]["score"]
    assert all(r["score"] >= top for r in detect(loaded, val[0][0], record["class_names"], record["label_to_cat_id"],
                                                  score_threshold=top))

    # `ablate detect` on the export: boxes printed, the figure drawn; bad input is exit code 2 naming it.
    from experiments.cli import main

    image_path = sorted(Path(sample_data.val_images).glob("*.jpg"))[0]
    assert main(["detect", str(checkpoint), str(image_path), "--threshold", "0", "--out", str(tmp_path / "d.png")]) == 0
    with Image.open(tmp_path / "d.png") as png:
        assert png.format == "PNG"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    for args, needle in [([str(checkpoint), str(broken)], str(broken)),
                         ([str(tmp_path), str(image_path)], str(tmp_path)),
                         ([str(checkpoint), str(image_path), "--threshold", "2"], "--threshold")]:
        capsys.readouterr()
        assert main(["detect", *args]) == 2
        assert needle in capsys.readouterr().err


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(sample_data: Any, tmp_path: Path) -> None:
    config = tiny_config(sample_data, norm="frozen_affine", epochs=2, max_iters_per_epoch=1, eval_every=2,
                         figure_images=0, warmup_iters=1)
    straight = InMemoryReporter(root=tmp_path / "straight")
    train(config, straight)
    first = InMemoryReporter(root=tmp_path / "first", stop_after=1)
    train(config, first)
    assert len(first.reports) == 1  # should_stop honoured
    resumed = InMemoryReporter(root=tmp_path / "resumed", resume_from=first.last_checkpoint)
    final = train(config, resumed)
    assert [r.step for r in resumed.reports] == [2]
    a, b = load_checkpoint(straight.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert a["iteration"] == b["iteration"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert resumed.reports[0].metrics["det/loss"] == straight.reports[1].metrics["det/loss"]
    assert final["det/AP50"] == straight.reports[1].metrics["det/AP50"] or math.isnan(final["det/AP50"])


@cuda_only
def test_detector_trains_with_fp16_and_evaluates_on_cuda(sample_data, tmp_path: Path) -> None:
    config = tiny_config(sample_data, epochs=1, max_iters_per_epoch=2, amp=True, figure_images=0)
    reporter = InMemoryReporter(root=tmp_path / "cuda")
    metrics = train(config, reporter)
    assert math.isfinite(metrics["det/loss"]) and 0.0 <= metrics["det/AP50"] <= 1.0
    state = load_checkpoint(reporter.last_checkpoint)
    assert state["scaler"]  # float16 on CUDA trains with the loss scaler
