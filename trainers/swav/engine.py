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
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from trainers.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from trainers.common import (
    check_finite,
    config_to_dict,
    ddp_backend,
    default_device,
    derive_seed,
    git_sha,
    rng_state,
    seed_everything,
    set_rng_state,
)
from trainers.data import (
    DatasetError,
    SkippedImage,
    UnlabeledImages,
    collate_images,
    describe_skipped,
    warn_skipped,
)
from trainers.reporting import Reporter
from trainers.swav.augment import MultiCropAugment
from trainers.swav.collapse import COLLAPSED, CollapseWatch
from trainers.swav.config import MIN_BATCH, SwAVConfig
from trainers.swav.knn import (KNN_TOP1, KNN_TOP1_RANDOM, MONITOR_NAMES, REFERENCE_NAMES, knn_monitor,
                               monitor_references, random_seeds)
from trainers.swav.loss import EmbeddingQueue, distributed_ready, queue_rows_per_process, swav_loss
from trainers.swav.model import SwAVModel, export_trunk, normalize_prototypes
from trainers.swav.optim import build_optimizer, frozen_prototype_iterations, learning_rate, set_learning_rate
from trainers.swav.precision import autocast, backward_and_step, grad_scaler
from trainers.swav.stats import EmptyEpochError, EpochStats, move_images, smallest_batch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "swav-checkpoint/v1"
METRIC_NAMES = (
    "swav/loss",
    "swav/ln_k",
    "swav/loss_over_ln_k",
    "swav/embedding_std",
    "swav/score_std",
    "swav/prototype_span",
    "swav/assignment_entropy",
    "swav/prototypes_used",
    "swav/amp_skipped_steps",
    "swav/images_per_s",
    "swav/loss_over_ln_k_min",
    "swav/epochs_at_ln_k",
    COLLAPSED,
    "lr",
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
        scaler: gradient scaler, from :func:`trainers.swav.precision.grad_scaler` (enabled for
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


def _gather_queue(queue: EmbeddingQueue | None, world_size: int) -> Tensor | None:
    """Every process's queue, stacked ``(world, n_assign, rows, feat_dim)`` (all processes call it)."""
    if queue is None:
        return None
    local = queue.embeddings.detach()
    if world_size == 1:
        return local.unsqueeze(0).cpu()
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local.contiguous())
    return torch.stack(parts).cpu()


def _make_queue(config: SwAVConfig, world_size: int, device: torch.device) -> EmbeddingQueue | None:
    rows = queue_rows_per_process(config.queue_length, config.batch_size, world_size)
    if rows == 0:
        log.warning("queue_length=%d is shorter than the global batch (%d x %d): no queue",
                    config.queue_length, config.batch_size, world_size)
        return None
    return EmbeddingQueue(len(config.crops_for_assign), rows, config.feat_dim, device)


def _restore(
    directory: Path,
    model: SwAVModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: SwAVConfig,
    rank: int,
    world_size: int,
    device: torch.device,
) -> tuple[int, int, EmbeddingQueue | None, dict[str, float]]:
    """Load a checkpoint into the model, optimizer and scaler; restore RNG states.

    Returns:
        (epochs done, global iteration, this process's queue or None, last metrics).
    """
    state = load_checkpoint(directory)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{directory}: not a SwAV checkpoint (format {state.get('format')!r})")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        written = state["config"]
        raise CheckpointError(
            f"{directory}: the checkpoint does not fit this config (it was written with arch={written.get('arch')}, "
            f"prototypes={written.get('prototypes')}, feat_dim={written.get('feat_dim')}, "
            f"hidden_dim={written.get('hidden_dim')}, optimizer={written.get('optimizer')}): {exc}"
        ) from exc
    if state["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    queue = None
    stored = state.get("queue")  # (processes, n_assign, rows, feat_dim)
    if stored is not None:
        queue = _make_queue(config, world_size, device)
        if queue is not None and stored.shape[0] == world_size and stored.shape[1:] == queue.embeddings.shape:
            queue.load_state_dict({"embeddings": stored[rank]})
        elif queue is not None:
            log.warning("%s: stored queue %s does not fit %d process(es) x %s; it restarts empty",
                        directory, tuple(stored.shape), world_size, tuple(queue.embeddings.shape))
    set_rng_state(state["rng"])
    log.info("resumed from %s after epoch %d (iteration %d)", directory, state["epoch"], state["iteration"])
    metrics = {name: float(value) for name, value in state["metrics"].items()}
    return int(state["epoch"]), int(state["iteration"]), queue, metrics


def _too_few_images(
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
        raise DatasetError(_too_few_images(
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
    resolved = config_to_dict(config)
    sha = git_sha()

    start_epoch, iteration, queue, metrics = 0, 0, None, {}
    restore = reporter.restore_dir()
    if restore is not None:
        start_epoch, iteration, queue, metrics = _restore(
            Path(restore), core, optimizer, scaler, config, rank, world_size, device)

    monitor, references = None, {}
    if rank == 0:
        monitor = knn_monitor(config, device)
    if monitor is not None:
        # Scored once (random trunks built aside from their seeds, the run's own first) and carried through
        # checkpoints; a checkpoint without them (written before they existed) has them computed again.
        references = {name: metrics[name] for name in REFERENCE_NAMES if name in metrics}
        if len(references) < len(REFERENCE_NAMES):
            references = monitor_references(monitor, config)
    # The latest monitored figures, carried between monitored epochs for the collapse label.
    latest = {name: metrics[name] for name in MONITOR_NAMES if name in metrics}
    watch = None if config.supervised else CollapseWatch(config.feat_dim, metrics)

    model: nn.Module = core
    if world_size > 1:
        model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)

    for epoch in range(start_epoch, config.epochs):
        if queue is None and config.queue_length > 0 and epoch >= config.queue_start_epoch and watch is not None:
            queue = _make_queue(config, world_size, device)
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
            raise DatasetError(_too_few_images(
                config, world_size, len(dataset), stats.readable_total, stats.skipped,
                stats.unreadable_total + stats.too_small_total,
                f"no batch of epoch {epoch + 1} had {MIN_BATCH} usable images (it read "
                f"{stats.readable_total + stats.unreadable_total + stats.too_small_total} of {len(dataset)} files)",
            )) from None
        if rank == 0:
            warn_skipped(stats.unreadable_total, config.data, stats.too_small_total, stats.skipped, min_size)
        if monitor is not None:
            metrics.update(references)
            if config.knn_due(epoch + 1):
                latest = monitor.evaluate(core.trunk).metrics()
                metrics.update(latest)
        change = watch.update(metrics, latest) if watch is not None else None
        if rank == 0 and change:
            log.warning("epoch %d: %s", epoch + 1, change)

        gathered_queue = _gather_queue(queue, world_size)
        with tempfile.TemporaryDirectory(prefix="swav-ckpt-") as tmp:
            checkpoint_dir = None
            if rank == 0:
                checkpoint_dir = Path(tmp)
                save_checkpoint(checkpoint_dir, {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch + 1,
                    "iteration": iteration,
                    "model": core.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "queue": gathered_queue,
                    "world_size": world_size,
                    "rng": rng_state(),
                    "config": resolved,
                    "git_sha": sha,
                    "metrics": metrics,
                })
                if epoch + 1 == config.epochs:  # training completed: the final checkpoint also carries the trunk
                    export_trunk(checkpoint_dir, core.trunk.state_dict(), resolved, sha, metrics, epoch + 1,
                                 config.method)
            reporter.report(metrics, step=epoch + 1, checkpoint_dir=checkpoint_dir)
        if reporter.should_stop():
            break
    return metrics


__all__ = ["CHECKPOINT_FORMAT", "KNN_TOP1", "KNN_TOP1_RANDOM", "METRIC_NAMES", "MIN_BATCH", "MONITOR_NAMES",
           "REFERENCE_NAMES", "monitor_references", "random_seeds", "EmptyEpochError", "EpochStats", "derive_seed",
           "epoch_indices", "make_loader", "train", "train_one_epoch"]
