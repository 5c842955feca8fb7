"""Multi-crop augmentation throughput: batched uint8/float tensors vs the reference's per-image PIL.

Baseline: facebookresearch/swav ``src/multicropdataset.py`` — per image and per crop,
torchvision v1 transforms on a PIL image (RandomResizedCrop, flip, ColorJitter(0.8, 0.8, 0.8,
0.2) p=0.8, grayscale p=0.2, PIL Gaussian blur radius 0.1-2 p=0.5, ToTensor, Normalize), then
the per-crop batches stacked as the default collate does. Candidate: ``MultiCropAugment``
on the same decoded images. Decoding is excluded from both (each gets its input decoded once).
Images: the deterministic `small` sample set (256 x 256); crops: the paper's 2 x 224 + 6 x 96.

Run: ``make bench`` (all benchmarks) or ``python -m bench multicrop``; this file alone:
``python -m bench.multicrop [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image, ImageFilter

from trainers.data import UnlabeledImages, generate_sample
from trainers.swav.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugment
from trainers.swav.config import DEFAULT_CROPS, CropGroup


class PILRandomGaussianBlur:
    """The reference's blur: with probability p, PIL GaussianBlur with a radius in [0.1, 2]."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if np.random.rand() > self.prob:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


def reference_transforms(crops: Sequence[CropGroup]) -> list[Callable[[Image.Image], torch.Tensor]]:
    """One torchvision v1 pipeline per crop, as ``MultiCropDataset`` builds them."""
    color = T.Compose([T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(p=0.2)])
    out: list[Callable[[Image.Image], torch.Tensor]] = []
    for group in crops:
        pipeline = T.Compose([
            T.RandomResizedCrop(group.size, scale=(group.min_scale, group.max_scale)),
            T.RandomHorizontalFlip(p=0.5),
            T.Compose([color, PILRandomGaussianBlur()]),
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ])
        out.extend([pipeline] * group.count)
    return out


def pil_multicrop(images: Sequence[Image.Image], transforms: Sequence[Callable]) -> list[torch.Tensor]:
    """Per-image PIL views, stacked per crop (what the reference's DataLoader collate yields)."""
    per_image = [[t(img) for t in transforms] for img in images]
    return [torch.stack([views[i] for views in per_image]) for i in range(len(transforms))]


def _time_interleaved(fns: Sequence[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Seconds per call of each function, repeats interleaved so that load changes hit all alike."""
    for fn in fns:
        fn()  # warm-up: allocator, kernels, lazy imports
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def _rate(n_images: int, times: list[float]) -> tuple[float, float, float]:
    """Median, min and max images/s."""
    rates = [n_images / t for t in times]
    return statistics.median(rates), min(rates), max(rates)


def run(quick: bool = False) -> str:
    """Time both pipelines on the sample images; return a markdown section with the table.

    Args:
        quick: fewer images and repeats (a smoke run, e.g. in CI).
    """
    n_images, repeats = (16, 3) if quick else (64, 5)
    crops = DEFAULT_CROPS
    with tempfile.TemporaryDirectory(prefix="bench-multicrop-") as tmp:
        paths = generate_sample(tmp, seed=0, size="small")
        dataset = UnlabeledImages(paths.unlabeled)
        tensors = [dataset[i] for i in range(n_images)]
        pil_images = []
        for path in dataset.paths[:n_images]:
            with Image.open(path) as img:
                pil_images.append(img.convert("RGB"))
    if any(t is None for t in tensors):
        raise RuntimeError("sample images failed to decode")

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    transforms = reference_transforms(crops)
    augment = MultiCropAugment(crops)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()

    def with_threads(count: int, fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            torch.set_num_threads(count)
            return fn()
        return call

    try:
        # The PIL pipeline is single-threaded per process (the reference scales it with DataLoader
        # workers); one torch thread makes the comparison per core.
        times = _time_interleaved([
            with_threads(1, lambda: pil_multicrop(pil_images, transforms)),
            with_threads(1, lambda: augment(tensors, generator)),
            with_threads(threads, lambda: augment(tensors, generator)),
        ], repeats)
    finally:
        torch.set_num_threads(threads)
    pil, ours_1, ours_n = (_rate(n_images, t) for t in times)

    def row(name: str, rate: tuple[float, float, float]) -> str:
        median, low, high = rate
        return f"| {name} | {median:.1f} | {low:.1f}-{high:.1f} | {median / pil[0]:.2f}x |"

    crop_text = " + ".join(f"{g.count} x {g.size}px" for g in crops)
    lines = [
        "## Multi-crop augmentation (SwAV)",
        "",
        f"Command: `make bench` / `python -m bench multicrop`{' (quick)' if quick else ''}. "
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, Pillow {Image.__version__}.",
        f"{n_images} sample images (256 x 256, decoded beforehand), crops {crop_text}; "
        f"images/s = median of {repeats} repeats (min-max).",
        "",
        "| pipeline | images/s | min-max | vs PIL |",
        "|---|---|---|---|",
        row("per-image PIL, torchvision v1 (reference)", pil),
        row("MultiCropAugment, 1 thread", ours_1),
        row(f"MultiCropAugment, {threads} threads", ours_n),
        "",
        "PIL is single-threaded, so the 1-thread row is the per-core comparison. The multi-thread row",
        "needs an otherwise idle machine: torch's threads wait for each other at every op, so another",
        "busy process on the same cores slows it down many times.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table (``--quick`` for a short run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    args = parser.parse_args(argv)
    print(run(quick=args.quick))


if __name__ == "__main__":
    main()
