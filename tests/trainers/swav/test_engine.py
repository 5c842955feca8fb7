"""trainers/swav/engine.py: one epoch of the loop (prototype freezing, skipped files, the queue, non-finite losses and
gradients, loss scaling), the epoch's shards, and whole runs on CPU: a smoke run with export and unreadable files,
exact resume (loss-scaler state included), early stop, float16 autocast with loss scaling, bf16 autocast, the learning
rate scaled to the global batch, too few images, and 2-process (gloo) DDP training."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors.torch import load_file

from trainers.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from trainers.common.configs import config_from_dict
from trainers.common.precision import NonFiniteLossError, grad_scaler
from trainers.data import TOO_SMALL, UNREADABLE, SkippedImage
from trainers.reporting import InMemoryReporter
from trainers.swav import engine as swav_engine
from trainers.swav.augment import MultiCropAugment
from trainers.swav.config import SwAVConfig
from trainers.swav.engine import METRIC_NAMES, epoch_indices, train, train_one_epoch
from trainers.swav.loss import EmbeddingQueue
from trainers.swav.model import SwAVModel, export_from_checkpoint, load_backbone
from trainers.swav.optim import build_optimizer, learning_rate
from experiments.testing.s3server import free_port
from tests.trainers.cuda import cuda_only
from tests.trainers.swav.helpers import TINY, tiny_config


def tiny(data: Path, **overrides) -> SwAVConfig:
    return config_from_dict(SwAVConfig, {**TINY, "data": str(data), **overrides})


@pytest.fixture
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.fixture
def folder_with_unreadable_files(sample_data, tmp_path: Path) -> Path:
    """10 sample images and 2 corrupt files (12 = 3 full batches of 4)."""
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    images = sorted(p for p in sample_data.unlabeled.rglob("*") if p.suffix in (".jpg", ".png"))[:10]
    for path in images:
        shutil.copy(path, folder / path.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return folder


# ---------------------------------------------------------------------------
# One epoch (train_one_epoch)
# ---------------------------------------------------------------------------


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
    ~30x slower on CPUs. test_fp16_autocast_with_loss_scaling_on_cpu runs real float16 autocast end to end.
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


def test_epoch_indices_are_reproducible_disjoint_shards() -> None:
    first = epoch_indices(50, seed=1, epoch=3)
    assert first == epoch_indices(50, seed=1, epoch=3) and sorted(first) == list(range(50))
    assert first != epoch_indices(50, seed=1, epoch=4)
    shards = [epoch_indices(50, 1, 3, rank=r, world_size=3) for r in range(3)]
    assert all(len(s) == 16 for s in shards)
    assert not set(shards[0]) & set(shards[1]) and not set(shards[1]) & set(shards[2])
    capped = epoch_indices(50, 1, 3, max_images=10)
    assert capped == first[:10]


# ---------------------------------------------------------------------------
# Whole runs (train)
# ---------------------------------------------------------------------------


def test_smoke_run_reports_metrics_and_exports_a_torchvision_backbone(
    folder_with_unreadable_files: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tiny(folder_with_unreadable_files, epochs=2, queue_length=4, queue_start_epoch=1)
    reporter = InMemoryReporter(root=tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        final = train(config, reporter)

    assert [r.step for r in reporter.reports] == [1, 2]
    for report in reporter.reports:
        assert set(METRIC_NAMES) <= set(report.metrics)
        assert all(math.isfinite(v) for v in report.metrics.values()), report.metrics
    assert final == reporter.reports[-1].metrics
    assert final["swav/ln_k"] == pytest.approx(math.log(16))
    assert 1 <= final["swav/prototypes_used"] <= 16
    assert final["swav/amp_skipped_steps"] == 0 and final["swav/images_per_s"] > 0
    # lr: the effective rate of the last of 2 x 3 iterations, scaled to the global batch of 4 x 1 process.
    assert final["lr"] == pytest.approx(learning_rate(config, 5, 3, world_size=1))
    assert final["lr"] == pytest.approx(learning_rate(config, 5, 3, world_size=64) * 4 / 256)  # 4 x 64 = 256
    # Two unreadable files per epoch, one warning per epoch.
    warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 2 and all("skipped 2 unreadable" in r.getMessage() for r in warnings)

    # Every checkpoint records the resolved config and code version; only the last holds the export.
    first, last = (r.checkpoint for r in reporter.reports)
    state = load_checkpoint(first)
    assert state["epoch"] == 1 and state["config"]["prototypes"] == 16 and state["git_sha"]
    assert not (first / "backbone.safetensors").exists()
    meta = json.loads((last / "backbone.json").read_text())
    assert meta["arch"] == "resnet18" and meta["norm"] == "bn" and meta["git_sha"]
    assert meta["metrics"]["swav/loss"] == pytest.approx(final["swav/loss"])
    assert meta["crops"][0] == {"count": 2, "size": 32, "min_scale": 0.14, "max_scale": 1.0}

    weights = load_file(str(last / "backbone.safetensors"))
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.load_state_dict(weights, strict=True)
    trunk = load_backbone(last)
    trunk.eval()
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(trunk(x), model(x))
    assert trunk(x).shape == (2, 512)


def test_resume_continues_exactly(sample_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  deterministic) -> None:
    """Stop after epoch 1, resume: the same weights, momentum, queue, loss-scaler state and metrics.

    The run has an enabled GradScaler that starts at 2**126, so that the gradients overflow for
    the first steps of epoch 1 and the scale the resumed epoch starts from is not a fresh one's: a
    resume that lost it would skip epoch 2's steps. (Float32 forward: float16 convolution backward
    is ~30x slower on CPUs; test_fp16_autocast_with_loss_scaling_on_cpu runs float16.)
    """
    monkeypatch.setattr(swav_engine, "grad_scaler",
                        lambda device, amp, amp_dtype: torch.amp.GradScaler(device.type, init_scale=2.0 ** 126))
    config = tiny(sample_data.unlabeled, epochs=2, max_images=8, queue_length=4, queue_start_epoch=0,
                  freeze_prototypes_epochs=0.5, warmup_epochs=1, start_warmup_lr=0.01)
    straight = InMemoryReporter(root=tmp_path / "straight")
    train(config, straight)

    stopped = InMemoryReporter(root=tmp_path / "stopped", stop_after=1)
    train(config, stopped)
    assert [r.step for r in stopped.reports] == [1]
    # Stopped early: the checkpoint has no exported backbone.
    assert not (stopped.last_checkpoint / "backbone.safetensors").exists()

    # A checkpoint of another model is refused with the config it was written for.
    with pytest.raises(CheckpointError, match="prototypes=16"):
        train(tiny(sample_data.unlabeled, epochs=2, max_images=8, prototypes=8),
              InMemoryReporter(root=tmp_path / "wrong", resume_from=stopped.last_checkpoint))

    resumed = InMemoryReporter(root=tmp_path / "resumed", resume_from=stopped.last_checkpoint)
    train(config, resumed)
    assert [r.step for r in resumed.reports] == [2]

    expected, got = load_checkpoint(straight.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert got["epoch"] == expected["epoch"] == 2 and got["iteration"] == expected["iteration"] == 4
    skipped = [r.metrics["swav/amp_skipped_steps"] for r in straight.reports]
    assert skipped[0] > 0 and sum(skipped) < 4  # overflowing steps skipped, the others trained
    assert expected["scaler"]["scale"] == 2.0 ** (126 - sum(skipped))
    assert got["scaler"] == expected["scaler"]
    for key, value in expected["model"].items():
        torch.testing.assert_close(got["model"][key], value, rtol=0, atol=0, msg=key)
    for index, state in expected["optimizer"]["state"].items():
        torch.testing.assert_close(got["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"],
                                   rtol=0, atol=0)
    assert expected["queue"] is not None and bool((expected["queue"] != 0).any())
    torch.testing.assert_close(got["queue"], expected["queue"], rtol=0, atol=0)
    a, b = straight.reports[-1].metrics, resumed.reports[-1].metrics
    for name in METRIC_NAMES:
        if name != "swav/images_per_s":
            assert a[name] == b[name], name
    assert (resumed.last_checkpoint / "backbone.safetensors").exists()


def test_fp16_autocast_with_loss_scaling_on_cpu(sample_data, tmp_path: Path) -> None:
    """amp=true means float16 + GradScaler on the CPU too: steps that overflow at the initial
    scale of 2**16 are skipped and counted, and the scaler state lands in the checkpoint."""
    small = [{"count": 2, "size": 16, "min_scale": 0.14, "max_scale": 1.0}]
    config = tiny(sample_data.unlabeled, epochs=1, max_images=2, batch_size=2, crops=small, amp=True)
    assert config.amp_dtype == "float16"
    reporter = InMemoryReporter(root=tmp_path / "fp16")
    metrics = train(config, reporter)
    assert all(math.isfinite(metrics[name]) for name in METRIC_NAMES)
    skipped = metrics["swav/amp_skipped_steps"]
    assert skipped in (0, 1)  # one step
    scaler = load_checkpoint(reporter.last_checkpoint)["scaler"]
    assert scaler["scale"] == 2.0 ** (16 - skipped) and scaler["_growth_tracker"] == 1 - skipped


def test_bf16_autocast_on_cpu_with_groupnorm(sample_data, tmp_path: Path) -> None:
    # 24-px local crops: CPU bf16 gives nan weight gradients for a strided 3x3 conv on 1x1 maps
    # (what 16-px crops reach in layer4); such steps would be skipped, see
    # test_bf16_steps_with_non_finite_gradients_are_skipped_and_counted.
    crops = [TINY["crops"][0], {"count": 2, "size": 24, "min_scale": 0.05, "max_scale": 0.14}]
    config = tiny(sample_data.unlabeled, epochs=1, max_images=8, amp=True, amp_dtype="bfloat16", norm="gn",
                  crops=crops)
    reporter = InMemoryReporter(root=tmp_path / "amp")
    metrics = train(config, reporter)
    assert all(math.isfinite(metrics[name]) for name in METRIC_NAMES)
    assert metrics["swav/amp_skipped_steps"] == 0  # no loss scaling with bfloat16
    assert load_checkpoint(reporter.last_checkpoint)["scaler"] == {}  # no scaler either
    model = torchvision.models.resnet18(norm_layer=partial(torch.nn.GroupNorm, 32))
    model.fc = torch.nn.Identity()
    model.load_state_dict(load_file(str(reporter.last_checkpoint / "backbone.safetensors")), strict=True)


@cuda_only
def test_fp16_with_loss_scaling_on_cuda(sample_data, tmp_path: Path) -> None:
    config = tiny(sample_data.unlabeled, epochs=1, max_images=8, amp=True, workers=1)
    metrics = train(config, InMemoryReporter(root=tmp_path / "cuda"))
    assert all(math.isfinite(metrics[name]) for name in METRIC_NAMES)
    assert 0 <= metrics["swav/amp_skipped_steps"] <= 2


@cuda_only
def test_bf16_on_cuda_stopped_by_a_deadline_exports_its_trunk(sample_data, tmp_path: Path) -> None:
    config = tiny(sample_data.unlabeled, epochs=3, max_images=16, amp=True, amp_dtype="bfloat16", workers=2)
    reporter = InMemoryReporter(root=tmp_path / "cuda", deadline=time.monotonic())
    metrics = train(config, reporter)
    assert len(reporter.reports) == 1 and metrics["swav/amp_skipped_steps"] == 0
    model = load_backbone(export_from_checkpoint(reporter.last_checkpoint, tmp_path / "trunk"))
    assert next(model.parameters()).device.type == "cpu"


def test_a_run_stopped_by_its_wall_budget_exports_its_trunk_from_the_checkpoint(sample_data, tmp_path: Path) -> None:
    """`bench device`: SwAV stops at its deadline (after the epoch that crosses it) and the trunk is exported
    from that epoch's checkpoint, saying how far it trained."""
    config = tiny(sample_data.unlabeled, epochs=3, max_images=8)
    reporter = InMemoryReporter(root=tmp_path / "run", deadline=time.monotonic())  # already past: one epoch
    train(config, reporter)
    assert [r.step for r in reporter.reports] == [1]
    assert not (reporter.last_checkpoint / "backbone.safetensors").exists()  # the schedule did not end it
    folder = export_from_checkpoint(reporter.last_checkpoint, tmp_path / "trunk")
    exported = json.loads((folder / "backbone.json").read_text())
    assert exported["epochs_trained"] == 1 and exported["stopped_early"] is True and exported["epochs"] == 3
    weights = load_file(str(folder / "backbone.safetensors"))
    state = load_checkpoint(reporter.last_checkpoint)["model"]
    assert weights.keys() == {k[len("trunk."):] for k in state if k.startswith("trunk.")}
    assert all(torch.equal(weights[k], state[f"trunk.{k}"]) for k in weights)
    load_backbone(folder)  # a ready trunk, as fine-tuning loads it
    save_checkpoint(tmp_path / "other", {"epoch": 1, "model": {"fc.weight": torch.zeros(2, 2)}})
    with pytest.raises(CheckpointError, match="not a SwAV checkpoint"):
        export_from_checkpoint(tmp_path / "other")


def test_too_few_images_for_a_batch_is_a_clear_error(sample_data, tmp_path: Path) -> None:
    folder = tmp_path / "three"
    folder.mkdir()
    for path in sorted(sample_data.unlabeled.rglob("*.jpg"))[:3]:
        shutil.copy(path, folder / path.name)
    with pytest.raises(ValueError, match="3 images .* no full batch of batch_size=4"):
        train(tiny(folder, epochs=1), InMemoryReporter(root=tmp_path / "run"))


def _folder(sample_data, tmp_path: Path, good: int, broken: int = 0, dots: int = 0) -> Path:
    """``good`` sample images, ``broken`` corrupt files and ``dots`` 1x1 PNGs (under any crop size)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in sorted(sample_data.unlabeled.rglob("*.jpg"))[:good]:
        shutil.copy(path, folder / path.name)
    for i in range(broken):
        (folder / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    for i in range(dots):
        Image.new("RGB", (1, 1)).save(folder / f"dot{i}.png")
    return folder


def test_one_usable_image_says_two_are_needed_not_lower_batch_size(sample_data, tmp_path: Path) -> None:
    """Too few usable files for one batch: the error counts them, names the skipped ones and never
    suggests a batch_size below 2, which the config refuses."""
    folder = _folder(sample_data, tmp_path, good=1, broken=1, dots=1)
    with pytest.raises(ValueError) as info:
        train(tiny(folder, epochs=1), InMemoryReporter(root=tmp_path / "run"))
    message = str(info.value)
    assert message.startswith(f"{folder}: 3 images give no full batch of batch_size=4 on each of 1 process(es); "
                              "1 usable image, 2 skipped (unreadable, or smaller than the smallest crop of 16 px): ")
    assert "broken0.jpg (unreadable)" in message and "dot0.png (1x1 px)" in message
    assert "batch_size must be at least 2 (BatchNorm and the Sinkhorn equipartition" in message
    assert "training needs at least 2 usable images" in message
    assert "at most" not in message and "lower batch_size" not in message
    with pytest.raises(ValueError, match="batch_size=1 is invalid: an integer >= 2 .BatchNorm"):
        tiny(folder, batch_size=1)


def test_too_few_files_suggests_a_batch_size_that_works(sample_data, tmp_path: Path) -> None:
    folder = _folder(sample_data, tmp_path, good=3, broken=1)
    with pytest.raises(ValueError) as info:
        train(tiny(folder, epochs=1, batch_size=8), InMemoryReporter(root=tmp_path / "run"))
    message = str(info.value)
    assert "4 images give no full batch of batch_size=8" in message and "3 usable images, 1 skipped" in message
    assert "Fix: remove or fix the skipped files and set batch_size to at most 3, or add images" in message


def test_epoch_without_a_usable_batch_names_the_skipped_files(sample_data, tmp_path: Path) -> None:
    """Enough files for the batches, too few usable ones in any batch (one good image among 1x1 and
    corrupt files): the error after the epoch says how many were usable and which were skipped."""
    folder = _folder(sample_data, tmp_path, good=1, broken=2, dots=1)
    with pytest.raises(ValueError) as info:
        train(tiny(folder, epochs=1, batch_size=2), InMemoryReporter(root=tmp_path / "run"))
    message = str(info.value)
    assert message.startswith(f"{folder}: no batch of epoch 1 had 2 usable images (it read 4 of 4 files); "
                              "1 usable image, 3 skipped")
    assert "broken0.jpg (unreadable)" in message and "dot0.png (1x1 px)" in message
    assert "training needs at least 2 usable images" in message


# ---------------------------------------------------------------------------
# Two processes (gloo, DDP)
# ---------------------------------------------------------------------------


def _ddp_train_worker(rank: int, world: int, port: int, data: str, root: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # An enabled loss scaler whose first steps overflow (float32 forward, see test_resume_continues_exactly).
    swav_engine.grad_scaler = lambda device, amp, amp_dtype: torch.amp.GradScaler(device.type, init_scale=2.0 ** 127)
    config = tiny(Path(data), epochs=2, max_images=16, queue_length=8, queue_start_epoch=0)
    reporter = InMemoryReporter(root=Path(root) / f"rank{rank}")
    metrics = train(config, reporter)  # joins the gloo group from the environment, leaves it at the end
    assert not dist.is_initialized()
    checkpoints = [str(r.checkpoint) if r.checkpoint else None for r in reporter.reports]
    skipped = [r.metrics["swav/amp_skipped_steps"] for r in reporter.reports]
    (Path(root) / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "checkpoints": checkpoints,
                                                             "skipped": skipped}))


@pytest.mark.timeout(300)
def test_two_process_ddp_training_on_cpu(sample_data, tmp_path: Path) -> None:
    mp.spawn(_ddp_train_worker, args=(2, free_port(), str(sample_data.unlabeled), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    # Metrics are reduced over both processes: every rank reports the same numbers.
    assert rank0["metrics"] == rank1["metrics"]
    assert all(math.isfinite(v) for v in rank0["metrics"].values())
    # The learning rate is scaled to the global batch of 4 images x 2 processes (2 iterations per epoch).
    config = tiny(sample_data.unlabeled, epochs=2, max_images=16)
    assert rank0["metrics"]["lr"] == pytest.approx(learning_rate(config, 3, 2, world_size=2))
    assert rank0["metrics"]["lr"] == pytest.approx(2 * learning_rate(config, 3, 2, world_size=1))
    # Only rank 0 writes checkpoints; they hold both processes' queues (8 rows = 2 x 4).
    assert rank1["checkpoints"] == [None, None] and all(rank0["checkpoints"])
    state = load_checkpoint(rank0["checkpoints"][-1])
    assert state["world_size"] == 2 and tuple(state["queue"].shape) == (2, 2, 4, 16)
    # Skipped steps (the loss alone overflows at 2**127) are counted, and the saved scale follows them.
    assert rank0["skipped"] == rank1["skipped"] and sum(rank0["skipped"]) > 0
    assert state["scaler"]["scale"] == 2.0 ** (127 - sum(rank0["skipped"]))
    assert (Path(rank0["checkpoints"][-1]) / "backbone.safetensors").exists()
