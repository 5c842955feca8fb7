"""Supervised pretraining (trainers/swav/supervised.py), and the digits set's renderings it trains on: views that
share the digit and not the background."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainers.detection.helpers import tiny_config
from trainers.checkpoints import load_backbone_weights
from trainers.data import DatasetError, UnlabeledImages, collate_images, generate_sample
from trainers.data import digits
from trainers.detection import train as finetune
from trainers.reporting import InMemoryReporter
from trainers.resnet import build_trunk
from trainers.swav import MultiCropAugment, SwAVConfig, train
from trainers.swav.supervised import METRIC_NAMES

CROPS = [{"count": 2, "size": 32, "min_scale": 0.3, "max_scale": 1.0},
         {"count": 2, "size": 16, "min_scale": 0.15, "max_scale": 0.4}]


@pytest.fixture(scope="module")
def digits_small(tmp_path_factory: pytest.TempPathFactory):
    """The small digits set with two renderings per unlabeled image (and its labels.json)."""
    return generate_sample(tmp_path_factory.mktemp("digits") / "s", size="small", kind="digits", renderings=2)


def test_supervised_pretraining_trains_and_the_detector_fine_tunes_from_its_export(digits_small, sample_data,
                                                                                   tmp_path: Path) -> None:
    config = SwAVConfig(method="supervised", arch="resnet18", epochs=2, batch_size=8, max_images=32, crops=CROPS,
                        data=str(digits_small.unlabeled), workers=0, amp=False, knn_every=0, seed=5)
    reporter = InMemoryReporter(root=tmp_path / "pre")
    final = train(config, reporter)
    assert [r.step for r in reporter.reports] == [1, 2]
    assert set(METRIC_NAMES) <= set(final) and not any(k.startswith("swav/") for k in final)
    assert final["sup/classes"] == 10 and math.isfinite(final["sup/loss"]) and 0 <= final["sup/top1"] <= 1
    # 10 classes from zero: the first epoch's cross-entropy starts near ln 10
    assert 0.5 < reporter.reports[0].metrics["sup/loss_over_ln_c"] < 2.0

    export = reporter.last_checkpoint
    weights, record = load_backbone_weights(export)
    assert record["trainer"] == "supervised" and record["method"] == "supervised" and record["epochs_trained"] == 2
    torch.manual_seed(5)
    initial = build_trunk("resnet18", "bn").state_dict()
    assert not torch.equal(weights["layer1.0.conv1.weight"], initial["layer1.0.conv1.weight"])  # it trained

    ft = InMemoryReporter(root=tmp_path / "ft")
    metrics = finetune(tiny_config(sample_data, backbone=str(export), epochs=1, max_iters_per_epoch=2), ft)
    assert math.isfinite(metrics["det/loss"]) and 0 <= metrics["det/AP50"] <= 1


def test_a_generated_set_with_renderings_is_reused_not_rewritten(digits_small) -> None:
    """The cache check counts an image's renderings: a launch, a dry run or a benchmark finds the set complete
    (it used to regenerate the unlabeled images on every call, under a running launch)."""
    before = {p: p.stat().st_mtime_ns for p in digits_small.root.rglob("*") if p.is_file()}
    assert any(".view1." in p.name for p in before)
    assert generate_sample(digits_small.root, size="small", kind="digits", renderings=2) == digits_small
    assert {p: p.stat().st_mtime_ns for p in digits_small.root.rglob("*") if p.is_file()} == before


def test_supervised_pretraining_without_labels_names_the_file_and_the_fix(sample_data, tmp_path: Path) -> None:
    config = SwAVConfig(method="supervised", arch="resnet18", epochs=1, batch_size=8, crops=CROPS,
                        data=str(sample_data.unlabeled), workers=0, amp=False, knn_every=0)
    with pytest.raises(DatasetError, match=r"labels\.json does not exist; set pretrain\.labels to"):
        train(config, InMemoryReporter(root=tmp_path))


def test_renderings_share_the_digit_and_not_the_background(digits_small) -> None:
    """Two renderings of an unlabeled image: the same digits in the same boxes (legible in both: ink contrast), and
    a background that differs; the data set gives both as one item and the augmentation cuts the global views
    from different renderings."""
    pool = digits.digit_pools(0)["unlabeled"]
    first, objects = digits.object_image(0, "unlabeled", 3, pool)
    other = digits.rendering(0, "unlabeled", 3, pool, 1)
    labels = json.loads((digits_small.unlabeled / "labels.json").read_text())
    assert labels[digits.unlabeled_name(3)] == str(int(digits._sources()[1][objects[0][0]]))
    x, y, w, h = objects[0][1]
    inside = np.zeros(first.shape[:2], dtype=bool)
    for _, (bx, by, bw, bh) in objects:
        inside[max(0, by):max(0, by + bh), max(0, bx):max(0, bx + bw)] = True
    changed = np.abs(first.astype(int) - other.astype(int)).max(axis=2) > 24
    assert changed[~inside].mean() > 0.8  # the background is not shared
    ink = digits._alpha(digits._ink(digits._sources()[0][objects[0][0]]), w, h) > 0.5
    for image in (first, other):  # the digit is legible in both: its ink stands out from the pixels around it
        box = image[y:y + h, x:x + w].astype(float).mean(axis=2)
        assert abs(box[ink].mean() - box[~ink].mean()) > 40

    dataset = UnlabeledImages(digits_small.unlabeled, min_size=16)
    assert len(dataset) == 256 and all(p.stem.count(".") == 0 for p in dataset.paths)
    images, skipped = collate_images([dataset[3], dataset[4]])
    assert not skipped and isinstance(images[0], tuple) and len(images[0]) == 2
    decoded = [im.permute(1, 2, 0).numpy().astype(int) for im in images[0]]  # JPEG: near the generated pixels
    assert np.abs(decoded[0] - first).mean() < 8 and np.abs(decoded[1] - other).mean() < 8
    black, white = torch.zeros(3, 64, 64, dtype=torch.uint8), torch.full((3, 64, 64), 255, dtype=torch.uint8)
    views = MultiCropAugment(SwAVConfig(crops=CROPS).crops)([(black, white)], generator=torch.Generator().manual_seed(0))
    means = [float(v.mean()) for v in views]
    assert means[0] < means[1] and means[2] < means[3]  # views 0, 2 from rendering 0 (black), 1, 3 from rendering 1
