"""The pretraining loop's per-epoch statistics and batch helpers, shared by SwAV (engine.py) and the supervised
control (supervised.py): running sums kept on the device, the skipped-file bookkeeping, the reduction over processes,
and a batch's images (an image's renderings too) moved to the device."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from trainers.data import SKIPPED_SHOWN, TOO_SMALL, DatasetError, SkippedImage, describe_skipped
from trainers.swav.collapse import prototype_span, score_std
from trainers.swav.config import MIN_BATCH, SwAVConfig
from trainers.swav.loss import assignment_entropy, distributed_ready, embedding_std, prototype_counts
from trainers.vocabulary import (
    LR,
    SWAV_AMP_SKIPPED_STEPS,
    SWAV_ASSIGNMENT_ENTROPY,
    SWAV_EMBEDDING_STD,
    SWAV_IMAGES_PER_S,
    SWAV_LN_K,
    SWAV_LOSS,
    SWAV_LOSS_OVER_LN_K,
    SWAV_PROTOTYPES_USED,
    SWAV_PROTOTYPE_SPAN,
    SWAV_SCORE_STD,
)


class EmptyEpochError(DatasetError):
    """No batch of the epoch had enough usable images to train on (the trainer says why and what to do)."""


class EpochStats:
    """Running sums for the epoch's metrics, kept on the device (no sync per step)."""

    def __init__(self, prototypes: int, device: torch.device) -> None:
        # loss, embedding std, entropy, steps, prototype-score std, fraction in the prototypes' span
        self.sums = torch.zeros(6, device=device, dtype=torch.float64)
        self.counts = torch.zeros(prototypes, device=device, dtype=torch.int64)
        self.images = 0  # trained on
        self.readable = 0  # returned by the loader, also those in batches too small to train on
        self.unreadable = 0
        self.too_small = 0  # a side under the smallest crop
        self.skipped: list[SkippedImage] = []  # the first few skipped files of this process, to name them
        self.amp_skipped = 0
        # Over all processes, set by metrics():
        self.readable_total = self.unreadable_total = self.too_small_total = 0

    def add_skipped(self, skipped: Sequence[SkippedImage] | int) -> None:
        """Count a batch's skipped files (unreadable or too small) and keep the first few.

        A plain count (loaders that do not name their files, e.g. ``bench/overhead.py``) is taken
        as that many unnamed unreadable files.
        """
        if isinstance(skipped, int):
            self.unreadable += skipped
            return
        for item in skipped:
            if item.reason == TOO_SMALL:
                self.too_small += 1
            else:
                self.unreadable += 1
            if item.path is not None and len(self.skipped) < SKIPPED_SHOWN:
                self.skipped.append(item)

    @torch.no_grad()
    def update(self, loss: Tensor, embeddings: Tensor, scores: Tensor, n_crops: int, temperature: float,
               prototypes: Tensor) -> None:
        """Add one step: its loss, embeddings and prototype scores (all crops), and the prototypes' weights."""
        values = torch.stack([
            loss.detach().double(),
            embedding_std(embeddings, n_crops).double(),
            assignment_entropy(scores, temperature).double(),
            torch.ones((), dtype=torch.float64, device=loss.device),
            score_std(scores, n_crops).double(),
            prototype_span(embeddings, prototypes).double(),
        ])
        self.sums += values.to(self.sums.device)
        self.counts += prototype_counts(scores.detach()).to(self.counts.device)

    def reduced(self, seconds: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(sums, counts, totals, maxima)`` over all processes; raises :class:`EmptyEpochError` if no step ran.

        ``sums[3]`` counts the steps; ``totals`` = (images trained on, unreadable, too small, readable); ``maxima`` =
        (loss-scaler skips, seconds).
        """
        sums, counts = self.sums.clone(), self.counts.clone()
        totals = torch.tensor([float(self.images), float(self.unreadable), float(self.too_small), float(self.readable)],
                              device=sums.device, dtype=torch.float64)
        # Every process skips the same AMP steps (gradients are all-reduced); the epoch lasts as
        # long as its slowest process.
        maxima = torch.tensor([float(self.amp_skipped), seconds], device=sums.device, dtype=torch.float64)
        if distributed_ready():
            for tensor in (sums, counts, totals):
                dist.all_reduce(tensor)
            dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
        self.unreadable_total, self.too_small_total, self.readable_total = (int(v) for v in totals[1:].tolist())
        steps = float(sums[3])
        if steps == 0:
            raise EmptyEpochError(
                f"no usable batch in this epoch (every batch had fewer than {MIN_BATCH} usable images: "
                f"{self.readable_total} usable, {self.unreadable_total + self.too_small_total} skipped)"
            )
        return sums, counts, totals, maxima

    def metrics(self, seconds: float, lr: float) -> dict[str, float]:
        """The epoch's metrics, summed over processes when distributed."""
        sums, counts, totals, maxima = self.reduced(seconds)
        steps = float(sums[3])
        ln_k = math.log(counts.numel())
        loss = float(sums[0]) / steps
        return {
            SWAV_LOSS: loss,
            SWAV_LN_K: ln_k,
            SWAV_LOSS_OVER_LN_K: loss / ln_k if ln_k > 0 else math.nan,
            SWAV_EMBEDDING_STD: float(sums[1]) / steps,
            SWAV_SCORE_STD: float(sums[4]) / steps,
            SWAV_PROTOTYPE_SPAN: float(sums[5]) / steps,
            SWAV_ASSIGNMENT_ENTROPY: float(sums[2]) / steps,
            SWAV_PROTOTYPES_USED: float(int((counts > 0).sum())),
            SWAV_AMP_SKIPPED_STEPS: float(maxima[0]),
            SWAV_IMAGES_PER_S: float(totals[0]) / max(float(maxima[1]), 1e-9),
            LR: float(lr),
        }


def smallest_batch(size: int, device: torch.device) -> int:
    """The smallest batch over all processes (all must skip a batch together)."""
    if not distributed_ready():
        return size
    value = torch.tensor([size], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def move_images(images: Sequence[Tensor | tuple[Tensor, ...]], device: torch.device) -> list:
    """A batch's images on ``device`` (an image with renderings is a tuple of them)."""
    return [tuple(r.to(device, non_blocking=True) for r in im) if isinstance(im, tuple)
            else im.to(device, non_blocking=True) for im in images]



def too_few_images(
    config: SwAVConfig,
    world_size: int,
    folder_files: int,
    usable: int,
    skipped: Sequence[SkippedImage],
    skipped_count: int,
    problem: str,
) -> str:
    """The error for too few usable images: what was found, what was skipped, and what would work.

    Args:
        config: the run's configuration (folder, batch size, crops, max_images).
        world_size: training processes.
        folder_files: image files in the folder.
        usable: images read and at least the smallest crop in size.
        skipped: some or all of the skipped files (the first few are named).
        skipped_count: how many files were skipped in all.
        problem: what went wrong, e.g. "5 image files give no full batch of batch_size=8 ...".
    """
    min_size = min(group.size for group in config.crops)
    capped = config.max_images is not None and config.max_images < folder_files
    text = f"{config.data}: {problem}; {usable} usable image{'' if usable == 1 else 's'}"
    if capped:
        text += f" (max_images={config.max_images} of {folder_files} files)"
    if skipped_count:
        text += (f", {skipped_count} skipped (unreadable, or smaller than the smallest crop of {min_size} px): "
                 f"{describe_skipped(skipped, config.data, skipped_count)}")
    per_process = usable // world_size
    options = []
    if per_process >= MIN_BATCH:
        options.append(("remove or fix the skipped files and " if skipped_count else "")
                       + f"set batch_size to at most {per_process}"
                       + (f" ({usable} usable images over {world_size} processes)" if world_size > 1 else ""))
    elif skipped_count:
        options.append("replace the skipped files")
    if capped:
        options.append("raise max_images")
    options.append("add images")
    fix = ", or ".join(options)
    need = (f"batch_size must be at least {MIN_BATCH} (BatchNorm and the Sinkhorn equipartition need "
            f"{MIN_BATCH} images per batch)")
    if per_process < MIN_BATCH:
        need += f", so training needs at least {MIN_BATCH * world_size} usable images on {world_size} process(es)"
    return f"{text}. Fix: {fix}; {need}"


__all__ = ["EmptyEpochError", "EpochStats", "move_images", "smallest_batch", "too_few_images"]
