"""trainers/swav/stats.py: the epoch's statistics (collapse signals, skipped files, the empty epoch), a batch's images
moved to the device, and the too-few-images error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainers.data import SKIPPED_SHOWN, TOO_SMALL, UNREADABLE, DatasetError, SkippedImage
from trainers.swav.config import SwAVConfig
from trainers.swav.loss import embedding_std
from trainers.swav.stats import EmptyEpochError, EpochStats, move_images, too_few_images
from tests.trainers.swav.helpers import TINY_CROPS, unit_rows


def test_collapse_statistics() -> None:
    k, n_crops, batch, temperature = 12, 2, 8, 0.1
    prototypes = unit_rows(k, 16, 19)
    collapsed = unit_rows(1, 16, 20).expand(n_crops * batch, 16).contiguous()
    stats = EpochStats(k, torch.device("cpu"))
    for _ in range(3):
        stats.update(torch.tensor(2.0), collapsed, collapsed @ prototypes.t(), n_crops, temperature, prototypes)
    stats.images = 3 * batch
    metrics = stats.metrics(seconds=2.0, lr=0.5)
    assert metrics["swav/embedding_std"] == 0.0
    assert metrics["swav/score_std"] == 0.0  # every image scores the same
    assert metrics["swav/prototypes_used"] == 1.0
    assert metrics["swav/ln_k"] == pytest.approx(math.log(k))
    assert metrics["swav/loss_over_ln_k"] == pytest.approx(2.0 / math.log(k))
    assert metrics["swav/images_per_s"] == pytest.approx(12.0)
    assert metrics["lr"] == 0.5

    healthy = unit_rows(n_crops * 512, 16, 21)
    stats = EpochStats(k, torch.device("cpu"))
    stats.update(torch.tensor(2.0), healthy, healthy @ prototypes.t(), n_crops, temperature, prototypes)
    metrics = stats.metrics(1.0, 0.1)
    assert metrics["swav/embedding_std"] == pytest.approx(1 / math.sqrt(16), rel=0.1)
    assert metrics["swav/score_std"] == pytest.approx(1 / math.sqrt(16), rel=0.15)
    assert metrics["swav/prototype_span"] == pytest.approx(math.sqrt(12 / 16), rel=0.1)  # 12 of 16 directions
    assert metrics["swav/prototypes_used"] == k
    assert 0 < metrics["swav/assignment_entropy"] <= math.log(k)
    assert embedding_std(healthy, n_crops) > 0


def test_skipped_files_are_counted_by_reason_and_the_first_few_named() -> None:
    stats = EpochStats(4, torch.device("cpu"))
    broken, dot = SkippedImage(Path("a.jpg"), UNREADABLE), SkippedImage(Path("b.png"), TOO_SMALL, "1x1 px")
    stats.add_skipped([broken, dot, SkippedImage(None, UNREADABLE)])
    assert stats.unreadable == 2 and stats.too_small == 1
    assert stats.skipped == [broken, dot]  # an unnamed file is counted, not named
    stats.add_skipped(3)  # a loader that only counts its skipped files
    assert stats.unreadable == 5 and stats.too_small == 1
    stats.add_skipped([SkippedImage(Path(f"c{i}.jpg"), UNREADABLE) for i in range(10)])
    assert stats.unreadable == 15 and len(stats.skipped) == SKIPPED_SHOWN and stats.skipped[:2] == [broken, dot]


def test_an_epoch_without_a_step_is_an_empty_epoch_error() -> None:
    stats = EpochStats(4, torch.device("cpu"))
    stats.readable, stats.unreadable, stats.too_small = 1, 2, 1
    with pytest.raises(EmptyEpochError, match="fewer than 2 usable images: 1 usable, 3 skipped") as caught:
        stats.metrics(seconds=1.0, lr=0.1)
    assert isinstance(caught.value, DatasetError)  # the trainer's data errors, reported as such
    assert (stats.readable_total, stats.unreadable_total, stats.too_small_total) == (1, 2, 1)


def test_too_few_images_says_what_would_work() -> None:
    config = SwAVConfig(data="/d", crops=TINY_CROPS, batch_size=8, max_images=10)
    text = too_few_images(config, 2, folder_files=20, usable=7, skipped=[SkippedImage(Path("/d/x.jpg"), UNREADABLE)],
                          skipped_count=3, problem="no full batch")
    assert text.startswith("/d: no full batch; 7 usable images (max_images=10 of 20 files), 3 skipped (unreadable, or "
                           "smaller than the smallest crop of 16 px): x.jpg (unreadable), ... (3 in all). ")
    assert ("Fix: remove or fix the skipped files and set batch_size to at most 3 (7 usable images over 2 processes), "
            "or raise max_images, or add images; batch_size must be at least 2") in text
    assert "training needs" not in text  # 3 images per process are enough for a batch of 2
    # One usable image per process, nothing skipped, no cap: only more images help.
    text = too_few_images(SwAVConfig(data="/d", crops=TINY_CROPS), 2, 3, 3, [], 0, "no full batch")
    assert text.startswith("/d: no full batch; 3 usable images. Fix: add images; ")
    assert text.endswith("so training needs at least 4 usable images on 2 process(es)")


def test_move_images_keeps_an_images_renderings_together() -> None:
    image, first, second = (torch.full((3, 4, 4), v, dtype=torch.uint8) for v in (1, 2, 3))
    moved = move_images([image, (first, second)], torch.device("cpu"))
    assert len(moved) == 2 and torch.equal(moved[0], image)
    assert isinstance(moved[1], tuple) and [int(r[0, 0, 0]) for r in moved[1]] == [2, 3]
