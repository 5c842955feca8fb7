"""GPU throughput: SwAV ResNet-50 pretraining and Faster R-CNN R50-FPN training, in images/s.

Only where CUDA is available; elsewhere the section says it was skipped and why.

SwAV: ResNet-50, 3000 prototypes, projection 2048 -> 128, the paper's crops (2 x 224 + 6 x 96),
batch 64 per GPU (the reference's), SGD step with the SwAV loss (Sinkhorn), bf16 autocast and
channels_last. Three ways: synthetic crops already on the GPU (the ceiling without any data
pipeline); end to end from the image folder (DataLoader workers decoding the sample images,
``MultiCropAugment`` on the GPU); and ``trainers.swav.train`` itself for one epoch (its own
settings: fp16 autocast with a GradScaler, default memory format; loop rate from its
``swav/images_per_s``). Faster R-CNN: the project's detector (``assemble_detector``: ResNet-50
trunk with FrozenBatchNorm, FPN, two-FC box head, torchvision's 800 / 1333 resizing) training on
synthetic 480 x 640 images with five boxes each, batch 2 per GPU as torchvision's reference, in
fp32 and with bf16 autocast.

Anchors printed beside them (other hardware, so ratios are a rough guide only): the reference
SwAV run trained at about 100 images/s per V100 at batch 256; torchvision's Faster R-CNN
R50-FPN recipe trains at about 9 images/s per V100.

Run: ``make bench`` or ``python -m bench gpu``; this file alone: ``python -m bench.gpu [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import torch
from torch import Tensor

from trainers.swav import DEFAULT_CROPS, CropGroup
from trainers.vocabulary import SWAV_IMAGES_PER_S

SWAV_ANCHOR = 100.0  # images/s per V100, reference SwAV run at batch 256
DETECTION_ANCHOR = 9.0  # images/s per V100, torchvision's Faster R-CNN R50-FPN recipe


@dataclass(frozen=True)
class SwAVSetup:
    """Network and batch of the SwAV measurements."""

    arch: str = "resnet50"
    crops: tuple[CropGroup, ...] = DEFAULT_CROPS
    batch: int = 64
    prototypes: int = 3000
    feat_dim: int = 128
    hidden_dim: int = 2048


@dataclass(frozen=True)
class DetectionSetup:
    """Network and batch of the Faster R-CNN measurement."""

    arch: str = "resnet50"
    batch: int = 2
    image_hw: tuple[int, int] = (480, 640)  # a typical COCO image; the model resizes it to 800 x 1066
    min_size: int = 800
    max_size: int = 1333
    boxes: int = 5
    classes: int = 80


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool) -> ContextManager[object]:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def timed_rates(step: Callable[[], int], device: torch.device, warmup: int, steps: int, repeats: int) -> list[float]:
    """Images/s of ``repeats`` runs of ``steps`` calls of ``step`` (which returns its image count), after ``warmup`` calls."""
    for _ in range(warmup):  # cuDNN autotuning, allocator, lazy initialisation
        step()
    _sync(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        images = sum(step() for _ in range(steps))
        _sync(device)
        rates.append(images / (time.perf_counter() - start))
    return rates


def swav_step(setup: SwAVSetup, device: torch.device, bf16: bool, channels_last: bool) -> Callable[[list[Tensor]], int]:
    """A function doing one SwAV training step on a list of crops (returns the batch size)."""
    from trainers.swav import SwAVModel, normalize_prototypes, swav_loss

    model = SwAVModel(setup.arch, "bn", setup.prototypes, setup.feat_dim, setup.hidden_dim).to(device)
    model = model.to(memory_format=_memory_format(channels_last))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    n_crops = sum(g.count for g in setup.crops)
    fmt = _memory_format(channels_last)

    def step(crops: list[Tensor]) -> int:
        crops = [c.contiguous(memory_format=fmt) for c in crops]
        normalize_prototypes(model)
        with _autocast(device, bf16):
            _, scores = model(crops)
        loss = swav_loss(scores.float(), n_crops, (0, 1), 0.1, 0.05, 3, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return crops[0].shape[0]

    return step


def swav_synthetic(setup: SwAVSetup, device: torch.device, bf16: bool = True, channels_last: bool = True,
                   warmup: int = 3, steps: int = 10, repeats: int = 3) -> list[float]:
    """Images/s of SwAV steps on random crops already on ``device`` (no data pipeline at all)."""
    generator = torch.Generator(device=device).manual_seed(0)
    crops = [torch.randn(setup.batch, 3, g.size, g.size, device=device, generator=generator)
             for g in setup.crops for _ in range(g.count)]
    step = swav_step(setup, device, bf16, channels_last)
    return timed_rates(lambda: step(crops), device, warmup, steps, repeats)


def swav_end_to_end(setup: SwAVSetup, device: torch.device, folder: str | Path, workers: int, bf16: bool = True,
                    channels_last: bool = True, warmup: int = 3, steps: int = 10, repeats: int = 3) -> list[float]:
    """Images/s of SwAV steps fed from ``folder``: DataLoader decoding, multi-crop on ``device``, the step."""
    from torch.utils.data import DataLoader

    from trainers.data import UnlabeledImages, collate_images
    from trainers.swav import MultiCropAugment
    from trainers.swav.stats import move_images

    dataset = UnlabeledImages(folder)
    total = setup.batch * (warmup + steps * repeats)
    loader = DataLoader(dataset, batch_size=setup.batch, sampler=[i % len(dataset) for i in range(total)],
                        num_workers=workers, collate_fn=collate_images, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    batches: Iterator[tuple[list[Tensor], int]] = iter(loader)
    augment = MultiCropAugment(setup.crops)
    generator = torch.Generator().manual_seed(0)
    step = swav_step(setup, device, bf16, channels_last)

    def one() -> int:
        images, _ = next(batches)
        images = move_images(images, device)
        return step(augment(images, generator=generator))

    return timed_rates(one, device, warmup, steps, repeats)


def swav_trainer_epoch(folder: str | Path, workers: int, setup: SwAVSetup, amp: bool = True) -> float:
    """``swav/images_per_s`` of one epoch of ``trainers.swav.train`` over ``folder`` (its own settings)."""
    from trainers.reporting import InMemoryReporter
    from trainers.swav import SwAVConfig, train

    config = SwAVConfig(arch=setup.arch, crops=setup.crops, batch_size=setup.batch, prototypes=setup.prototypes,
                        feat_dim=setup.feat_dim, hidden_dim=setup.hidden_dim, epochs=1, amp=amp,
                        workers=workers, data=str(folder), freeze_prototypes_epochs=0)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-swav-") as tmp:
        return train(config, InMemoryReporter(root=Path(tmp)))[SWAV_IMAGES_PER_S]


def detection_step(setup: DetectionSetup, device: torch.device, bf16: bool) -> Callable[[], int]:
    """A function doing one Faster R-CNN training step on a synthetic batch (returns the batch size)."""
    from trainers.detection import assemble_detector
    from trainers.detection.config import MODEL_FIELDS, DetectionConfig

    defaults = {f.name: f.default for f in dataclasses.fields(DetectionConfig) if f.name in MODEL_FIELDS}
    options = {**defaults, "arch": setup.arch, "norm": "frozen_bn", "head": "mlp",
               "min_size": setup.min_size, "max_size": setup.max_size}
    model = assemble_detector(setup.classes, **options).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)  # torchvision's recipe
    generator = torch.Generator().manual_seed(0)
    h, w = setup.image_hw
    images = [torch.rand(3, h, w, generator=generator).to(device) for _ in range(setup.batch)]
    targets = []
    for _ in range(setup.batch):
        xy = torch.rand(setup.boxes, 2, generator=generator) * torch.tensor([w * 0.7, h * 0.7])
        wh = 16 + torch.rand(setup.boxes, 2, generator=generator) * torch.tensor([w * 0.3, h * 0.3])
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1).to(device),
                        "labels": torch.randint(1, setup.classes + 1, (setup.boxes,), generator=generator).to(device)})

    def step() -> int:
        with _autocast(device, bf16):
            losses = model(images, targets)
            loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)  # as the trainer: random data must not blow up the run
        optimizer.step()
        return setup.batch

    return step


def detection_rates(setup: DetectionSetup, device: torch.device, bf16: bool = False,
                    warmup: int = 3, steps: int = 10, repeats: int = 3) -> list[float]:
    """Images/s of Faster R-CNN training steps on synthetic images."""
    return timed_rates(detection_step(setup, device, bf16), device, warmup, steps, repeats)


def _fmt(rates: Sequence[float]) -> str:
    if len(rates) == 1:
        return f"{rates[0]:.1f}"
    return f"{statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f})"


def skipped_section(reason: str) -> str:
    """The section written where there is no GPU."""
    return "\n".join([
        "## GPU throughput (SwAV ResNet-50, Faster R-CNN R50-FPN)",
        "",
        f"Command: `make bench` / `python -m bench gpu`. Machine: {os.cpu_count()} CPUs ({platform.machine()}), "
        f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}).",
        f"**Skipped on this machine: {reason}.** On a CUDA machine this section measures SwAV ResNet-50 "
        "(2 x 224 + 6 x 96 crops, batch 64, bf16 autocast, channels_last) images/s end to end and on "
        "synthetic in-memory crops, one epoch of `trainers.swav.train`, and Faster R-CNN R50-FPN training "
        f"images/s (fp32 and bf16), beside the anchors: the reference SwAV run, ~{SWAV_ANCHOR:.0f} images/s per "
        f"V100 at batch 256; torchvision's Faster R-CNN R50-FPN, ~{DETECTION_ANCHOR:.0f} images/s per V100. "
        f"Goals on one H200: SwAV synthetic >= {GOAL_SWAV_SYNTHETIC:,.0f} images/s, end to end >= "
        f"{GOAL_END_TO_END:.0%} of it. On a GPU machine `python -m bench device` measures this section "
        "(`--quick`) with the CUDA-only tests and the GPU fidelity profile; `--record DIR` writes it here.",
        "",
    ])


GOAL_SWAV_SYNTHETIC = 2500.0  # images/s, SwAV R50 2 x 224 + 6 x 96 at batch 64, synthetic crops on one H200
GOAL_END_TO_END = 0.6  # end to end from image files / synthetic
# What measure() records, in the table's order: key -> row label (SwAV rows end with the setup's description).
ROWS = {
    "swav_synthetic": "SwAV {swav}, bf16 + channels_last, synthetic crops on the device (ceiling)",
    "swav_synthetic_fp32": "the same in fp32, default memory format",
    "swav_end_to_end": "SwAV end to end: decode in workers, `MultiCropAugment` on the device, bf16 + channels_last",
    "swav_trainer": "`trainers.swav.train`, one epoch of the sample set (its own settings: fp16 + GradScaler on a GPU; "
                    "first steps included)",
    "det_fp32": "Faster R-CNN {det}, fp32",
    "det_bf16": "the same with bf16 autocast",
}


@dataclass(frozen=True)
class Timing:
    """How many steps each measurement times: ``repeats`` runs of ``steps`` after ``warmup``."""

    warmup: int = 5
    steps: int = 10
    repeats: int = 3


QUICK, FULL = Timing(2, 3, 1), Timing()


def measure(device: torch.device, swav: SwAVSetup, det: DetectionSetup, folder: str | Path, workers: int,
            timing: Timing = FULL, record: Callable[[str, list[float]], None] | None = None) -> dict[str, list[float]]:
    """Every measurement of :data:`ROWS`, in order; ``record(key, rates)`` is called as each one finishes.

    Args:
        device: where to train (``bench device --tiny`` runs it on the CPU with tiny setups).
        swav: the SwAV network and batch.
        det: the detector and batch.
        folder: image files for the end-to-end and trainer measurements.
        workers: DataLoader workers.
        timing: warm-up, steps and repeats of each measurement.
        record: told each result as soon as it exists (a caller with a deadline keeps what was measured).
    """
    results: dict[str, list[float]] = {}
    w, n, r = timing.warmup, timing.steps, timing.repeats
    runs: list[tuple[str, Callable[[], list[float]]]] = [
        ("swav_synthetic", lambda: swav_synthetic(swav, device, warmup=w, steps=n, repeats=r)),
        ("swav_synthetic_fp32", lambda: swav_synthetic(swav, device, bf16=False, channels_last=False, warmup=w,
                                                       steps=n, repeats=r)),
        ("swav_end_to_end", lambda: swav_end_to_end(swav, device, folder, workers, warmup=w, steps=n, repeats=r)),
        # fp16 + GradScaler as the trainer runs on a GPU; fp32 on a CPU, where float16 autocast is ~30x slower
        ("swav_trainer", lambda: [swav_trainer_epoch(folder, workers, swav, amp=device.type == "cuda")]),
        ("det_fp32", lambda: detection_rates(det, device, bf16=False, warmup=w, steps=n, repeats=r)),
        ("det_bf16", lambda: detection_rates(det, device, bf16=True, warmup=w, steps=n, repeats=r)),
    ]
    for key, run_one in runs:
        results[key] = run_one()
        if record is not None:
            record(key, results[key])
    return results


def describe(swav: SwAVSetup, det: DetectionSetup) -> dict[str, str]:
    """The setups as the table's labels name them."""
    crops = " + ".join(f"{g.count} x {g.size}" for g in swav.crops)
    return {"swav": f"{swav.arch.replace('resnet', 'R')} {crops}, batch {swav.batch}",
            "det": f"{det.arch.replace('resnet', 'R')}-FPN training, batch {det.batch}, "
                   f"{det.image_hw[0]} x {det.image_hw[1]} -> {det.min_size} px"}


def section(results: dict[str, list[float]], labels: dict[str, str], machine: str, command: str, timing: Timing,
            workers: int, goals: bool = True) -> str:
    """The BENCHMARKS.md section of the measurements in ``results`` (those missing are said to be missing).

    Args:
        results: :func:`measure`'s output, possibly partial.
        labels: :func:`describe` of the setups measured.
        machine: the device's name and the machine around it.
        command: the command that measured.
        timing: the steps behind each figure.
        workers: DataLoader workers.
        goals: judge the SwAV R50 goals (only meaningful for the paper's setup on a GPU).
    """
    swav_anchor = {k: SWAV_ANCHOR for k in ROWS if k.startswith("swav")}
    anchors = {**swav_anchor, "det_fp32": DETECTION_ANCHOR, "det_bf16": DETECTION_ANCHOR}
    rows = []
    for key, label in ROWS.items():
        label = label.format(**labels)
        if key not in results:
            rows.append(f"| {label} | not measured (phase stopped first) | {anchors[key]:.0f} | - |")
            continue
        rates = results[key]
        rows.append(f"| {label} | {_fmt(rates)} | {anchors[key]:.0f} | {statistics.median(rates) / anchors[key]:.1f}x |")
    lines = [
        "## GPU throughput (SwAV ResNet-50, Faster R-CNN R50-FPN)",
        "",
        f"Command: `{command}`. Machine: {machine}, torch {torch.__version__} (CUDA {torch.version.cuda}), cuDNN "
        f"benchmark on; {workers} DataLoader workers. Images/s, median of {timing.repeats} runs of {timing.steps} "
        f"steps after {timing.warmup} warm-up steps (min-max). Anchors are V100 figures from other code: a guide, "
        "not a baseline.",
        "",
        "| what | images/s | anchor (per V100) | vs anchor |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    if "swav_synthetic" in results and "swav_end_to_end" in results:
        synthetic = statistics.median(results["swav_synthetic"])
        share = statistics.median(results["swav_end_to_end"]) / synthetic
        lines.append(f"End to end reaches {share:.0%} of the synthetic ceiling; the rest is decoding and augmentation "
                     "that the step does not hide (the sample images are 256 x 256 JPEGs and PNGs).")
        if goals:
            met = {True: "met", False: "**not met**"}
            lines.append(f"Goals: synthetic >= {GOAL_SWAV_SYNTHETIC:,.0f} images/s: {met[synthetic >= GOAL_SWAV_SYNTHETIC]} "
                         f"({synthetic:,.0f}); end to end >= {GOAL_END_TO_END:.0%} of it: "
                         f"{met[share >= GOAL_END_TO_END]} ({share:.0%}).")
        lines.append("")
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    """Measure on the GPU, or say why not; return the markdown section.

    Args:
        quick: fewer steps and one repeat.
    """
    if not torch.cuda.is_available():
        why = "no CUDA device (`torch.cuda.is_available()` is False)"
        return skipped_section(why)
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    timing = QUICK if quick else FULL
    workers = max(1, min(10, (os.cpu_count() or 2) - 2))  # the reference uses 10 per GPU
    swav, det = SwAVSetup(), DetectionSetup()
    from trainers.data import generate_sample

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        paths = generate_sample(Path(tmp) / "data", seed=0, size="medium")
        results = measure(device, swav, det, paths.unlabeled, workers, timing)
    machine = f"{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPUs"
    return section(results, describe(swav, det), machine, f"python -m bench gpu{' --quick' if quick else ''}",
                   timing, workers)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table (``--quick`` for fewer steps)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, one repeat")
    args = parser.parse_args(argv)
    print(run(quick=args.quick))


if __name__ == "__main__":
    main()
