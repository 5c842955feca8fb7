"""``python -m bench dispatch``: what a GPU would be asked to launch per SwAV step, counted on the CPU.

A GPU step is bound by Python when the host issues more kernels than the device can run: at a few
microseconds of launch overhead each, the ~15,000 operations that the per-image crops issued per
step of the GPU profile (batch 256, 6 views) cost more than the step's arithmetic. This benchmark
counts the operations dispatched (every ATen call, through a ``TorchDispatchMode``: forward,
backward and the optimizer's) on the CPU, where the count is the same as on a GPU:

* the multi-crop augmentation per view, on the path a GPU takes (``chunked=False``), at batch 64
  and 256: the batched crops (``crop_resize``: one ``roi_align`` for the view) against the
  per-image crops they replaced (one slice + resize + flip per image, kept here as the baseline);
* the whole SwAV step (augmentation + forward + loss + backward + SGD step) against the bare model
  step on ready-made crops;
* CPU images/s of the augmentation: the CPU's own windowed path (per-image uint8 resize, what a CPU
  trainer runs) against the accelerator's path run on the CPU, and the pixel difference between the
  two crop methods (roi_align's box filter vs the antialiased triangle filter).

Goals (docs: issue "a data path that keeps a GPU busy"): augmentation <= 100 operations per view
whatever the batch; the whole step within 2x of the bare step's count.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from trainers.common.provenance import seed_everything
from trainers.data import UnlabeledImages, generate_sample
from trainers.swav import MultiCropAugment, SwAVModel, swav_loss
from trainers.swav.config import CropGroup

CROPS = (CropGroup(2, 32, 0.14, 1.0), CropGroup(4, 16, 0.05, 0.14))  # 6 views as the GPU profile; counts do not
BATCHES = (64, 256)  # depend on the crop sizes, only the time does
PER_VIEW_GOAL = 100
STEP_GOAL = 2.0


class DispatchCount(TorchDispatchMode):
    """Counts every ATen operation dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


class PerImageCrops(MultiCropAugment):
    """The baseline: each image's crop cut, resized (antialiased) and flipped on its own, as before."""

    def crop(self, batch: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor,
             rois: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        for j, (top, left, h, w) in enumerate(boxes.tolist()):
            patch = batch[j : j + 1, :, top : top + h, left : left + w]
            patch = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out.append(patch.flip(-1) if bool(flip[j]) else patch)
        return torch.cat(out)


def images(n: int) -> list[torch.Tensor]:
    """``n`` decoded images of the `small` sample set (256 x 256), repeated as needed."""
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        dataset = UnlabeledImages(generate_sample(tmp, seed=0, size="small").unlabeled)
        decoded = [dataset[i] for i in range(len(dataset))]
    return [decoded[i % len(decoded)] for i in range(n)]


def count(fn: Any) -> int:
    with DispatchCount() as counter:
        fn()
    return counter.count


def step_counts(batch: Sequence[torch.Tensor], augment: MultiCropAugment) -> tuple[int, int, int]:
    """(augmentation ops, whole-step ops, bare-step ops) for one SwAV step on ``batch``."""
    seed_everything(0)
    model = SwAVModel("resnet18", "bn", 100, 32, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    total = sum(g.count for g in CROPS)
    views: list[torch.Tensor] = []

    def augment_only() -> None:
        views[:] = augment(batch, generator=torch.Generator().manual_seed(0))

    def model_step() -> None:
        _, scores = model(views)
        loss = swav_loss(scores.float(), total, (0, 1), 0.1, 0.05, 3, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    augment_only()  # warm: the per-device constants exist, as in every step but the first
    aug = count(augment_only)
    model_step()  # warm: the optimizer's state exists, as in every step but the first
    bare = count(model_step)
    whole = count(lambda: (augment_only(), model_step()))
    return aug, whole, bare


def rate(augment: MultiCropAugment, batch: Sequence[torch.Tensor], repeats: int) -> float:
    times = []
    for r in range(repeats):
        generator = torch.Generator().manual_seed(r)
        start = time.perf_counter()
        augment(batch, generator=generator)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def pixel_difference(batch: Sequence[torch.Tensor]) -> dict[int, tuple[float, float]]:
    """Per view size: (mean, p99) |batched - per-image| crop pixel, in 0..255, from the same boxes and flips."""
    from trainers.swav.augment import crop_resize, random_resized_crop_boxes, stack_images

    stacked = stack_images(batch).float()
    heights, widths = torch.full((len(batch),), stacked.shape[2]), torch.full((len(batch),), stacked.shape[3])
    generator = torch.Generator().manual_seed(0)
    out = {}
    baseline = PerImageCrops(CROPS)
    for group in CROPS:
        boxes = random_resized_crop_boxes(heights, widths, (group.min_scale, group.max_scale), generator)
        flip = torch.rand(len(batch), generator=generator) < 0.5
        d = (crop_resize(stacked, boxes, group.size, flip) - baseline.crop(stacked, boxes, group.size, flip)).abs()
        out[group.size] = (float(d.mean()), float(d.flatten().quantile(0.99)))
    return out


def run(quick: bool = False) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(threads)  # `python -m bench` runs the next benchmarks in this process


def _run(quick: bool) -> str:
    started = time.time()
    views = sum(g.count for g in CROPS)
    rows, verdicts = [], []
    pool = images(max(BATCHES))
    for n in BATCHES:
        batch = pool[:n]
        new = step_counts(batch, MultiCropAugment(CROPS, chunked=False))
        old = step_counts(batch, PerImageCrops(CROPS, chunked=False))
        rows.append(f"| {n} | {old[0] / views:.0f} | {new[0] / views:.0f} | {old[1]} | {new[1]} | {new[2]} | "
                    f"{new[1] / new[2]:.2f}x |")
        verdicts.append((new[0] / views <= PER_VIEW_GOAL, new[1] / new[2] <= STEP_GOAL))
    per_view = [float(r.split("|")[3]) for r in rows]
    repeats = 2 if quick else 5
    cpu_batch = pool[:64]
    cpu_path = rate(MultiCropAugment(CROPS, chunked=True), cpu_batch, repeats)
    gpu_path = rate(MultiCropAugment(CROPS, chunked=False), cpu_batch, repeats)
    diff = pixel_difference(pool[:64])
    ok_view = all(v for v, _ in verdicts) and max(per_view) == min(per_view)
    ok_step = all(s for _, s in verdicts)
    return "\n".join([
        "## Operations a GPU would launch per SwAV step (counted on the CPU)",
        "",
        f"Command: `python -m bench dispatch`{' --quick' if quick else ''}. Every ATen operation dispatched "
        f"(`TorchDispatchMode`), one SwAV ResNet-18 step with {views} views (2 x 32 + 4 x 16 px; the counts do "
        "not depend on the sizes), the augmentation on the path a GPU takes (`chunked=False`). Baseline: the "
        "per-image crops the batched ones replaced (slice + antialiased resize + flip per image), measured in the "
        "same run.",
        "",
        "| batch | augmentation ops per view, per-image crops | per view, batched crops | whole step, per-image | "
        "whole step, batched | bare model step | whole / bare |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Goals: augmentation <= {PER_VIEW_GOAL} operations per view whatever the batch "
        f"(**{'met' if ok_view else 'not met'}**: {', '.join(f'{v:.0f}' for v in per_view)} at batch "
        f"{' and '.join(map(str, BATCHES))}); the whole step within {STEP_GOAL:.0f}x of the bare step's count "
        f"(**{'met' if ok_step else 'not met'}**).",
        "",
        f"CPU (1 thread, batch 64): {cpu_path:.0f} images/s on the CPU's windowed path (per-image uint8 resize: "
        f"what a CPU trainer runs), {gpu_path:.0f} on the accelerator's path run on the CPU "
        f"({cpu_path / gpu_path:.2f}x: roi_align over float images is the slower kernel on a CPU, where an "
        "operation costs no launch). Crop pixels, batched vs per-image antialiased resize, same boxes (0..255): "
        + "; ".join(f"{s} px views mean {m:.2f}, p99 {p:.1f}" for s, (m, p) in diff.items()) + " (roi_align averages "
        "ceil(box / size)^2 bilinear samples per pixel: a box filter where the antialiased resize has a "
        "triangle filter).",
        f"({time.time() - started:.0f} s.)",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    from bench import run_alone

    run_alone("dispatch", __doc__, run, argv)


if __name__ == "__main__":
    main()
