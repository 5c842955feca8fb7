"""trainers/detection/augment.py: flips drawn per (seed, epoch, index), the same in-process and in workers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from trainers.detection.augment import EpochFlips, flip_decisions
from trainers.detection.engine import train_loader


class IndexImages(torch.utils.data.Dataset):
    """Un-augmented items whose image says its index and is left-right asymmetric (so a flip is visible)."""

    train = False

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image = torch.zeros(3, 2, 4, dtype=torch.uint8)
        image[0, 0, 0] = index + 1  # top-left pixel holds the index; after a flip it is top-right
        return image, {"boxes": torch.tensor([[0.0, 0.0, 1.0, 2.0]]), "labels": torch.tensor([1]), "image_id": index}


def _seen_flips(workers: int, epoch: int) -> dict[int, bool]:
    config = SimpleNamespace(seed=3, batch_size=2, workers=workers)
    seen = {}
    for images, targets in train_loader(IndexImages(), config, epoch):  # type: ignore[arg-type]
        for image, target in zip(images, targets):
            flipped = bool(image[0, 0, -1] > 0)
            assert int(image[0, 0, -1 if flipped else 0]) == target["image_id"] + 1
            assert target["boxes"].tolist() == ([[3.0, 0.0, 4.0, 2.0]] if flipped else [[0.0, 0.0, 1.0, 2.0]])
            seen[target["image_id"]] = flipped
    return seen


def test_flips_depend_on_seed_epoch_and_index_not_on_workers() -> None:
    flips = flip_decisions(3, 1, 12)
    assert flips.dtype == torch.bool and torch.equal(flips, flip_decisions(3, 1, 12))
    assert torch.equal(flip_decisions(3, 1, 6), flips[:6])  # per index: the length does not reshuffle them
    assert not torch.equal(flip_decisions(3, 2, 64), flip_decisions(3, 1, 64))  # a new draw each epoch
    assert not torch.equal(flip_decisions(4, 1, 64), flip_decisions(3, 1, 64))
    assert 0.3 < flip_decisions(0, 1, 1000).float().mean() < 0.7
    # Through the DataLoader: every image of the epoch, the same flips in-process and in 2 workers.
    in_process = _seen_flips(0, epoch=1)
    assert sorted(in_process) == list(range(12))
    assert in_process == {i: bool(f) for i, f in enumerate(flips)}
    torch.manual_seed(123)  # the global RNG plays no part either
    assert _seen_flips(2, epoch=1) == in_process
    # A data set that flips by itself (CocoDetection(train=True)) is refused rather than flipped twice.
    flipping = IndexImages()
    flipping.train = True  # type: ignore[misc]
    with pytest.raises(ValueError, match="train=False"):
        train_loader(flipping, SimpleNamespace(seed=0, batch_size=1, workers=0), 1)  # type: ignore[arg-type]
    assert len(EpochFlips(IndexImages(), 0, 1)) == 12
