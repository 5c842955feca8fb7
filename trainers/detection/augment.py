"""Training-time augmentation whose randomness depends only on (seed, epoch, image index).

torchvision's references flip inside the data set with the global RNG, so which images are
flipped depends on how many DataLoader workers draw from how many RNG streams. Here the flips
of a whole epoch are drawn up front in the training process from a generator seeded by
(seed, epoch) alone, and each worker only looks its index up: ``workers`` changes speed, never
the data — which matters because ``workers`` is not part of a run's config hash.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from trainers.data import hflip

FLIP_PROBABILITY = 0.5  # torchvision references' RandomHorizontalFlip(0.5), Detectron2's RandomFlip()
FLIP_STREAM = 1  # separates the flip stream from any other stream seeded by (seed, epoch)


def flip_decisions(seed: int, epoch: int, size: int) -> torch.Tensor:
    """Which of ``size`` images are flipped left-right in ``epoch``: a bool tensor indexed by image index.

    Each image is flipped with probability 0.5, independently; the draw depends only on ``seed``,
    ``epoch`` and the index (numpy's ``SeedSequence`` mixes them, so neighbouring seeds and epochs
    give unrelated draws).
    """
    if size < 0:
        raise ValueError(f"size={size} is invalid: a data set length >= 0")
    rng = np.random.default_rng([int(seed), int(epoch), FLIP_STREAM])
    return torch.from_numpy(rng.random(size) < FLIP_PROBABILITY)


class EpochFlips(Dataset):
    """A detection data set (returning un-augmented ``(uint8 image, target)``) with one epoch's flips applied.

    Args:
        dataset: e.g. ``CocoDetection(..., train=False)``: its items must not be augmented already.
        seed, epoch: decide the flips (:func:`flip_decisions`).
    """

    def __init__(self, dataset: Any, seed: int, epoch: int) -> None:
        self.dataset = dataset
        self.flips = flip_decisions(seed, epoch, len(dataset))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self.dataset[index]
        if self.flips[index]:
            target = dict(target)
            image, target["boxes"] = hflip(image, target["boxes"])
        return image, target


__all__ = ["FLIP_PROBABILITY", "EpochFlips", "flip_decisions"]
