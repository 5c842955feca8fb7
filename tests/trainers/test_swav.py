"""Unit tests of the SwAV pieces: config, multi-crop, Sinkhorn, loss, queue, statistics,
prototype freezing, optimiser, learning-rate scaling, loss scaling. Tiny tensors and property
checks; no data set needed."""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from trainers.checkpoints import CheckpointError
from trainers.data import TOO_SMALL, UNREADABLE, SkippedImage
from trainers.common.configs import config_from_dict, config_to_dict
from trainers.common.precision import NonFiniteLossError
from trainers.swav import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LARS,
    CropGroup,
    EmbeddingQueue,
    EpochStats,
    MultiCropAugment,
    SwAVConfig,
    SwAVModel,
    backward_and_step,
    build_optimizer,
    embedding_std,
    epoch_indices,
    frozen_prototype_iterations,
    grad_scaler,
    learning_rate,
    load_backbone,
    queue_rows_per_process,
    scaled_lr,
    sinkhorn,
    swav_loss,
    train_one_epoch,
)
from trainers.swav import augment as augment_module
from trainers.swav import photometric
from trainers.swav.optim import set_learning_rate
from trainers.swav.augment import random_resized_crop_boxes
from trainers.swav.photometric import (
    JITTER_ORDERS,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    gaussian_blur,
)
from tests.trainers.cuda import cuda_only

TINY_CROPS = ({"count": 2, "size": 32, "min_scale": 0.14, "max_scale": 1.0},
              {"count": 2, "size": 16, "min_scale": 0.05, "max_scale": 0.14})


def reference_sinkhorn(out: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """facebookresearch/swav ``distributed_sinkhorn`` on one process, verbatim arithmetic (float64)."""
    q = torch.exp(out.double() / epsilon).t()
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


def test_defaults_follow_the_paper() -> None:
    config = SwAVConfig()
    assert config.prototypes == 3000 and config.feat_dim == 128 and config.temperature == 0.1
    assert config.epsilon == 0.05 and config.sinkhorn_iterations == 3 and config.crops_for_assign == (0, 1)
    assert config.crops == (CropGroup(2, 224, 0.14, 1.0), CropGroup(6, 96, 0.05, 0.14))
    assert config.total_crops == 8 and config.crop_sizes == (224, 224) + (96,) * 6
    assert config.base_lr == 0.6 and config.freeze_prototypes_epochs == 1.0  # the reference's batch-256 recipe
    assert config.amp and config.amp_dtype == "float16"  # the reference's fp16 with loss scaling


def test_crops_from_yaml_lists_are_normalised() -> None:
    config = config_from_dict(SwAVConfig, {"crops": [dict(c) for c in TINY_CROPS], "crops_for_assign": [0, 1]})
    assert config.crops == (CropGroup(2, 32, 0.14, 1.0), CropGroup(2, 16, 0.05, 0.14))
    assert config.crops_for_assign == (0, 1)
    # The resolved config round-trips through plain values (what MLflow and checkpoints store).
    assert config_from_dict(SwAVConfig, config_to_dict(config)) == config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"arch": "resnet99"}, "arch"),
        ({"norm": "ln"}, "norm"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"crops": [{"count": 2, "size": 32, "min_scale": 0.5, "max_scale": 1.5}]}, "crops[0].max_scale"),
        ({"crops": [{"count": 2, "size": 32, "min_scale": 0.0, "max_scale": 0.5}]}, "crops[0].min_scale"),
        ({"crops": [{"count": 2, "size": 32, "min_scale": 0.6, "max_scale": 0.5}]}, "crops[0].min_scale"),
        ({"crops": [{"count": 1, "size": 32, "min_scale": 0.1, "max_scale": 0.5}]}, "crops"),
        ({"prototypes": 0}, "prototypes"),
        ({"base_lr": -0.1}, "base_lr"),
        ({"final_lr": -1e-3}, "final_lr"),
        ({"queue_length": 3840, "epochs": 10, "queue_start_epoch": 15}, "queue_start_epoch"),
        ({"queue_length": 8, "batch_size": 16}, "queue_length"),
        ({"crops_for_assign": (0, 8)}, "crops_for_assign"),
        ({"crops_for_assign": (1, 1)}, "crops_for_assign"),
        ({"crops_for_assign": ()}, "crops_for_assign"),
        ({"temperature": 0}, "temperature"),
        ({"epsilon": -0.05}, "epsilon"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations"),
        ({"batch_size": 1}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"warmup_epochs": 200, "epochs": 100}, "warmup_epochs"),
        ({"amp": "yes"}, "amp"),
        ({"amp_dtype": "fp16"}, "amp_dtype"),
        ({"freeze_prototypes_epochs": -1}, "freeze_prototypes_epochs"),
        ({"freeze_prototypes_epochs": 313, "epochs": 100}, "freeze_prototypes_epochs"),
        ({"freeze_prototypes_epochs": "1"}, "freeze_prototypes_epochs"),
        ({"freeze_prototypes_epochs": float("nan")}, "freeze_prototypes_epochs"),
        ({"max_images": 3, "batch_size": 4}, "max_images"),
        ({"workers": -1}, "workers"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        config_from_dict(SwAVConfig, overrides)
    message = str(excinfo.value)
    assert message.startswith(f"{field}="), message
    assert "invalid" in message


def test_unknown_keys_suggest_the_closest_name() -> None:
    with pytest.raises(ValueError, match="unknown key 'prototype'.*did you mean 'prototypes'"):
        config_from_dict(SwAVConfig, {"prototype": 100})
    with pytest.raises(ValueError, match="crops\\[0\\].*unknown key 'sise'.*did you mean 'size'"):
        config_from_dict(SwAVConfig, {"crops": [{"count": 2, "sise": 32, "min_scale": 0.1, "max_scale": 1.0}]})
    with pytest.raises(ValueError, match="crops\\[1\\]: missing key"):
        config_from_dict(SwAVConfig, {"crops": [TINY_CROPS[0], {"count": 2, "size": 16}]})
    # The iteration count it replaced (and the reference's flag) point at the new field.
    for old in ("freeze_prototypes_iters", "freeze_prototypes_niters"):
        with pytest.raises(ValueError, match=f"unknown key '{old}'.*did you mean 'freeze_prototypes_epochs'"):
            config_from_dict(SwAVConfig, {old: 313})


def test_freeze_prototypes_error_gives_the_reference_value() -> None:
    with pytest.raises(ValueError, match="313 is invalid: .*about 1 epoch: 5005 iterations at batch 256"):
        config_from_dict(SwAVConfig, {"freeze_prototypes_epochs": 313})


# ---------------------------------------------------------------------------
# Sinkhorn
# ---------------------------------------------------------------------------


def test_sinkhorn_matches_the_reference_implementation() -> None:
    scores = unit_rows(32, 16, 0) @ unit_rows(8, 16, 1).t()
    q = sinkhorn(scores, epsilon=0.05, iterations=3)
    torch.testing.assert_close(q, reference_sinkhorn(scores).float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("batch", "prototypes"), [(32, 8), (12, 30), (7, 7)])
def test_sinkhorn_marginals(batch: int, prototypes: int) -> None:
    scores = unit_rows(batch, 16, 2) @ unit_rows(prototypes, 16, 3).t()
    q3 = sinkhorn(scores, 0.05, 3)
    assert q3.dtype == torch.float32 and q3.shape == (batch, prototypes)
    assert (q3 >= 0).all()
    torch.testing.assert_close(q3.sum(dim=1), torch.ones(batch), atol=1e-5, rtol=0)
    # Three iterations already pull the prototype marginals much closer to B/K than the plain softmax.
    target = torch.full((prototypes,), batch / prototypes)
    softmax_gap = (torch.softmax(scores / 0.05, dim=1).sum(0) - target).abs().max()
    assert (q3.sum(0) - target).abs().max() < softmax_gap
    # Iterated to convergence, every prototype gets exactly B/K.
    q = sinkhorn(scores, 0.05, 200)
    torch.testing.assert_close(q.sum(dim=0), target, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("ratio", [1e2, 1e3, 5e3])
def test_sinkhorn_is_stable_for_large_scores_over_epsilon(ratio: float) -> None:
    scores = unit_rows(16, 8, 4) @ unit_rows(10, 8, 5).t()  # cosine scores in [-1, 1]
    q = sinkhorn(scores, epsilon=1.0 / ratio, iterations=3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16), atol=1e-4, rtol=0)
    # Unnormalised scores as well (scores / epsilon = ratio * randn).
    q = sinkhorn(torch.randn(16, 10, generator=torch.Generator().manual_seed(0)) * ratio * 0.05, epsilon=0.05)
    assert torch.isfinite(q).all()


def test_sinkhorn_computes_in_float32_under_autocast() -> None:
    scores = (unit_rows(8, 8, 6) @ unit_rows(4, 8, 7).t()).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = sinkhorn(scores)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, sinkhorn(scores.float()), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kwargs", "message"), [({"epsilon": 0.0}, "epsilon"), ({"iterations": 0}, "iterations")])
def test_sinkhorn_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sinkhorn(torch.zeros(4, 3), **kwargs)


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------


def reference_loss(scores: torch.Tensor, n_crops: int, assign: tuple[int, ...], temperature: float) -> torch.Tensor:
    """The reference's loss loop (main_swav.py), written out independently."""
    bs = scores.shape[0] // n_crops
    loss = 0.0
    for crop_id in assign:
        q = reference_sinkhorn(scores[bs * crop_id: bs * (crop_id + 1)]).float()
        subloss = 0.0
        for v in [v for v in range(n_crops) if v != crop_id]:
            x = scores[bs * v: bs * (v + 1)] / temperature
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (n_crops - 1)
    return loss / len(assign)


def test_swav_loss_matches_the_reference_loop() -> None:
    scores = unit_rows(4 * 6, 16, 8) @ unit_rows(12, 16, 9).t()
    for assign in [(0, 1), (0,), (1, 3)]:
        torch.testing.assert_close(swav_loss(scores, 4, assign, 0.1, 0.05, 3), reference_loss(scores, 4, assign, 0.1))


def test_swav_loss_of_identical_embeddings() -> None:
    """Collapse: every embedding identical -> uniform codes, loss = ln K + KL(uniform || prediction).

    With arbitrary prototypes the prediction softmax(p / T) is not uniform, so the loss is the
    cross-entropy of the uniform code, which is ln K plus that KL and exactly ln K when the
    prototype scores tie (the collapsed optimum the paper describes).
    """
    k, n_crops, batch = 10, 3, 5
    prototypes = unit_rows(k, 8, 10)
    embedding = unit_rows(1, 8, 11)
    scores = (embedding @ prototypes.t()).expand(n_crops * batch, k).contiguous()
    codes = sinkhorn(scores[:batch])
    torch.testing.assert_close(codes, torch.full((batch, k), 1.0 / k), atol=1e-6, rtol=0)
    loss = swav_loss(scores, n_crops, (0, 1), temperature=0.1)
    logits = scores[0] / 0.1
    expected = torch.logsumexp(logits, 0) - logits.mean()  # = ln K + KL(u || softmax)
    torch.testing.assert_close(loss, expected)
    assert loss >= math.log(k) - 1e-5
    # Scores that tie (embedding orthogonal to every prototype): exactly ln K.
    tied = torch.zeros(n_crops * batch, k)
    torch.testing.assert_close(swav_loss(tied, n_crops, (0, 1)), torch.tensor(math.log(k)))


def test_swav_loss_gradient_flows_through_predictions_only() -> None:
    scores = (unit_rows(2 * 4, 8, 12) @ unit_rows(6, 8, 13).t()).requires_grad_(True)
    swav_loss(scores, 2, (0,)).backward()
    # Crop 0's codes are targets (no gradient) and crop 0 is not predicted from itself: only crop 1 gets gradient.
    assert scores.grad[:4].abs().sum() == 0
    assert scores.grad[4:].abs().sum() > 0


# ---------------------------------------------------------------------------
# Queue
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "batch", "world", "rows"),
    [(3840, 64, 4, 960), (100, 8, 3, 32), (100, 8, 1, 96), (7, 8, 1, 0), (256, 256, 2, 0), (512, 256, 2, 256)],
)
def test_queue_length_is_rounded_to_the_global_batch(length: int, batch: int, world: int, rows: int) -> None:
    assert queue_rows_per_process(length, batch, world) == rows
    assert (rows * world) % (batch * world) == 0


def test_queue_is_fifo_and_used_only_once_full() -> None:
    queue = EmbeddingQueue(n_assign=2, rows=6, feat_dim=4)
    prototypes = unit_rows(5, 4, 14)
    batches = [[unit_rows(3, 4, 100 + 2 * s), unit_rows(3, 4, 101 + 2 * s)] for s in range(3)]
    assert queue.scores(prototypes) is None  # empty
    queue.push(batches[0])
    assert queue.scores(prototypes) is None  # half full: not used yet
    assert not queue.is_full()
    queue.push(batches[1])
    assert queue.is_full()
    scores = queue.scores(prototypes)
    assert scores is not None and len(scores) == 2 and scores[0].shape == (6, 5)
    # Newest first.
    torch.testing.assert_close(queue.embeddings[0, :3], batches[1][0])
    torch.testing.assert_close(queue.embeddings[0, 3:], batches[0][0])
    queue.push(batches[2])  # the oldest block falls off
    torch.testing.assert_close(queue.embeddings[1, :3], batches[2][1])
    torch.testing.assert_close(queue.embeddings[1, 3:], batches[1][1])
    # Scores are recomputed against the prototypes passed in (they move every step).
    moved = unit_rows(5, 4, 15)
    torch.testing.assert_close(queue.scores(moved)[1], queue.embeddings[1] @ moved.t())
    state = queue.state_dict()
    restored = EmbeddingQueue(2, 6, 4)
    restored.load_state_dict(state)
    assert restored.is_full()
    torch.testing.assert_close(restored.embeddings, queue.embeddings)
    with pytest.raises(ValueError, match="do not fit"):
        queue.push([unit_rows(7, 4, 0), unit_rows(7, 4, 1)])


def test_loss_with_queue_assigns_over_queue_and_batch() -> None:
    batch, k = 4, 6
    scores = unit_rows(2 * batch, 8, 16) @ unit_rows(k, 8, 17).t()
    queue_scores = [unit_rows(8, 8, 18) @ unit_rows(k, 8, 17).t()]
    with_queue = swav_loss(scores, 2, (0,), queue_scores=queue_scores)
    codes = sinkhorn(torch.cat([queue_scores[0], scores[:batch]]))[-batch:]
    expected = -(codes * F.log_softmax(scores[batch:] / 0.1, dim=1)).sum(1).mean()
    torch.testing.assert_close(with_queue, expected)
    assert not torch.allclose(with_queue, swav_loss(scores, 2, (0,)))
    # A queue entry of None (not full yet) means no queue.
    torch.testing.assert_close(swav_loss(scores, 2, (0,), queue_scores=[None]), swav_loss(scores, 2, (0,)))


# ---------------------------------------------------------------------------
# Collapse statistics
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Multi-crop augmentation
# ---------------------------------------------------------------------------


def sample_images(n: int = 5, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = [(40, 60), (64, 48), (20, 300), (50, 50), (33, 71)]
    return [torch.randint(0, 256, (3, *sizes[i % len(sizes)]), generator=g, dtype=torch.uint8) for i in range(n)]


def test_multicrop_shapes_dtype_and_range() -> None:
    augment = MultiCropAugment(TINY_CROPS)
    images = sample_images()
    views = augment(images, generator=torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 2
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for view in views:
        assert view.dtype == torch.float32 and torch.isfinite(view).all()
        pixels = view * std + mean  # back to [0, 1]
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    # Views differ from each other (independent crops and colours).
    assert not torch.allclose(views[0], views[1])


def test_multicrop_is_reproducible_from_its_generator() -> None:
    augment = MultiCropAugment(TINY_CROPS)
    images = sample_images()
    first = augment(images, generator=torch.Generator().manual_seed(3))
    again = augment(images, generator=torch.Generator().manual_seed(3))
    other = augment(images, generator=torch.Generator().manual_seed(4))
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(first[0], other[0])


def test_multicrop_keeps_images_in_order() -> None:
    """Each output row belongs to the input image of the same index (the batch is sorted internally)."""
    images = [torch.full((3, 24, 24), value, dtype=torch.uint8) for value in (0, 60, 120, 180, 240, 30)]
    views = MultiCropAugment([{"count": 3, "size": 8, "min_scale": 0.5, "max_scale": 1.0}])(
        images, generator=torch.Generator().manual_seed(1))
    # Every photometric op keeps a flat image flat and a black image black, so row 0 of every
    # view must still be black: the rows were put back in image order.
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for view in views:
        pixels = view * std + mean
        assert pixels[0].abs().max() < 1e-5  # black stays black under every photometric op
        assert (pixels.flatten(1).std(dim=1) < 1e-4).all()  # flat images stay flat


def test_crop_boxes_follow_random_resized_crop() -> None:
    heights = torch.tensor([100, 50, 10, 300])
    widths = torch.tensor([200, 50, 300, 40])
    boxes = random_resized_crop_boxes(heights.repeat(200), widths.repeat(200), (0.05, 0.14),
                                      torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    H, W = heights.repeat(200), widths.repeat(200)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    assert (h >= 1).all() and (w >= 1).all()
    fits = (torch.arange(len(boxes)) % 4) < 2  # the 10 x 300 and 300 x 40 images cannot fit 3/4-4/3 crops of that area
    area = (h * w).double() / (H * W).double()
    assert (area[fits] > 0.04).all() and (area[fits] < 0.16).all()
    ratio = w.double() / h.double()
    assert (ratio[fits] > 0.7).all() and (ratio[fits] < 1.45).all()
    # Fallback: torchvision's central crop with the ratio clipped to 4/3 (10 x 300 -> 10 x 13).
    assert boxes[2].tolist() == [0, 143, 10, 13]


def test_photometric_ops_match_torchvision() -> None:
    x = torch.rand(5, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    factors = torch.tensor([0.2, 0.7, 1.0, 1.4, 1.8])
    shifts = torch.tensor([-0.2, -0.05, 0.0, 0.1, 0.2])
    pairs = [(adjust_brightness, TF.adjust_brightness, factors), (adjust_contrast, TF.adjust_contrast, factors),
             (adjust_saturation, TF.adjust_saturation, factors), (adjust_hue, TF.adjust_hue, shifts)]
    for ours, theirs, params in pairs:
        expected = torch.stack([theirs(x[i], float(params[i])) for i in range(5)])
        torch.testing.assert_close(ours(x.clone(), params), expected, atol=2e-4, rtol=0)
    blurred = gaussian_blur(x, torch.tensor([0.5, 1.0, 2.0, 0.1, 1.5]))
    assert blurred.shape == x.shape
    # Interior pixels equal torchvision's Gaussian blur (borders differ: replicate vs reflect padding).
    expected = TF.gaussian_blur(x[2], [13, 13], [2.0, 2.0])
    torch.testing.assert_close(blurred[2, :, 6:-6, 6:-6], expected[:, 6:-6, 6:-6], atol=1e-5, rtol=0)


def test_color_jitter_applies_each_samples_own_order() -> None:
    n = 6
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    params = torch.tensor([[1.6, 0.4, 1.7, 0.15], [0.3, 1.5, 0.5, -0.1]] * 3)
    orders = torch.tensor([0, 23, 5, 11, 17, 0])
    apply = torch.tensor([True, True, True, True, False, True])
    out = color_jitter(x.clone(), params, orders, apply)
    ops = {0: TF.adjust_brightness, 1: TF.adjust_contrast, 2: TF.adjust_saturation, 3: TF.adjust_hue}
    for i in range(n):
        expected = x[i]
        if apply[i]:
            for op in JITTER_ORDERS[int(orders[i])]:
                expected = ops[op](expected, float(params[i, op]))
        torch.testing.assert_close(out[i], expected, atol=2e-4, rtol=0)
    # The order matters (brightness then saturation is not saturation then brightness once clipped).
    assert not torch.allclose(out[0], out[5])
    assert torch.equal(out[4], x[4])  # a sample not jittered goes through every round unchanged, bit for bit


@pytest.mark.parametrize("crops", [TINY_CROPS, [{"count": 2, "size": 96, "min_scale": 0.3, "max_scale": 1.0}]])
def test_cpu_windows_and_whole_batch_paths_agree(crops) -> None:
    """The sorted, cache-windowed CPU path and the whole-batch path (used on GPUs) give the same views up to their
    resize filter (per-image triangle vs roi_align's box; the photometric ops agree exactly on the same crops:
    the property test below). The same draws: a wrong box, flip or op would be off by far more."""
    images = sample_images(12, seed=2)
    windowed = MultiCropAugment(crops, chunked=True)(images, generator=torch.Generator().manual_seed(5))
    batched = MultiCropAugment(crops, chunked=False)(images, generator=torch.Generator().manual_seed(5))
    for a, b in zip(windowed, batched):
        same, mirrored = float((a - b).abs().mean()), float((a - b.flip(-1)).abs().mean())
        assert a.shape == b.shape and same < 0.25  # normalised units, on these noise images
        assert mirrored > 2 * same, (same, mirrored)  # the boxes and flips agree: a mirrored view is far off


PROBABILITIES = {  # (GRAYSCALE_P, BLUR_P, JITTER_P)
    "reference": (0.2, 0.5, 0.8),
    "all-gray-some-blur": (1.0, 0.5, 0.8),  # a whole window grayscale, then only its tail blurred
    "all-gray-all-blur": (1.0, 1.0, 1.0),
    "all-blur": (0.0, 1.0, 0.8),
    "none": (0.0, 0.0, 0.0),
}


@pytest.mark.parametrize("probabilities", PROBABILITIES.values(), ids=PROBABILITIES.keys())
def test_windowed_view_equals_whole_batch_view_for_any_draws(
    monkeypatch: pytest.MonkeyPatch, probabilities: tuple[float, float, float]
) -> None:
    """Property: from the same crop boxes and draws, ``_view_chunked`` == ``_view_batched``.

    Over seeds and window sizes (1, 2, 3 images, or the whole batch). Covers windows that are
    wholly grayscale with a partly blurred tail, which used to write into an ``expand()`` view
    of the luma and raise "more than one element of the written-to tensor refers to a single
    memory location".
    """
    gray_p, blur_p, jitter_p = probabilities
    size = 32
    monkeypatch.setattr(photometric, "GRAYSCALE_P", gray_p)
    monkeypatch.setattr(photometric, "BLUR_P", blur_p)
    monkeypatch.setattr(photometric, "JITTER_P", jitter_p)
    augment = MultiCropAugment([{"count": 1, "size": size, "min_scale": 0.14, "max_scale": 1.0}])
    images = sample_images(6, seed=1)
    heights = torch.tensor([im.shape[1] for im in images])
    widths = torch.tensor([im.shape[2] for im in images])
    for seed in range(8):
        images_per_window = (1, 2, 3, 64)[seed % 4]
        monkeypatch.setattr(augment_module, "CPU_CHUNK_ELEMENTS", images_per_window * 3 * size * size)
        generator = torch.Generator().manual_seed(seed)
        boxes = random_resized_crop_boxes(heights, widths, (0.14, 1.0), generator)
        draws = photometric.Draws.sample(len(images), generator)
        crops = augment.crop(augment_module.stack_images(images).float(), boxes, size, draws.flip)
        windowed = augment._view_chunked(crops.clone(), draws)
        batched = augment._view_batched(crops.clone(), draws)
        # Not bit-exact: each path cuts its blur kernels at 3 sigma of the largest sigma among
        # the rows it blurs together (measured up to 1.4e-3 here); a wrong op is off by > 0.1.
        torch.testing.assert_close(windowed, batched, atol=5e-3, rtol=0,
                                   msg=lambda m: f"seed {seed}, {images_per_window} image(s) per window: {m}")


def test_multicrop_survives_all_grayscale_windows() -> None:
    """The reported crash: 16 images of 200 px, one 160-px view, generator seed 18."""
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 200, 200), generator=g, dtype=torch.uint8) for _ in range(16)]
    augment = MultiCropAugment([{"count": 1, "size": 160, "min_scale": 0.14, "max_scale": 1.0}], chunked=True)
    (view,) = augment(images, generator=torch.Generator().manual_seed(18))
    assert view.shape == (16, 3, 160, 160) and torch.isfinite(view).all()


def test_multicrop_rejects_non_uint8_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        MultiCropAugment(TINY_CROPS)([torch.rand(3, 20, 20)])


@cuda_only
def test_multicrop_on_cuda_matches_shapes_and_ranges() -> None:
    images = [im.cuda() for im in sample_images()]
    views = MultiCropAugment(TINY_CROPS)(images, generator=torch.Generator().manual_seed(0))
    assert all(v.is_cuda and v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    assert [tuple(v.shape) for v in views] == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 2


# ---------------------------------------------------------------------------
# Model, prototype freezing, optimiser, schedule
# ---------------------------------------------------------------------------


def tiny_config(**overrides) -> SwAVConfig:
    values = dict(arch="resnet18", prototypes=16, feat_dim=16, hidden_dim=32, crops=TINY_CROPS, epochs=2,
                  batch_size=4, workers=0, amp=False, seed=0, data="unused")
    values.update(overrides)
    return SwAVConfig(**values)


def test_model_embeds_every_crop_with_normalised_outputs() -> None:
    model = SwAVModel("resnet18", "gn", prototypes=7, feat_dim=16, hidden_dim=32)
    crops = [torch.randn(3, 3, 32, 32)] * 2 + [torch.randn(3, 3, 16, 16)] * 2
    embeddings, scores = model(crops)
    assert embeddings.shape == (12, 16) and scores.shape == (12, 7)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(12))
    assert isinstance(model.trunk.bn1, torch.nn.GroupNorm)
    assert isinstance(model.projection_head[1], torch.nn.BatchNorm1d)


def test_linear_projection_head_when_hidden_dim_is_zero() -> None:
    model = SwAVModel("resnet18", "bn", prototypes=5, feat_dim=8, hidden_dim=0)
    assert isinstance(model.projection_head, torch.nn.Linear)
    embeddings, scores = model([torch.randn(2, 3, 32, 32)] * 2)
    assert embeddings.shape == (4, 8) and scores.shape == (4, 5)


def test_load_backbone_refuses_a_folder_without_an_export(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not an exported backbone"):
        load_backbone(tmp_path)


def fake_batches(n_batches: int, batch: int, seed: int = 0) -> list[tuple[list[torch.Tensor], tuple]]:
    g = torch.Generator().manual_seed(seed)
    return [([torch.randint(0, 256, (3, 40, 40), generator=g, dtype=torch.uint8) for _ in range(batch)], ())
            for _ in range(n_batches)]


def run_epoch(config: SwAVConfig, model: SwAVModel, batches, iteration: int = 0, queue=None, scaler=None):
    optimizer = build_optimizer(model, config)
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    return train_one_epoch(model, batches, MultiCropAugment(config.crops), optimizer, scaler, queue, config,
                           epoch=0, iteration=iteration, iters_per_epoch=4, device=torch.device("cpu"),
                           generator=torch.Generator().manual_seed(0))


def test_prototypes_are_frozen_for_the_first_iterations() -> None:
    torch.manual_seed(0)
    # Half of an epoch of 4 iterations: the first 2 iterations.
    config = tiny_config(freeze_prototypes_epochs=0.5, optimizer="sgd", base_lr=0.5, start_warmup_lr=0.5)
    model = SwAVModel("resnet18", "bn", 16, 16, 32)
    before = F.normalize(model.prototypes.weight.detach().clone(), dim=1)
    stats, iteration = run_epoch(config, model, fake_batches(1, 4), iteration=0)
    assert iteration == 1
    assert model.prototypes.weight.grad is None  # dropped during the frozen iterations
    assert model.trunk.conv1.weight.grad is not None
    torch.testing.assert_close(model.prototypes.weight.detach(), before)  # only re-normalised
    stats, iteration = run_epoch(config, model, fake_batches(1, 4, seed=1), iteration=2)
    assert iteration == 3
    assert model.prototypes.weight.grad is not None and model.prototypes.weight.grad.abs().sum() > 0
    assert not torch.allclose(model.prototypes.weight.detach(), before)


def test_small_batches_after_unreadable_images_are_skipped() -> None:
    torch.manual_seed(0)
    config = tiny_config()
    model = SwAVModel("resnet18", "bn", 16, 16, 32)
    batches = fake_batches(3, 4)
    unreadable, small = SkippedImage(Path("bad.jpg"), UNREADABLE), SkippedImage(Path("dot.png"), TOO_SMALL, "1x1 px")
    batches[0] = (batches[0][0][:1], (unreadable, unreadable, small))  # one usable image left: skipped
    batches[1] = (batches[1][0][:2], (unreadable, small))  # two left: trained on
    batches[2] = (batches[2][0], 2)  # a loader that only counts its skipped files (bench/overhead.py)
    stats, iteration = run_epoch(config, model, batches)
    assert iteration == 3  # the schedule still counts every loader batch
    assert stats.unreadable == 5 and stats.too_small == 2 and stats.images == 6 and stats.readable == 7
    assert stats.skipped == [unreadable, unreadable, small, unreadable, small]  # the first few, to name them
    assert float(stats.sums[3]) == 2  # two optimisation steps


def test_train_one_epoch_with_queue_fills_then_uses_it() -> None:
    torch.manual_seed(0)
    config = tiny_config(queue_length=8, queue_start_epoch=0)
    model = SwAVModel("resnet18", "bn", 16, 16, 32)
    queue = EmbeddingQueue(len(config.crops_for_assign), 8, config.feat_dim)
    run_epoch(config, model, fake_batches(1, 4), queue=queue)
    assert not queue.in_use and not queue.is_full()
    run_epoch(config, model, fake_batches(2, 4, seed=1), iteration=1, queue=queue)
    assert queue.is_full() and queue.in_use


def test_non_finite_loss_raises_naming_epoch_and_step() -> None:
    torch.manual_seed(0)
    model = SwAVModel("resnet18", "bn", 16, 16, 32)
    with torch.no_grad():
        model.prototypes.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 0"):
        run_epoch(tiny_config(), model, fake_batches(1, 4))


def _trained_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters an optimiser step changes (prototypes are re-normalised before each step anyway)."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if k != "prototypes.weight"}


def test_bf16_steps_with_non_finite_gradients_are_skipped_and_counted() -> None:
    torch.manual_seed(0)
    model = SwAVModel("resnet18", "bn", 16, 16, 32)
    model.trunk.conv1.weight.register_hook(lambda grad: grad * float("nan"))
    before = _trained_weights(model)
    config = tiny_config(amp=True, amp_dtype="bfloat16", freeze_prototypes_epochs=0)
    assert not grad_scaler(torch.device("cpu"), config.amp, config.amp_dtype).is_enabled()  # bf16 needs none
    stats, _ = run_epoch(config, model, fake_batches(2, 4))
    assert stats.amp_skipped == 2
    for key, value in _trained_weights(model).items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)


def test_loss_scaler_skips_planted_inf_steps_in_the_loop_then_steps() -> None:
    """The training loop with an enabled float16 GradScaler: a step whose gradients hold inf is
    skipped (weights unchanged), counted in ``amp_skipped`` and halves the scale; a clean step updates.

    The forward runs in float32 here (amp off, scaler passed in): float16 convolution backward is
    ~30x slower on CPUs. test_swav_train.py runs real float16 autocast end to end.
    """
    torch.manual_seed(0)
    model = SwAVModel("resnet18", "bn", 16, 16, 32)
    small_crops = [{"count": 2, "size": 16, "min_scale": 0.14, "max_scale": 1.0}]
    config = tiny_config(amp=False, freeze_prototypes_epochs=0, optimizer="lars", crops=small_crops, batch_size=2)
    scaler = grad_scaler(torch.device("cpu"), True, "float16")
    assert scaler.is_enabled() and scaler.get_scale() == 2.0 ** 16
    hook = model.trunk.conv1.weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    before = _trained_weights(model)
    stats, _ = run_epoch(config, model, fake_batches(2, 2), scaler=scaler)
    assert stats.amp_skipped == 2 and float(stats.sums[3]) == 2  # both steps skipped, both counted
    assert scaler.get_scale() == 2.0 ** 14
    for key, value in _trained_weights(model).items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)

    hook.remove()
    stats, _ = run_epoch(config, model, fake_batches(1, 2, seed=1), iteration=2, scaler=scaler)
    assert stats.amp_skipped == 0 and scaler.get_scale() == 2.0 ** 14  # grows only after 2000 clean steps
    after = _trained_weights(model)
    assert not torch.equal(after["trunk.conv1.weight"], before["trunk.conv1.weight"])


@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_float16_loss_scaling_unscales_before_the_optimizer(optimizer: str) -> None:
    """``backward_and_step`` under float16 autocast: a planted inf gradient skips the step (no
    weight or momentum change) and halves the scale; the next step equals an unscaled step, so
    LARS's trust ratio and weight decay (large here, so a scaled gradient would show) see the true
    gradients."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    reference = copy.deepcopy(model)
    config = tiny_config(optimizer=optimizer, weight_decay=0.5)
    opt, ref_opt = build_optimizer(model, config), build_optimizer(reference, config)
    set_learning_rate(opt, 0.1)
    set_learning_rate(ref_opt, 0.1)
    scaler = grad_scaler(torch.device("cpu"), True, "float16")
    x = torch.randn(6, 8)

    def loss_of(net: torch.nn.Module) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.float16):
            out = net(x)
        assert out.dtype == torch.float16
        return out.float().pow(2).mean()

    start = [p.detach().clone() for p in model.parameters()]
    hook = model[0].weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    assert backward_and_step(loss_of(model), opt, scaler) is False
    hook.remove()
    assert scaler.get_scale() == 2.0 ** 15 and not opt.state  # no momentum buffer either
    for p, p0 in zip(model.parameters(), start):
        assert torch.equal(p.detach(), p0)

    assert backward_and_step(loss_of(model), opt, scaler) is True
    assert scaler.get_scale() == 2.0 ** 15
    ref_opt.zero_grad()
    loss_of(reference).backward()  # no scaling at all
    ref_opt.step()
    for p, q, p0 in zip(model.parameters(), reference.parameters(), start):
        # Equal up to float16 rounding of the gradients; a scaled gradient would be off by far more.
        torch.testing.assert_close(p.detach() - p0, q.detach() - p0, rtol=2e-2, atol=1e-6)
        assert not torch.equal(p.detach(), p0)


def test_frozen_gradients_are_dropped_before_the_step() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bias = model.bias.detach().clone()
    assert backward_and_step(model(torch.randn(4, 3)).sum(), opt, grad_scaler(torch.device("cpu"), True, "float16"),
                             drop_grads=[model.bias])
    assert model.bias.grad is None and torch.equal(model.bias.detach(), bias)


def test_lars_step_uses_the_trust_ratio() -> None:
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    weight.grad = torch.tensor([[0.0, 2.0]])  # norm 2
    bias.grad = torch.tensor([0.5])
    opt = LARS([{"params": [weight]}, {"params": [bias], "lars": False, "weight_decay": 0.0}],
               lr=0.1, weight_decay=0.01, eta=0.001)
    opt.step()
    trust = 0.001 * 5.0 / (2.0 + 0.01 * 5.0 + 1e-8)
    w0, g0 = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])
    expected = w0 - 0.1 * trust * (g0 + 0.01 * w0)
    torch.testing.assert_close(weight.detach(), expected)
    torch.testing.assert_close(bias.detach(), torch.tensor([1.0 - 0.1 * 0.5]))  # plain step, no decay


def test_lars_adapts_and_decays_every_parameter_as_the_references_larc() -> None:
    """facebookresearch/swav wraps SGD in apex LARC(trust 0.001, clip=False) over model.parameters()."""
    model = SwAVModel("resnet18", "bn", 8, 8, 16)
    opt = build_optimizer(model, tiny_config(optimizer="lars", weight_decay=1e-4))
    assert all(g["lars"] and g["weight_decay"] == 1e-4 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sgd = build_optimizer(model, tiny_config(optimizer="sgd", weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD) and all(g["momentum"] == 0.9 for g in sgd.param_groups)

    # one step against LARC's arithmetic written out, biases and BatchNorm included
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = build_optimizer(head, tiny_config(optimizer="lars", weight_decay=1e-6))
    for group in opt.param_groups:
        group["lr"] = 0.6
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    head(torch.randn(32, 8)).square().mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in head.named_parameters()}
    opt.step()
    for name, param in head.named_parameters():
        w, g = before[name], grads[name]
        if w.norm() > 0 and g.norm() > 0:
            expected = w - 0.6 * (g + 1e-6 * w) * (0.001 * w.norm() / (g.norm() + 1e-6 * w.norm() + 1e-8))
        else:  # LARC leaves such a gradient as it is (BatchNorm's bias starts at 0)
            expected = w - 0.6 * g
        torch.testing.assert_close(param.detach(), expected, msg=f"{name}: not LARC's update")


def test_learning_rate_warms_up_then_follows_a_cosine() -> None:
    # 64 images x 4 processes: the global batch of 256 the rates are given for.
    config = tiny_config(epochs=10, warmup_epochs=2, base_lr=1.0, final_lr=0.01, start_warmup_lr=0.1, batch_size=64)
    lr = partial(learning_rate, config, iters_per_epoch=5, world_size=4)
    assert lr(0) == pytest.approx(0.1)
    assert lr(5) == pytest.approx(0.55)
    assert lr(10) == pytest.approx(1.0)
    assert lr(30) == pytest.approx(0.01 + 0.5 * 0.99)
    assert lr(50) == pytest.approx(0.01)
    values = [lr(i) for i in range(10, 50)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize(
    ("batch_size", "world_size", "expected"),
    [(64, 4, 0.6), (64, 1, 0.15), (256, 1, 0.6), (64, 64, 9.6), (4, 1, 0.6 * 4 / 256)],
)
def test_learning_rate_scales_linearly_with_the_global_batch(batch_size: int, world_size: int, expected: float) -> None:
    assert scaled_lr(0.6, batch_size, world_size) == pytest.approx(expected)
    # The whole schedule scales: warmup start, peak and final rate alike.
    config = tiny_config(epochs=4, warmup_epochs=1, base_lr=0.6, final_lr=0.0006, start_warmup_lr=0.06,
                         batch_size=batch_size)
    ratio = expected / 0.6
    assert learning_rate(config, 0, 10, world_size) == pytest.approx(0.06 * ratio)
    assert learning_rate(config, 10, 10, world_size) == pytest.approx(expected)
    assert learning_rate(config, 40, 10, world_size) == pytest.approx(0.0006 * ratio)
    assert learning_rate(config, 10, 10) == pytest.approx(scaled_lr(0.6, batch_size, 1))  # one process by default


def test_scaled_lr_rejects_an_empty_batch() -> None:
    with pytest.raises(ValueError, match="world_size=0"):
        scaled_lr(0.6, 64, 0)


@pytest.mark.parametrize(
    ("epochs", "iters_per_epoch", "expected"),
    [
        (1.0, 1_281_167 // 256, 5004),  # ImageNet at batch 256 (the reference: 5005, the epoch rounded up)
        (1.0, 1_281_167 // 4096, 312),  # at batch 4096 (the reference's default: 313)
        (1.0, 3, 3),
        (0.5, 4, 2),
        (0.5, 3, 2),  # rounded up
        (0.7, 10, 7),  # not 8: 0.7 * 10 is 7.000000000000001 in floating point
        (0.01, 10, 1),  # any positive fraction freezes at least one iteration
        (2.5, 100, 250),
        (0, 100, 0),
        (1.0, 0, 0),
    ],
)
def test_frozen_prototype_iterations_follow_the_epochs(epochs: float, iters_per_epoch: int, expected: int) -> None:
    assert frozen_prototype_iterations(epochs, iters_per_epoch) == expected


def test_frozen_prototype_iterations_reject_negative_values() -> None:
    with pytest.raises(ValueError, match="epochs=-1"):
        frozen_prototype_iterations(-1, 10)


def test_epoch_indices_are_reproducible_disjoint_shards() -> None:
    first = epoch_indices(50, seed=1, epoch=3)
    assert first == epoch_indices(50, seed=1, epoch=3) and sorted(first) == list(range(50))
    assert first != epoch_indices(50, seed=1, epoch=4)
    shards = [epoch_indices(50, 1, 3, rank=r, world_size=3) for r in range(3)]
    assert all(len(s) == 16 for s in shards)
    assert not set(shards[0]) & set(shards[1]) and not set(shards[1]) & set(shards[2])
    capped = epoch_indices(50, 1, 3, max_images=10)
    assert capped == first[:10]


def test_views_are_made_in_a_number_of_operations_that_does_not_grow_with_the_batch() -> None:
    """One roi_align per view over the batch's boxes and the photometric ops on a fixed schedule: a GPU is not kept
    waiting on a kernel launch per image, nor per jitter order. The issue's goal: at most 100 operations per view."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.n += 1
            return func(*args, **(kwargs or {}))

    augment = MultiCropAugment(TINY_CROPS, chunked=False)  # the path a GPU takes
    views = sum(int(g["count"]) for g in TINY_CROPS)

    def ops(n: int, seed: int) -> int:
        g = torch.Generator().manual_seed(3)
        images = [torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8) for _ in range(n)]
        augment(images, generator=torch.Generator().manual_seed(seed))  # warm: per-device constants made once
        with Count() as counter:
            augment(images, generator=torch.Generator().manual_seed(seed))
        return counter.n

    counts = {ops(n, seed) for n in (4, 64, 256) for seed in (0, 1)}
    assert len(counts) == 1, counts  # whatever the batch and its draws (every order, grayscale, blur mix)
    assert counts.pop() / views <= 100


def test_batched_crops_keep_the_geometry_and_stay_close_to_the_per_image_resize() -> None:
    """The same boxes and flips as a per-image antialiased resize; the filter differs (box vs triangle): bounded."""
    import torch.nn.functional as F

    images = sample_images(8, seed=4)
    batch = augment_module.stack_images(images).float()
    heights = torch.tensor([im.shape[1] for im in images])
    widths = torch.tensor([im.shape[2] for im in images])
    generator = torch.Generator().manual_seed(1)
    for size, scale in ((32, (0.14, 1.0)), (16, (0.05, 0.14)), (48, (0.5, 1.0))):
        boxes = random_resized_crop_boxes(heights, widths, scale, generator)
        flip = torch.rand(len(images), generator=generator) < 0.5
        ours = augment_module.crop_resize(batch, boxes, size, flip)
        ref = []
        for j, (top, left, h, w) in enumerate(boxes.tolist()):
            patch = F.interpolate(batch[j:j + 1, :, top:top + h, left:left + w], size=(size, size), mode="bilinear",
                                  antialias=True, align_corners=False)
            ref.append(patch.flip(-1) if bool(flip[j]) else patch)
        diff = (ours - torch.cat(ref)).abs()
        assert ours.shape == (len(images), 3, size, size)
        assert float(diff.mean()) < 4.0, (size, float(diff.mean()))  # of 255; measured 0.8-2.0 (bench dispatch)
        # a wrong box or a missing flip is far off: mirrored crops differ by tens of levels on these images
        mirrored = (ours - torch.cat(ref).flip(-1)).abs().mean()
        assert float(mirrored) > 2 * float(diff.mean())
