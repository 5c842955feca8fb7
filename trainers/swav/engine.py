"""SwAV pretraining loop: ``train(config, reporter)`` and ``train_one_epoch``.

Follows facebookresearch/swav ``main_swav.py``: per-iteration learning rate, prototypes
normalised before each forward, queue switched on at ``queue_start_epoch``, prototype
gradients dropped for the first ``freeze_prototypes_epochs`` of iterations, float16 mixed
precision with dynamic loss scaling (precision.py). Differences: augmentation runs on the
training device on decoded uint8 images (see augment.py); the data order and augmentation of
an epoch derive from ``(seed, epoch)`` so that a resumed run continues exactly; the learning
rates are given for a global batch of 256 and scaled linearly to the real one (optim.py).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from trainers.common.devices import ddp_backend, default_device
from trainers.common.precision import autocast, backward_and_step, check_finite, grad_scaler
from trainers.common.provenance import derive_seed, seed_everything
from trainers.data import DatasetError, SkippedImage, UnlabeledImages, collate_images, warn_skipped
from trainers.reporting import Reporter
from trainers.swav.augment import MultiCropAugment
from trainers.swav.checkpoint import CHECKPOINT_FORMAT, Checkpoints, make_queue
from trainers.swav.collapse import CollapseWatch
from trainers.swav.config import MIN_BATCH, SwAVConfig
from trainers.swav.knn import REFERENCE_NAMES, MonitorHook, monitor_references, random_seeds
from trainers.swav.loss import EmbeddingQueue, distributed_ready, swav_loss
from trainers.swav.model import SwAVModel, normalize_prototypes
from trainers.swav.optim import build_optimizer, frozen_prototype_iterations, learning_rate, set_learning_rate
from trainers.swav.stats import EmptyEpochError, EpochStats, move_images, smallest_batch, too_few_images
from trainers.vocabulary import (
    LR,
    SWAV_AMP_SKIPPED_STEPS,
    SWAV_ASSIGNMENT_ENTROPY,
    SWAV_COLLAPSED,
    SWAV_EMBEDDING_STD,
    SWAV_EPOCHS_AT_LN_K,
    SWAV_IMAGES_PER_S,
    SWAV_LN_K,
    SWAV_LOSS,
    SWAV_LOSS_OVER_LN_K,
    SWAV_LOSS_OVER_LN_K_MIN,
    SWAV_PROTOTYPES_USED,
    SWAV_PROTOTYPE_SPAN,
    SWAV_SCORE_STD,
)

log = logging.getLogger(__name__)

METRIC_NAMES = (
    SWAV_LOSS,
    SWAV_LN_K,
    SWAV_LOSS_OVER_LN_K,
    SWAV_EMBEDDING_STD,
    SWAV_SCORE_STD,
    SWAV_PROTOTYPE_SPAN,
    SWAV_ASSIGNMENT_ENTROPY,
    SWAV_PROTOTYPES_USED,
    SWAV_AMP_SKIPPED_STEPS,
    SWAV_IMAGES_PER_S,
    SWAV_LOSS_OVER_LN_K_MIN,
    SWAV_EPOCHS_AT_LN_K,
    SWAV_COLLAPSED,
    LR,
)


# ---------------------------------------------------------------------------
# Reproducible data order
# ---------------------------------------------------------------------------


def epoch_indices(
    num_images: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, max_images: int | None = None
) -> list[int]:
    """This process's image indices for ``epoch``, in order.

    Like ``DistributedSampler``: every process draws the same permutation from ``(seed, epoch)``
    and takes every ``world_size``-th index from ``rank``, after capping the epoch at
    ``max_images`` and trimming so that all processes get the same number.
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
    order = torch.randperm(num_images, generator=generator)
    if max_images is not None:
        order = order[:max_images]
    per_process = len(order) // world_size
    return order[rank : per_process * world_size : world_size].tolist()


def make_loader(
    dataset: UnlabeledImages, indices: Sequence[int], config: SwAVConfig, epoch: int, pin_memory: bool
) -> DataLoader:
    """Batches ``(list[uint8 tensor], skipped files)`` over ``indices``, last partial batch dropped."""
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=list(indices),
        num_workers=config.workers,
        collate_fn=getattr(dataset, "collate", collate_images),  # supervised.LabeledImages adds the classes
        drop_last=True,
        pin_memory=pin_memory,
        # The loader draws its workers' base seed from a generator; give it one derived from
        # (seed, epoch) so it does not consume the global RNG.
        generator=torch.Generator().manual_seed(derive_seed(config.seed, epoch, 1)),
    )


# ---------------------------------------------------------------------------
# One epoch
# ---------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> SwAVModel:
    return model.module if isinstance(model, DistributedDataParallel) else model  # type: ignore[return-value]


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[list[Tensor], Sequence[SkippedImage] | int]],
    augment: MultiCropAugment,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    queue: EmbeddingQueue | None,
    config: SwAVConfig,
    epoch: int,
    iteration: int,
    iters_per_epoch: int,
    device: torch.device,
    generator: torch.Generator,
    progress: bool = False,
    world_size: int | None = None,
) -> tuple[EpochStats, int]:
    """Train ``model`` for one pass over ``loader``.

    Args:
        model: a :class:`SwAVModel`, possibly wrapped in DistributedDataParallel.
        loader: batches ``(list of uint8 images, skipped files)``, as ``collate_images`` gives (or
            a count of skipped files in place of the list).
        augment: the multi-crop augmentation (runs on ``device``).
        optimizer: from :func:`build_optimizer`.
        scaler: gradient scaler, from :func:`trainers.common.precision.grad_scaler` (enabled for
            float16 mixed precision on any device).
        queue: the embedding queue, or None before ``queue_start_epoch`` / without one.
        config: the run's configuration.
        epoch: 0-based epoch (errors and the progress bar show it 1-based).
        iteration: global iteration at the start of the epoch (drives lr and prototype freezing).
        iters_per_epoch: batches per epoch, for the lr schedule and the prototype freezing.
        device: the training device.
        generator: CPU generator for the augmentation (derived from seed and epoch).
        progress: show a tqdm bar.
        world_size: training processes, for the global batch the learning rate is scaled to;
            None = the process group's size (1 without one).

    Returns:
        The epoch's statistics and the global iteration after it.
    """
    core = _unwrap(model)
    model.train()
    if world_size is None:
        world_size = dist.get_world_size() if distributed_ready() else 1
    frozen_iters = frozen_prototype_iterations(config.freeze_prototypes_epochs, iters_per_epoch)
    n_crops = config.total_crops
    stats = EpochStats(config.prototypes, device)
    batches: Iterable[tuple[list[Tensor], Sequence[SkippedImage] | int]] = loader
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", total=iters_per_epoch, leave=False)
        batches = bar
    for step, (images, skipped) in enumerate(batches):
        stats.add_skipped(skipped)
        stats.readable += len(images)
        lr = learning_rate(config, iteration, iters_per_epoch, world_size)
        set_learning_rate(optimizer, lr)
        if smallest_batch(len(images), device) < MIN_BATCH:
            iteration += 1  # the schedule counts loader batches, as the reference
            continue
        images = move_images(images, device)
        crops = augment(images, generator=generator)
        batch = len(images)

        normalize_prototypes(core)
        with autocast(device, config.amp, config.amp_dtype):
            embeddings, scores = model(crops)
        embeddings = embeddings.detach()
        scores = scores.float()

        queue_scores = None
        if queue is not None:
            queue_scores = queue.scores(core.prototypes.weight)
            queue.push([embeddings[c * batch : (c + 1) * batch] for c in config.crops_for_assign])
        loss = swav_loss(
            scores, n_crops, config.crops_for_assign, config.temperature, config.epsilon,
            config.sinkhorn_iterations, queue_scores,
        )
        check_finite(loss, epoch + 1, step)

        # As the reference: the prototypes stay fixed while the features settle.
        frozen = core.prototypes.parameters() if iteration < frozen_iters else ()
        # float16: the scaler skips steps whose gradients overflowed. bfloat16 needs no loss
        # scaling, but a step with inf/nan gradients is skipped all the same (seen on CPU: bf16
        # weight gradients of a strided 3x3 conv on 1x1 maps).
        if not backward_and_step(loss, optimizer, scaler, drop_grads=frozen, skip_non_finite=config.amp):
            stats.amp_skipped += 1

        stats.update(loss, embeddings, scores.detach(), n_crops, config.temperature, core.prototypes.weight)
        stats.images += batch
        iteration += 1
        if bar is not None:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.4g}")
    if bar is not None:
        bar.close()
    return stats, iteration


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def _process_group() -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group).

    Joins a group set up by the launcher: an initialised one (e.g. Ray Train), or torchrun's
    environment variables (NCCL on GPU, gloo on CPU).
    """
    if distributed_ready():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available():
        dist.init_process_group(backend=ddp_backend())
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def train(config: SwAVConfig, reporter: Reporter, progress: bool = False) -> dict[str, float]:
    """Pretrain a ResNet with SwAV on the unlabeled images in ``config.data``.

    Every epoch writes a checkpoint (model, optimizer, scaler, queue, epoch, iteration, RNG
    states, resolved config, git sha) and reports the metrics in :data:`METRIC_NAMES` (``lr``: the
    effective rate of the epoch's last iteration, scaled to the global batch ``batch_size x world
    size``; ``swav/amp_skipped_steps``: steps the loss scaler skipped for inf/nan gradients); the last
    epoch's checkpoint also holds the exported backbone (``backbone.safetensors`` + ``.json``).
    Resumes from ``reporter.restore_dir()`` when set; stops after a report when
    ``reporter.should_stop()``.

    Args:
        config: the run's configuration.
        reporter: receives metrics and checkpoints each epoch.
        progress: show a progress bar over each epoch's batches.

    Returns:
        The metrics of the last epoch trained.
    """
    rank, world_size, created_group = _process_group()
    try:
        return _train(config, reporter, progress, rank, world_size)
    finally:
        if created_group:
            dist.destroy_process_group()


def _train(config: SwAVConfig, reporter: Reporter, progress: bool, rank: int, world_size: int) -> dict[str, float]:
    device = default_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(config.seed)  # same initial weights on every process (DDP also broadcasts them)
    min_size = min(group.size for group in config.crops)
    dataset = UnlabeledImages(config.data, min_size=min_size, mark_skipped=True)
    classes: list[str] = []
    if config.supervised:  # the positive control: the same loop with a classifier (supervised.py)
        from trainers.data.labels import image_labels
        from trainers.swav import supervised

        labels, classes = image_labels(config.labels_file, config.data, dataset.paths)
        dataset = supervised.LabeledImages(dataset, labels)  # type: ignore[assignment]
    per_process = len(epoch_indices(len(dataset), config.seed, 0, rank, world_size, config.max_images))
    iters_per_epoch = per_process // config.batch_size
    if iters_per_epoch == 0:
        # Fewer files than one batch per process: few enough to read them all and say what is usable.
        files = epoch_indices(len(dataset), config.seed, 0, max_images=config.max_images)
        skipped = [item for item in map(dataset.load, files) if isinstance(item, SkippedImage)]
        raise DatasetError(too_few_images(
            config, world_size, len(dataset), len(files) - len(skipped), skipped, len(skipped),
            f"{len(files)} image{' gives' if len(files) == 1 else 's give'} no full batch of "
            f"batch_size={config.batch_size} on each of {world_size} process(es)",
        ))

    core: nn.Module = (supervised.SupervisedModel(config.arch, config.norm, len(classes)) if config.supervised else
                       SwAVModel(config.arch, config.norm, config.prototypes, config.feat_dim, config.hidden_dim))
    one_epoch = supervised.train_one_epoch if config.supervised else train_one_epoch
    if config.sync_bn and device.type == "cuda" and world_size > 1:
        # Swaps the BatchNorm children in place; the root stays the SwAVModel.
        core = nn.SyncBatchNorm.convert_sync_batchnorm(core)  # type: ignore[assignment]
    core.to(device)
    optimizer = build_optimizer(core, config)
    scaler = grad_scaler(device, config.amp, config.amp_dtype)
    augment = MultiCropAugment(config.crops)

    # The loop's hooks, each owning its state, restored from the checkpoint (its metrics carry the monitor's and the
    # collapse watch's) and called in this order after every epoch: monitor, collapse watch, checkpoint + report.
    checkpoints = Checkpoints(config, core, optimizer, scaler, rank, world_size, device)
    start_epoch, iteration, queue, metrics = 0, 0, None, {}
    restore = reporter.restore_dir()
    if restore is not None:
        start_epoch, iteration, queue, metrics = checkpoints.restore(Path(restore))
    monitor = MonitorHook(config, device, rank, metrics)
    watch = None if config.supervised else CollapseWatch(config.feat_dim, metrics)

    model: nn.Module = core
    if world_size > 1:
        model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)

    for epoch in range(start_epoch, config.epochs):
        if queue is None and config.queue_length > 0 and epoch >= config.queue_start_epoch and watch is not None:
            queue = make_queue(config, world_size, device)
        indices = epoch_indices(len(dataset), config.seed, epoch, rank, world_size, config.max_images)
        loader = make_loader(dataset, indices, config, epoch, pin_memory=device.type == "cuda")
        generator = torch.Generator().manual_seed(derive_seed(config.seed, epoch, 2, rank))
        started = time.perf_counter()
        stats, iteration = one_epoch(
            model, loader, augment, optimizer, scaler, queue, config, epoch, iteration,
            iters_per_epoch, device, generator, progress=progress and rank == 0, world_size=world_size,
        )
        try:
            metrics = stats.metrics(time.perf_counter() - started, optimizer.param_groups[0]["lr"])
        except EmptyEpochError:
            raise DatasetError(too_few_images(
                config, world_size, len(dataset), stats.readable_total, stats.skipped,
                stats.unreadable_total + stats.too_small_total,
                f"no batch of epoch {epoch + 1} had {MIN_BATCH} usable images (it read "
                f"{stats.readable_total + stats.unreadable_total + stats.too_small_total} of {len(dataset)} files)",
            )) from None
        if rank == 0:
            warn_skipped(stats.unreadable_total, config.data, stats.too_small_total, stats.skipped, min_size)
        monitor.after_epoch(epoch, metrics, core.trunk)
        change = watch.update(metrics, monitor.latest) if watch is not None else None
        if rank == 0 and change:
            log.warning("epoch %d: %s", epoch + 1, change)
        checkpoints.save(epoch, iteration, queue, metrics, reporter)
        if reporter.should_stop():
            break
    return metrics


__all__ = ["CHECKPOINT_FORMAT", "METRIC_NAMES", "MIN_BATCH", "REFERENCE_NAMES", "monitor_references", "random_seeds", "EmptyEpochError", "EpochStats", "derive_seed",
           "epoch_indices", "make_loader", "train", "train_one_epoch"]
