"""Supervised pretraining (``method: supervised``): the positive control of every SSL transfer table.

The detection-transfer tables of MoCo (He et al. 2020, Table 5) and SwAV (Caron et al. 2020, Table 3) put a trunk
pretrained with labels beside random initialisation and the self-supervised one; without it a study cannot tell
"the method did not help" from "the assay cannot see help". This is that row, on the user's own labeled
classification images: the same ResNet trunk as SwAV's, a linear classifier on its pooled features (the torchvision
ImageNet recipe's head), cross-entropy on every multi-crop view, and SwAV's own crops, optimizer, learning-rate
schedule, iterations, checkpoints, monitor and export (``engine.train`` runs both), so that everything downstream
(dedup, pairing, fine-tuning, the report, the registry) takes it as one more backbone.

The labels are a file that maps each image to its class (trainers/data/labels.py); the digits sample writes one
for its unlabeled pool. SwAV's queue, prototypes and collapse signals do not apply and are not reported.

The optimizer is the config's. SwAV's default, the reference's LARC with trust 0.001, moves each weight by at most
0.1 % a step, which leaves a freshly initialised classifier at chance in a short run (measured on the digits set:
cross-entropy 1.02 x ln 10 after 124 iterations). The shipped spaces give the supervised cases torchvision's
ImageNet recipe instead: SGD with momentum 0.9, weight decay 1e-4, a warm-up (search_spaces/fidelity.yaml).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from trainers.common.precision import check_finite
from trainers.data import SkippedImage, UnlabeledImages, collate_images
from trainers.resnet import TRUNK_CHANNELS, build_trunk
from trainers.swav.augment import MultiCropAugment
from trainers.swav.config import MIN_BATCH, SwAVConfig
from trainers.swav.model import trunk_features
from trainers.swav.stats import EpochStats, move_images, smallest_batch
from trainers.swav.optim import learning_rate, set_learning_rate
from trainers.common.precision import autocast, backward_and_step
from trainers.vocabulary import (
    LR,
    SUP_AMP_SKIPPED_STEPS,
    SUP_CLASSES,
    SUP_IMAGES_PER_S,
    SUP_LOSS,
    SUP_LOSS_OVER_LN_C,
    SUP_TOP1,
)

METRIC_NAMES = (SUP_LOSS, SUP_LOSS_OVER_LN_C, SUP_TOP1, SUP_CLASSES, SUP_AMP_SKIPPED_STEPS,
                SUP_IMAGES_PER_S, LR)


class SupervisedModel(nn.Module):
    """ResNet trunk + a linear classifier on its globally pooled features."""

    def __init__(self, arch: str, norm: str, classes: int) -> None:
        super().__init__()
        self.trunk = build_trunk(arch, norm)
        self.classifier = nn.Linear(TRUNK_CHANNELS[arch], classes)

    def forward(self, crops: Sequence[Tensor] | Tensor) -> Tensor:
        """Class scores ``(n_crops * B, classes)`` of every view, crop-major (views of one size in one pass)."""
        return self.classifier(trunk_features(self.trunk, crops))


class LabeledImages(Dataset):
    """An :class:`UnlabeledImages` folder with each image's class: items ``(image or skipped, class)``."""

    def __init__(self, images: UnlabeledImages, labels: Sequence[int]) -> None:
        self.images, self.labels = images, list(labels)
        self.paths = images.paths

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Tensor | tuple[Tensor, ...] | SkippedImage:
        return self.images.load(index)

    def __getitem__(self, index: int) -> tuple[Tensor | tuple[Tensor, ...] | SkippedImage | None, int]:
        return self.images[index], self.labels[index]

    @staticmethod
    def collate(batch: Sequence[tuple[object, int]]) -> tuple[tuple[list[Tensor], Tensor], tuple[SkippedImage, ...]]:
        """``((images, their classes), skipped)``: :func:`collate_images` with the kept images' classes."""
        items = [item for item, _ in batch]
        images, skipped = collate_images(items)  # type: ignore[arg-type]
        kept = [label for item, label in batch if isinstance(item, (Tensor, tuple))]
        return (images, torch.tensor(kept, dtype=torch.long)), skipped


class SupervisedStats(EpochStats):
    """The epoch's sums (loss, correct views, views, steps), with SwAV's skipped-file bookkeeping and reduction."""

    def __init__(self, classes: int, device: torch.device) -> None:
        super().__init__(classes, device)  # counts: one per class, so reduced() also gives the number of classes
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)

    @torch.no_grad()
    def update(self, loss: Tensor, logits: Tensor, target: Tensor) -> None:
        correct = (logits.argmax(dim=1) == target).sum()
        self.sums += torch.stack([loss.detach().double(), correct.double(),
                                       torch.tensor(float(len(target)), dtype=torch.float64, device=loss.device),
                                       torch.ones((), dtype=torch.float64, device=loss.device)]).to(self.sums.device)

    def metrics(self, seconds: float, lr: float) -> dict[str, float]:
        sums, counts, totals, maxima = self.reduced(seconds)
        steps, ln_c = float(sums[3]), math.log(counts.numel())
        loss = float(sums[0]) / steps
        return {SUP_LOSS: loss, SUP_LOSS_OVER_LN_C: loss / ln_c, SUP_TOP1: float(sums[1] / sums[2]),
                SUP_CLASSES: float(counts.numel()), SUP_AMP_SKIPPED_STEPS: float(maxima[0]),
                SUP_IMAGES_PER_S: float(totals[0]) / max(float(maxima[1]), 1e-9), LR: float(lr)}


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[tuple[list[Tensor], Tensor], Sequence[SkippedImage]]],
    augment: MultiCropAugment,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    queue: None,
    config: SwAVConfig,
    epoch: int,
    iteration: int,
    iters_per_epoch: int,
    device: torch.device,
    generator: torch.Generator,
    progress: bool = False,
    world_size: int | None = None,
) -> tuple[SupervisedStats, int]:
    """One pass of cross-entropy over every view (the arguments of SwAV's ``engine.train_one_epoch``; no queue)."""
    model.train()
    classes = model.module.classifier.out_features if hasattr(model, "module") else model.classifier.out_features
    stats = SupervisedStats(int(classes), device)
    world_size = world_size or 1
    for step, ((images, labels), skipped) in enumerate(loader):
        stats.add_skipped(skipped)
        stats.readable += len(images)
        lr = learning_rate(config, iteration, iters_per_epoch, world_size)
        set_learning_rate(optimizer, lr)
        if smallest_batch(len(images), device) < MIN_BATCH:
            iteration += 1
            continue
        images = move_images(images, device)
        crops = augment(images, generator=generator)
        target = labels.to(device).repeat(len(crops))  # crop-major, as the logits
        with autocast(device, config.amp, config.amp_dtype):
            logits = model(crops)
        loss = F.cross_entropy(logits.float(), target)
        check_finite(loss, epoch + 1, step)
        if not backward_and_step(loss, optimizer, scaler, skip_non_finite=config.amp):
            stats.amp_skipped += 1
        stats.update(loss, logits.detach(), target)
        stats.images += len(images)
        iteration += 1
    return stats, iteration


__all__ = ["METRIC_NAMES", "LabeledImages", "SupervisedModel", "SupervisedStats", "train_one_epoch"]
