"""SwAV trainer overhead: one epoch of ``trainers.swav.train`` vs a bare forward/backward/step loop.

Baseline: the same ``SwAVModel`` and optimizer, the same SwAV loss (swapped prediction with
Sinkhorn; without a loss there is nothing to backpropagate), over the same number of images,
as crops made beforehand: per step only forward, loss, ``zero_grad``, backward, ``step``.
Candidates: ``trainers.swav.train`` for one epoch end to end (model build, decoding, multi-crop,
statistics, checkpoint, backbone export, the reporter's copy), its epoch loop alone (the
trainer's own ``swav/images_per_s``), and ``trainers.swav.train_one_epoch`` fed batches decoded
beforehand (the trainer's loop without decoding). Decoding, the multi-crop augmentation and a
checkpoint write are also timed on their own, to account for the differences.

The kNN monitor (``trainers.swav.knn``) is timed beside them: one evaluation on the sample's
labeled objects, as a share of the trainer's epoch (the goal: under 5 %), and, for every shipped
search space, the share estimated from its own crops, images per epoch and objects.

Run: ``make bench`` or ``python -m bench overhead``; this file alone: ``python -m bench.overhead [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from trainers.checkpoints import save_checkpoint
from trainers.common.configs import config_to_dict
from trainers.common.devices import default_device
from trainers.common.provenance import seed_everything
from trainers.data import UnlabeledImages, generate_sample
from trainers.reporting import InMemoryReporter
from trainers.swav.knn import KnnMonitor
from trainers.swav import (
    MultiCropAugment, SwAVConfig, SwAVModel, build_optimizer, derive_seed, epoch_indices, grad_scaler, swav_loss,
    train, train_one_epoch,
)
from trainers.vocabulary import SWAV_IMAGES_PER_S

# One torch thread for every candidate: on two cores shared with other work, torch's threads wait
# for each other at every op and run times swing several-fold between identical runs.
THREADS = 1


@dataclass(frozen=True)
class Setup:
    """The benchmark's sizes."""

    images: int  # per epoch, the same for every candidate
    batch_size: int
    crop_sizes: tuple[int, int]  # global and local crop size, 2 of each
    repeats: int


FULL = Setup(images=128, batch_size=16, crop_sizes=(64, 32), repeats=3)  # the whole small set, smoke.yaml's crops
QUICK = Setup(images=16, batch_size=8, crop_sizes=(32, 16), repeats=3)


def make_config(data: str | Path, setup: Setup) -> SwAVConfig:
    """A one-epoch SwAV config: resnet18 with smoke.yaml's head, ``setup``'s crops and images."""
    big, small = setup.crop_sizes
    return SwAVConfig(
        arch="resnet18", epochs=1, batch_size=setup.batch_size, max_images=setup.images,
        crops=[{"count": 2, "size": big, "min_scale": 0.14, "max_scale": 1.0},
               {"count": 2, "size": small, "min_scale": 0.05, "max_scale": 0.14}],
        feat_dim=32, hidden_dim=256, prototypes=100, optimizer="sgd",
        base_lr=0.1 * 256 / setup.batch_size, final_lr=0.001 * 256 / setup.batch_size,  # 0.1 per batch (rates are per 256)
        freeze_prototypes_epochs=0.5, amp=False, workers=0, data=str(data),
        knn_every=0,  # the trainer's own overhead; the kNN monitor is timed on its own
    )


def decoded_batches(config: SwAVConfig) -> list[list[torch.Tensor]]:
    """The epoch's images, decoded, in the trainer's order and batches (last partial batch dropped)."""
    dataset = UnlabeledImages(config.data)
    order = epoch_indices(len(dataset), config.seed, 0, max_images=config.max_images)
    steps = len(order) // config.batch_size
    images = [dataset[i] for i in order[: steps * config.batch_size]]
    if any(im is None for im in images):
        raise RuntimeError(f"{config.data}: some sample images failed to decode")
    return [images[i * config.batch_size : (i + 1) * config.batch_size] for i in range(steps)]


def fresh_model(config: SwAVConfig) -> tuple[SwAVModel, torch.optim.Optimizer]:
    """The trainer's model and optimizer, with the trainer's seed."""
    seed_everything(config.seed)
    model = SwAVModel(config.arch, config.norm, config.prototypes, config.feat_dim, config.hidden_dim)
    return model, build_optimizer(model, config)


def bare_loop(config: SwAVConfig, crops: Sequence[list[torch.Tensor]]) -> float:
    """Seconds of forward + SwAV loss + zero_grad + backward + step over pre-made ``crops`` (model built untimed)."""
    model, optimizer = fresh_model(config)
    model.train()
    start = time.perf_counter()
    for views in crops:
        _, scores = model(views)
        loss = swav_loss(scores.float(), config.total_crops, config.crops_for_assign, config.temperature,
                         config.epsilon, config.sinkhorn_iterations, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def loop_predecoded(config: SwAVConfig, batches: Sequence[list[torch.Tensor]]) -> float:
    """Seconds of ``train_one_epoch`` on batches decoded beforehand (model built untimed)."""
    model, optimizer = fresh_model(config)
    device = default_device()
    generator = torch.Generator().manual_seed(derive_seed(config.seed, 0, 2, 0))  # as train() derives it
    start = time.perf_counter()
    train_one_epoch(model, [(list(b), 0) for b in batches], MultiCropAugment(config.crops), optimizer,
                    grad_scaler(device, config.amp, config.amp_dtype), None, config, 0, 0, len(batches), device, generator)
    return time.perf_counter() - start


def full_train(config: SwAVConfig) -> tuple[float, float]:
    """(seconds of ``train`` end to end, seconds of its epoch loop from ``swav/images_per_s``)."""
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        start = time.perf_counter()
        metrics = train(config, InMemoryReporter(root=Path(tmp)))
        total = time.perf_counter() - start
    images = (config.max_images // config.batch_size) * config.batch_size
    return total, images / metrics[SWAV_IMAGES_PER_S]


def time_augment(config: SwAVConfig, batches: Sequence[list[torch.Tensor]]) -> float:
    """Seconds of the multi-crop augmentation over the epoch's batches."""
    augment = MultiCropAugment(config.crops)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for images in batches:
        augment(images, generator=generator)
    return time.perf_counter() - start


def time_decode(config: SwAVConfig) -> float:
    """Seconds to decode the epoch's images (what the trainer's DataLoader does with workers=0)."""
    start = time.perf_counter()
    decoded_batches(config)
    return time.perf_counter() - start


def time_checkpoint(config: SwAVConfig) -> float:
    """Seconds to write one checkpoint (model + optimizer state) and copy it, as train() and the reporter do."""
    model, optimizer = fresh_model(config)
    # One SGD step so that the optimizer holds its momentum buffers, as in a real checkpoint.
    crops = MultiCropAugment(config.crops)(decoded_batches(config)[0], generator=torch.Generator().manual_seed(0))
    _, scores = model(crops)
    scores.sum().backward()
    optimizer.step()
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        start = time.perf_counter()
        save_checkpoint(Path(tmp) / "ckpt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                            "config": config_to_dict(config), "epoch": 1})
        shutil.copytree(Path(tmp) / "ckpt", Path(tmp) / "copy")
        return time.perf_counter() - start


def time_build(config: SwAVConfig) -> float:
    """Seconds to build the model and optimizer, as train() does first."""
    start = time.perf_counter()
    fresh_model(config)
    return time.perf_counter() - start


def knn_monitor(config: SwAVConfig, labeled: tuple[Path, Path, Path, Path]) -> KnnMonitor:
    """The monitor the trainer builds for ``config`` on the labeled set (train images/JSON, val images/JSON)."""
    return KnnMonitor.from_coco(labeled[:2], labeled[2:], config.knn_size, config.knn_max_objects, config.seed,
                                default_device(), config.knn_k, config.knn_temperature)


def time_knn(config: SwAVConfig, monitor: KnnMonitor) -> float:
    """Seconds of one kNN evaluation (embed bank and queries, vote) of the trainer's initial trunk."""
    model, _ = fresh_model(config)
    start = time.perf_counter()
    monitor(model.trunk)
    return time.perf_counter() - start


def crop_pixels(config: SwAVConfig) -> int:
    """Pixels per image over all crops (the forward/backward work scales with it)."""
    return sum(g.count * g.size * g.size for g in config.crops)


def knn_share_estimates(measured_share: float, bench_config: SwAVConfig, bench_objects: int,
                        bench_images: int) -> list[tuple[str, str, int, int, int, float]]:
    """For each shipped space's pretraining runs: (space, arch, images/epoch, objects, crop px, estimated share).

    The estimate scales the share measured here by the pixel work: the monitor's ``objects x
    crop^2`` against the epoch's ``images x sum(count x size^2)`` (the same trunk on both sides,
    and the epoch's backward pass is in the measured share). Spaces on generated sample data count
    the sample's own images and boxes; a space's cap ``max_images`` applies.
    """
    from experiments.spaces import expand, load_space
    from trainers.data import generate_sample

    root = Path(__file__).resolve().parent.parent / "search_spaces"
    bench_work = bench_objects * bench_config.knn_size ** 2 / (bench_images * crop_pixels(bench_config))
    samples: dict[tuple[str, int, str], tuple[dict[str, str], int, int]] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-knn-spaces-") as tmp:
        for path in sorted(root.glob("*.yaml")):
            spec = load_space(path)
            if spec.data.sample is None:
                continue
            key = spec.data.sample
            if key not in samples:
                size, seed, kind, renderings = key
                paths = generate_sample(Path(tmp) / f"{kind}-{size}-{seed}-{renderings}", seed=seed, size=size,
                                        kind=kind, renderings=renderings)
                import json

                boxes = [sum(1 for a in json.loads(Path(f).read_text())["annotations"] if not a.get("iscrowd", 0))
                         for f in (paths.train_annotations, paths.val_annotations)]
                unlabeled = sum(1 for p in Path(paths.unlabeled).rglob("*") if p.is_file())
                data = {k: str(getattr(paths, k)) for k in ("unlabeled", "train_images", "train_annotations",
                                                             "val_images", "val_annotations")}
                samples[key] = (data, unlabeled, boxes[0] + boxes[1])
            data, unlabeled, objects_all = samples[key]
            seen = set()
            for backbone in expand(spec, "bench", data).pretrain:
                config = SwAVConfig(**backbone.config)
                images = min(unlabeled, config.max_images or unlabeled)
                objects = min(objects_all, 2 * config.knn_max_objects)
                size = config.knn_size
                row_key = (config.arch, images, objects, size, crop_pixels(config))
                if row_key in seen:
                    continue
                seen.add(row_key)
                work = objects * size * size / (images * crop_pixels(config))
                rows.append((path.stem, config.arch, images, objects, size, measured_share * work / bench_work))
    return rows


def measure(setup: Setup, data: str | Path, labeled: tuple[Path, Path, Path, Path] | None = None,
            ) -> dict[str, list[float]]:
    """Seconds per candidate, ``setup.repeats`` interleaved repeats each (``knn``: with a labeled set)."""
    config = make_config(data, setup)
    batches = decoded_batches(config)
    augment = MultiCropAugment(config.crops)
    generator = torch.Generator().manual_seed(1)
    crops = [augment(b, generator=generator) for b in batches]
    bare_loop(config, crops[:1])  # warm-up: allocator, kernels, lazy imports
    times: dict[str, list[float]] = {k: [] for k in ("bare", "predecoded", "train", "train_loop", "augment",
                                                       "decode", "checkpoint", "build", "knn")}
    monitor = knn_monitor(config, labeled) if labeled is not None else None
    if monitor is not None:
        time_knn(config, monitor)  # warm-up
    for _ in range(setup.repeats):
        times["bare"].append(bare_loop(config, crops))
        times["predecoded"].append(loop_predecoded(config, batches))
        total, loop = full_train(config)
        times["train"].append(total)
        times["train_loop"].append(loop)
        times["augment"].append(time_augment(config, batches))
        times["decode"].append(time_decode(config))
        times["checkpoint"].append(time_checkpoint(config))
        times["build"].append(time_build(config))
        if monitor is not None:
            times["knn"].append(time_knn(config, monitor))
    if monitor is not None:
        times["knn_objects"] = [float(len(monitor.bank) + len(monitor.queries))]
    return times


def _ms(seconds: float, images: int) -> float:
    return 1000 * seconds / images


def run(quick: bool = False) -> str:
    """Time the candidates on the sample images; return the markdown section.

    Args:
        quick: 16 images of 32/16 px instead of 64 of 64/32 px.
    """
    setup = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-overhead-data-") as tmp:
            paths = generate_sample(tmp, seed=0, size="small")
            labeled = (paths.train_images, paths.train_annotations, paths.val_images, paths.val_annotations)
            times = measure(setup, paths.unlabeled, labeled)
    finally:
        torch.set_num_threads(threads)
    n = (setup.images // setup.batch_size) * setup.batch_size
    objects = int(times.pop("knn_objects")[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    per = {k: _ms(v, n) for k, v in med.items()}  # ms per image

    def row(name: str, key: str) -> str:
        ms = [_ms(t, n) for t in times[key]]
        ratios = [t / b for t, b in zip(times[key], times["bare"])]
        return (f"| {name} | {statistics.median(ms):.1f} | {min(ms):.1f}-{max(ms):.1f} | "
                f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")

    ratio_train = statistics.median(t / b for t, b in zip(times["train"], times["bare"]))
    ratio_loop = statistics.median(t / b for t, b in zip(times["train_loop"], times["bare"]))
    ratio_pre = statistics.median(t / b for t, b in zip(times["predecoded"], times["bare"]))
    outside = med["train"] - med["train_loop"]
    verdict = ("meets the goal (<= 1.10)" if ratio_train <= 1.10 else
               f"misses the goal (<= 1.10) by {ratio_train - 1.10:.2f}")
    big, small = setup.crop_sizes
    lines = [
        "## SwAV trainer overhead (one epoch of `trainers.swav.train` vs a bare training loop)",
        "",
        f"Command: `make bench` / `python -m bench overhead`{' (quick)' if quick else ''}. "
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min, at the end), torch {torch.__version__}, "
        f"{THREADS} torch thread for every candidate.",
        f"Model: resnet18 SwAV (projection 256 -> 32, 100 prototypes, SGD, fp32), {n} sample images per epoch in "
        f"batches of {setup.batch_size}, crops 2 x {big} px + 2 x {small} px; `workers=0` (decoding in the "
        f"training process). Milliseconds per image, median of {setup.repeats} interleaved repeats (min-max); "
        "the ratio is per repeat against the bare loop of the same repeat.",
        "",
        "| candidate | ms / image | min-max | vs bare loop |",
        "|---|---|---|---|",
        row("bare loop: forward, SwAV loss, backward, step on pre-made crops (baseline)", "bare"),
        row("`train_one_epoch` on images decoded beforehand", "predecoded"),
        row("`train`, its epoch loop (from its `swav/images_per_s`)", "train_loop"),
        row("`train`, one epoch end to end", "train"),
        "",
        f"End to end the trainer takes **{ratio_train:.2f}x** the bare loop's time per image: it {verdict}. "
        "Where the difference goes, per image (medians): "
        f"(1) the loop without decoding adds {per['predecoded'] - per['bare']:+.1f} ms ({ratio_pre:.2f}x); the "
        f"multi-crop augmentation, timed alone, takes {per['augment']:.1f} ms of it (the bare loop gets its "
        "crops made beforehand), the rest is the per-step statistics, learning-rate update, prototype "
        f"normalisation and finiteness check; (2) decoding adds {per['train_loop'] - per['predecoded']:+.1f} ms "
        f"(timed alone: {per['decode']:.1f} ms), which makes the trainer's loop {ratio_loop:.2f}x; (3) outside "
        f"the loop {1000 * outside / n:.1f} ms ({outside:.2f} s for the epoch): building the model and "
        f"optimizer ({med['build']:.2f} s timed alone), the checkpoint (one write plus the reporter's copy: "
        f"{med['checkpoint']:.2f} s timed alone), scanning the folder and the backbone export of the last epoch.",
        f"The outside-the-loop part is paid per epoch (checkpoint) or per run (build, export), so it shrinks "
        f"with longer epochs: with {n} images it is {outside / med['train']:.0%} of the epoch. The loop's own "
        f"ratio ({ratio_loop:.2f}x) is what a long epoch approaches on this CPU, where the augmentation runs on "
        "the same cores as the model; on a GPU the augmentation runs on the GPU and decoding in DataLoader "
        "workers, beside the model rather than before it.",
        "",
    ]
    share = statistics.median(k / t for k, t in zip(times["knn"], times["train"]))
    knn_verdict = "meets" if share < 0.05 else "misses"
    config = make_config("unused", setup)
    estimates = knn_share_estimates(share, config, objects, n)
    lines += [
        "### The kNN monitor's cost",
        "",
        f"One evaluation of the kNN monitor (`swav/knn_top1`: {objects} labeled object crops of {config.knn_size} px, "
        f"the bank and the queries; BatchNorm statistics re-estimated on the bank, then both embedded with the trunk "
        f"in eval mode, then the weighted 20-NN vote) takes "
        f"{1000 * med['knn']:.0f} ms, **{share:.1%}** of the trainer's epoch above (median of per-repeat ratios): it "
        f"{knn_verdict} the goal (< 5 % of an epoch). It runs every epoch up to 20 epochs and every "
        "epochs // 20 after, plus once before training for the run's random trunk.",
        "",
        "Estimated for the shipped spaces (this measurement scaled by pixel work: objects x crop px^2 against "
        "images per epoch x the crops' pixels; spaces on the generated sample count its images and boxes, "
        "capped by `max_images` and `knn_max_objects`):",
        "",
        "| space | arch | images / epoch | objects | kNN crop px | monitor / epoch |",
        "|---|---|---|---|---|---|",
        *[f"| {space} | {arch} | {images} | {objs} | {size} | {est:.1%} |"
          for space, arch, images, objs, size, est in estimates],
        "",
        "The paper-scale spaces are shown on the generated sample they validate against; on a real unlabeled "
        "set (the study's 514k images) the monitor's share is 2 x 1000 objects against hundreds of thousands "
        "of images per epoch, well under 0.1 %.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table (``--quick`` for a short run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller images")
    args = parser.parse_args(argv)
    print(run(quick=args.quick))


if __name__ == "__main__":
    main()
