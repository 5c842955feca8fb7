"""The fine-tuning loop: ``train_one_epoch`` and ``train`` (torchvision's references/detection split).

``train`` builds the data sets and the detector, resumes exactly from ``reporter.restore_dir()``
when asked (model, optimizer, scaler, epoch, iteration, RNG), and per epoch trains, then calls its
hooks in a fixed order, each owning its state and restored from the checkpoint:
:class:`~trainers.detection.evaluation.EvaluationHook` (every ``eval_every`` epochs and the last) and
:class:`~trainers.detection.checkpoint.Checkpoints` (the checkpoint, the final one with the exported
detector, and the report). Epochs count from 0 in the loop, as in both trainers and both references
(torchvision's ``range(args.start_epoch, args.epochs)``); a report's step and a checkpoint's
``epoch`` are the epochs done.
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN

from trainers.common.devices import default_device
from trainers.common.precision import autocast, backward_and_step, check_finite, grad_scaler
from trainers.common.provenance import seed_everything
from trainers.common.schedules import warmup_cosine
from trainers.data import CocoDetection, detection_collate
from trainers.detection.augment import EpochFlips
from trainers.detection.checkpoint import Checkpoints
from trainers.detection.config import DetectionConfig
from trainers.detection.evaluation import EvaluationHook
from trainers.detection.model import build_detector, param_groups
from trainers.reporting import Reporter
from trainers.vocabulary import DET_IMAGES_PER_S, DET_ITERATIONS, DET_LOSS, LR

WARMUP_START = 1e-3  # warmup starts at 0.1% of the rate, as torchvision's detection reference


def amp_dtype(device: torch.device) -> str:
    """Fine-tuning's mixed-precision dtype: float16 (with loss scaling) on CUDA, as torchvision's detection
    reference (``--amp``); bfloat16 on a CPU, whose float16 kernels are slow (:mod:`trainers.common.precision`)."""
    return "float16" if device.type == "cuda" else "bfloat16"


def lr_factor(iteration: int, total_iters: int, config: DetectionConfig) -> float:
    """Multiplier of every group's peak lr at ``iteration`` (0-based): linear warmup, then step or cosine.

    ``step`` multiplies by ``lr_gamma`` at each fraction in ``lr_steps`` of ``total_iters``
    (the warmup factor applies on top); ``cosine`` decays to 0 over the iterations after warmup.
    """
    if config.lr_schedule == "cosine":
        return warmup_cosine(iteration, total_iters, config.warmup_iters, 1.0, 0.0, WARMUP_START)
    warm = 1.0
    if iteration < config.warmup_iters:
        warm = WARMUP_START + (1.0 - WARMUP_START) * iteration / config.warmup_iters
    passed = sum(iteration >= int(step * total_iters) for step in config.lr_steps)
    return warm * config.lr_gamma**passed


def _set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * factor


def reported_lr(optimizer: torch.optim.Optimizer) -> float:
    """The lr the ``lr`` metric shows: the detector's group (``all`` under uniform)."""
    for group in optimizer.param_groups:
        if group["name"] in ("detector", "all"):
            return float(group["lr"])
    return float(optimizer.param_groups[0]["lr"])


def train_loader(dataset: CocoDetection, config: DetectionConfig, epoch: int) -> DataLoader:
    """Shuffled, randomly flipped training batches of an un-augmented ``dataset`` (``train=False``).

    The order comes from a generator seeded by (seed, epoch) in this process, the flips from
    :func:`~trainers.detection.augment.flip_decisions` (seed, epoch, image index): neither depends
    on ``config.workers``, and a resumed run sees the same batches as an uninterrupted one.
    """
    if getattr(dataset, "train", False):
        raise ValueError("train_loader flips the images itself (per seed, epoch and index); give it the data set "
                         "built with train=False, not one that flips with the workers' RNG")
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    flipped = EpochFlips(dataset, config.seed, epoch)
    return DataLoader(flipped, batch_size=config.batch_size, shuffle=True, num_workers=config.workers,
                      collate_fn=detection_collate, generator=generator, drop_last=False,
                      persistent_workers=False)


def iters_per_epoch(dataset_len: int, config: DetectionConfig) -> int:
    """Optimizer steps per epoch (a full pass, capped by ``max_iters_per_epoch``)."""
    steps = math.ceil(dataset_len / config.batch_size)
    return min(steps, config.max_iters_per_epoch) if config.max_iters_per_epoch else steps


def train_one_epoch(
    model: FasterRCNN,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    iteration: int,
    total_iters: int,
    config: DetectionConfig,
    progress: bool = False,
) -> tuple[dict[str, float], int]:
    """One pass over ``loader`` (at most ``max_iters_per_epoch`` steps).

    Args:
        epoch: the epoch, from 0 (messages name it from 1).
        iteration: global step count before this epoch (drives the lr schedule).
        total_iters: steps of the whole run.

    Returns:
        ``({"det/loss": mean loss, "det/images_per_s": ...}, iteration after the epoch)``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (names the epoch and step).
    """
    model.train()
    steps = iters_per_epoch(len(loader.dataset), config)  # type: ignore[arg-type]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False)
    loss_sum, images, step = 0.0, 0, 0
    start = time.perf_counter()
    # islice, not a break: fetching a batch past the cap would draw augmentation randomness.
    for step, (batch, targets) in enumerate(itertools.islice(loader, steps), start=1):
        _set_lr(optimizer, lr_factor(iteration, total_iters, config))
        batch = [image.to(device, non_blocking=True).float().div_(255.0) for image in batch]
        targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]
        with autocast(device, config.amp, amp_dtype(device)):
            losses = model(batch, targets)
            loss = sum(losses.values())
        check_finite(loss, epoch + 1, step)
        # The gradients are unscaled before clipping: the true ones are clipped, not the loss-scaled ones.
        backward_and_step(loss, optimizer, scaler, clip_grad_norm=config.clip_grad_norm)
        iteration += 1
        loss_sum += float(loss.detach())
        images += len(batch)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / step:.4f}", lr=f"{reported_lr(optimizer):.2e}")
    if bar is not None:
        bar.close()
    elapsed = max(time.perf_counter() - start, 1e-9)
    return {DET_LOSS: loss_sum / max(step, 1), DET_IMAGES_PER_S: images / elapsed}, iteration


def train(config: DetectionConfig, reporter: Reporter, progress: bool = False) -> dict[str, float]:
    """Fine-tune Faster R-CNN (FPN, or C4 for ``head='res5'``) as ``config`` says, reporting every epoch.

    Per epoch: ``det/loss``, ``det/images_per_s``, ``lr`` (the detector group's); at eval epochs
    also ``det/AP``, ``det/AP50``, ``det/AP75``, ``det/AP_small``, ``det/AP_medium``,
    ``det/AP_large`` with the per-class AP50 JSON and the detection PNG as artifacts.

    Args:
        config: the run.
        reporter: receives metrics, checkpoints and artifacts; may ask to stop; may name a checkpoint to resume.
        progress: show a tqdm bar over each epoch's batches.

    Returns:
        The final metrics: the last epoch's training metrics and the latest evaluation.
    """
    seed_everything(config.seed)
    device = default_device()
    train_set, val_set = _datasets(config)
    model = build_detector(config, train_set.num_classes).to(device)
    groups = param_groups(model, config)
    optimizer = torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=config.momentum, weight_decay=config.weight_decay)
    scaler = grad_scaler(device, config.amp, amp_dtype(device))
    total_iters = iters_per_epoch(len(train_set), config) * config.epochs

    # The loop's hooks, each owning its state, restored from the checkpoint and called in this order after every
    # epoch: evaluation, checkpoint + report.
    checkpoints = Checkpoints(config, model, optimizer, scaler, train_set.class_names, train_set.label_to_cat_id)
    start_epoch, iteration, metrics, evaluation_state = 0, 0, {}, {}
    restore = reporter.restore_dir()
    if restore is not None:
        start_epoch, iteration, metrics, evaluation_state = checkpoints.restore(Path(restore))
    evaluation = EvaluationHook(config, val_set, device, evaluation_state)
    metrics = {**metrics, **evaluation.latest}

    for epoch in range(start_epoch, config.epochs):
        epoch_metrics, iteration = train_one_epoch(
            model, optimizer, scaler, train_loader(train_set, config, epoch), device, epoch, iteration,
            total_iters, config, progress,
        )
        epoch_metrics[LR] = reported_lr(optimizer)
        epoch_metrics[DET_ITERATIONS] = float(iteration)  # optimizer steps so far: the x of fine-tuning curves
        with tempfile.TemporaryDirectory(prefix="ablate-det-") as tmp:
            evaluated, artifacts = evaluation.after_epoch(epoch, model, Path(tmp) / "eval")
            epoch_metrics.update(evaluated)
            checkpoints.save(epoch, iteration, epoch_metrics, evaluation.state_dict(), reporter,
                             Path(tmp) / "checkpoint", artifacts)
        metrics = {**evaluation.latest, **epoch_metrics}
        if reporter.should_stop():
            break
    return metrics


def _datasets(config: DetectionConfig) -> tuple[CocoDetection, CocoDetection]:
    """The training and validation sets, un-augmented (train_loader applies the flips, drawn per (seed, epoch,
    index), not per worker); both must list the same categories."""
    train_set = CocoDetection(config.train_images, config.train_annotations, train=False)
    val_set = CocoDetection(config.val_images, config.val_annotations, train=False)
    if train_set.label_to_cat_id != val_set.label_to_cat_id or train_set.class_names != val_set.class_names:
        raise ValueError(
            f"{config.train_annotations} and {config.val_annotations} have different categories "
            f"({dict(zip(train_set.label_to_cat_id.values(), train_set.class_names))} vs "
            f"{dict(zip(val_set.label_to_cat_id.values(), val_set.class_names))}); both must list the same ones"
        )
    return train_set, val_set
