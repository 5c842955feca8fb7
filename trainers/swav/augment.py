"""Multi-crop augmentation on decoded uint8 tensors: every op batched over the view, none per image.

The reference (``src/multicropdataset.py``) runs, per image and per crop, torchvision's v1
transforms on a PIL image: RandomResizedCrop, horizontal flip, colour jitter (0.8 strength,
p=0.8), grayscale (p=0.2), Gaussian blur (radius 0.1-2, p=0.5), ToTensor, Normalize. Here each
image is decoded once. On an accelerator (the whole-batch path) the batch is stacked once
(zero-padded where sizes differ) and each view cuts and resizes every image's crop in one
``torchvision.ops.roi_align`` over the batch's boxes (as DALI and kornia batch their crops) and
flips with one ``where``; its photometric ops (:mod:`trainers.swav.photometric`) run on a fixed schedule (every
sample through every step, the identity where its draws say no), so the operations a view issues
grow neither with the batch nor with its mix of jitter orders: about 70 per view on the device,
plus about 115 per batch for all views' boxes, draws and their one copy to the device
(``bench/dispatch.py`` counts them; a GPU is not left waiting on Python launching a kernel per
image). On the CPU (the windowed path), where an operation costs no launch, each crop is resized
on its own uint8 tensor (:func:`crop_each`, several times faster there) and samples are sorted by
their jitter order so each op runs once per sample. Either way the photometric transforms run as
tensor ops over the view's batch with per-sample random parameters, drawn for every view of the
batch at once.

The crop geometry (torchvision's ``RandomResizedCrop.get_params``) and every photometric
parameter distribution are the reference's. The accelerator's resize differs in its filter:
roi_align averages ceil(box / size)^2 bilinear samples per output pixel (a box filter when
shrinking, plain bilinear when enlarging) where PIL and the CPU path's ``interpolate(antialias=
True)`` use a triangle filter; the crops differ by 2.0/255 on average (p99 14/255) for 32 and 16
px views of the 256 px sample images, and 0.8/255 for 96 px views (``bench/dispatch.py`` measures
it).
The same code runs on CPU or on a CUDA device after collation; the throughput against the PIL
pipeline is measured by ``bench/multicrop.py``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from trainers.swav.config import CropGroup, as_crop_group
from trainers.swav.photometric import (
    JITTER_ORDERS,
    NO_JITTER,
    Draws,
    ViewPlan,
    _apply_jitter,
    _gray,
    apply_plan,
    gaussian_blur,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's RandomResizedCrop aspect-ratio range and number of tries.
RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10
def random_resized_crop_boxes(
    heights: Tensor, widths: Tensor, scale: tuple[float | Tensor, float | Tensor],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Crop boxes ``(top, left, height, width)`` drawn as torchvision's ``RandomResizedCrop.get_params``.

    Vectorised over images: each image gets 10 tries of (area fraction, log aspect ratio); the
    first try that fits is used, else the central crop clipped to the aspect-ratio range.

    Args:
        heights: ``(n,)`` image heights.
        widths: ``(n,)`` image widths.
        scale: ``(min, max)`` fraction of the image area: numbers, or ``(n, 1)`` tensors (one range per image).
        generator: source of randomness (CPU).

    Returns:
        ``(n, 4)`` int64 tensor of boxes.
    """
    n = heights.shape[0]
    size = torch.stack([heights, widths], dim=1).to(torch.float64).unsqueeze(1)  # (n, 1, 2): height, width
    u = torch.rand(n, CROP_TRIES, 4, generator=generator, dtype=torch.float64)
    area = size.prod(-1) * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    extent = torch.stack([area / aspect, area * aspect], dim=-1).sqrt_().round_()  # (n, tries, 2): height, width
    fits = ((extent > 0) & (extent <= size)).all(dim=-1)
    corner = torch.floor(u[..., 2:] * (size - extent + 1))  # top, left
    first = fits.to(torch.int8).argmax(dim=1)  # index of the first fitting try
    boxes = torch.cat([corner, extent], dim=-1)[torch.arange(n), first]
    ok = fits.any(dim=1)
    if not bool(ok.all()):
        # Fallback (no try fits): central crop with the aspect ratio clipped to RATIO.
        hh, ww = heights.to(torch.float64), widths.to(torch.float64)
        in_ratio = ww / hh
        fb_w = torch.where(in_ratio > RATIO[1], torch.round(hh * RATIO[1]), ww)
        fb_h = torch.where(in_ratio < RATIO[0], torch.round(ww / RATIO[0]), hh)
        fallback = torch.stack([torch.div(hh - fb_h, 2, rounding_mode="floor"),
                                torch.div(ww - fb_w, 2, rounding_mode="floor"), fb_h, fb_w], dim=1)
        boxes = torch.where(ok.unsqueeze(1), boxes, fallback)
    return boxes.to(torch.int64)

# On CPU the photometric ops run on windows of about this many floats (1 MiB), so a window
# stays in cache through all of its ops; on a whole 224-px batch every op would stream from
# memory (measured: about 2x slower).
CPU_CHUNK_ELEMENTS = 1 << 18

def _runs(keys: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(start, stop, key)`` of each run of equal consecutive keys."""
    runs: list[tuple[int, int, int]] = []
    for i, key in enumerate(keys):
        if runs and runs[-1][2] == key:
            runs[-1] = (runs[-1][0], i + 1, key)
        else:
            runs.append((i, i + 1, key))
    return runs


class MultiCropAugment:
    """Multi-crop views for a batch of decoded images.

    Args:
        crops: crop groups (``CropGroup`` or mappings ``{count, size, min_scale, max_scale}``).
        mean: per-channel normalisation mean (ImageNet by default).
        std: per-channel normalisation std (ImageNet by default).
        chunked: how the photometric ops are batched. True (the default on CPU): samples sorted
            by their random choices and processed in cache-sized windows. False (the default
            on other devices): whole-batch masked ops, few large kernels. Both give the same
            images from the same generator.

    Calling it on a list of ``3 x H x W`` uint8 tensors (any sizes, CPU or CUDA) returns one
    float32 tensor ``B x 3 x s x s`` per crop, in group order, normalised. Each view applies,
    per sample and with the reference's probabilities: random resized crop (its group's scale
    range, aspect 3/4-4/3), horizontal flip (p=0.5), colour jitter 0.8/0.8/0.8/0.2 in a random
    order (p=0.8), grayscale (p=0.2), Gaussian blur with sigma in [0.1, 2] (p=0.5),
    ImageNet normalisation.
    """

    def __init__(
        self,
        crops: Sequence[CropGroup | Mapping[str, object]],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        chunked: bool | None = None,
    ) -> None:
        self.crops = tuple(as_crop_group(g, i) for i, g in enumerate(crops))
        if not self.crops:
            raise ValueError("crops=() is invalid: at least one crop group")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.chunked = chunked
        self._scaled: dict[str, tuple[Tensor, Tensor]] = {}  # per device: the normalisation as a multiply-add

    @property
    def sizes(self) -> tuple[int, ...]:
        """The size of each output view, in order."""
        return tuple(g.size for g in self.crops for _ in range(g.count))

    def __call__(self, images: Sequence[Tensor | Sequence[Tensor]], generator: torch.Generator | None = None
                 ) -> list[Tensor]:
        """Every view of every image: ``sum(count)`` tensors of shape ``B x 3 x size x size``.

        Args:
            images: decoded ``3 x H x W`` uint8 images (grayscale ``1 x H x W`` is expanded),
                all on the same device. An image given as a tuple is its renderings (the same object drawn on
                other backgrounds, trainers/data/files.py): view ``v`` is cut from rendering ``v mod n``, so the
                two global views come from different renderings. The crop boxes and photometric draws do not
                depend on it.
            generator: CPU generator for all random parameters (reproducible augmentation).
        """
        if len(images) == 0:
            raise ValueError("MultiCropAugment: no images to augment")
        sets = [tuple(_rgb(im) for im in (item if isinstance(item, (tuple, list)) else (item,))) for item in images]
        n = len(sets)
        chunked = self.chunked if self.chunked is not None else sets[0][0].device.type == "cpu"
        layers = max(len(s) for s in sets)
        # view v's source images: rendering v mod n of each image (its only one without renderings)
        sources = [[s[r % len(s)] for s in sets] for r in range(layers)]
        groups = [group for group in self.crops for _ in range(group.count)]
        views = len(groups)
        # every view's boxes and draws at once, a few operations for the whole batch (none per view or image)
        heights = torch.tensor([s[0].shape[1] for s in sets]).repeat(views)
        widths = torch.tensor([s[0].shape[2] for s in sets]).repeat(views)
        scale = torch.tensor([[g.min_scale, g.max_scale] for g in groups for _ in range(n)], dtype=torch.float64)
        boxes = random_resized_crop_boxes(heights, widths, (scale[:, :1], scale[:, 1:]), generator)
        draws = Draws.sample(views * n, generator)
        if chunked:
            # the CPU (no launch overhead per operation) keeps the per-image uint8 resize, 3.5x faster there than
            # roi_align over floats, and its cache-sized windows
            return [self._view_chunked(crop_each(sources[v % layers], b, g.size, d.flip), d)
                    for v, (g, b, d) in enumerate(zip(groups, boxes.chunk(views), draws.split(views)))]
        # accelerators: the batch stacked once for every view, each view's crops in one roi_align, its photometric
        # ops on a fixed schedule: the operations a view issues do not grow with the batch
        device = sources[0][0].device
        batches = [stack_images(layer).float().div_(255.0) for layer in sources]
        plans = ViewPlan.build(draws, tuple(g.size for g in groups), device)
        rois = _rois(boxes, views, device)
        return [self._photometric(self.crop(batches[v % layers], b, g.size, plan.flip, rois[v]), plan)
                for v, (g, b, plan) in enumerate(zip(groups, boxes.chunk(views), plans))]

    def crop(self, batch: Tensor, boxes: Tensor, size: int, flip: Tensor, rois: Tensor | None = None) -> Tensor:
        """Every image's crop of one view, resized and flipped: :func:`crop_resize` (``bench/dispatch.py`` swaps in
        the per-image path it replaced, to measure both in one run)."""
        return crop_resize(batch, boxes, size, flip, rois)

    def _normalisation(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(x - mean) / std`` as one multiply-add, ``(shift, scale)`` of shape ``(1, 3, 1, 1)``, made once per
        device."""
        key = str(device)
        if key not in self._scaled:
            mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
            self._scaled[key] = (-mean / std, 1.0 / std)
        return self._scaled[key]

    def _view_batched(self, x: Tensor, d: "Draws") -> Tensor:
        """One view from its crops ``x`` (0..255) and draws, whole-batch ops (accelerators)."""
        (plan,) = ViewPlan.build(d, (x.shape[-1],), x.device)
        return self._photometric(x.div(255.0), plan)

    def _photometric(self, x: Tensor, plan: ViewPlan) -> Tensor:
        """Jitter, grayscale, blur (:func:`apply_plan`) and normalisation of one view's crops (in [0, 1])."""
        shift, scale = self._normalisation(x.device)
        return torch.addcmul(shift, apply_plan(x, plan), scale)

    def _view_chunked(self, crops: Tensor, d: "Draws") -> Tensor:
        """One view from its crops (0..255), cache-sized windows of a sorted batch (CPU).

        The crops are sorted by (blur, jitter order) (one ``index_select``), so samples sharing a
        jitter order are contiguous and the blurred ones form the tail. Each window then runs every
        photometric op while it is in cache and is normalised straight into its images' rows of the
        output (no un-sorting pass).
        """
        device = crops.device
        n = crops.shape[0]
        key = d.blur.long() * (NO_JITTER + 1) + torch.where(d.jitter, d.orders, NO_JITTER)
        perm = torch.argsort(key, stable=True)
        rows = perm.tolist()  # sorted position i holds image rows[i]
        keys, blurred = key[perm].tolist(), d.blur[perm].tolist()
        params, sigma, gray = d.params[perm].to(device), d.sigma[perm], d.gray[perm]
        x = crops.index_select(0, perm.to(device))
        out = torch.empty(x.shape, dtype=torch.float32, device=device)
        shift, scale = (t[0] for t in self._normalisation(device))
        step = max(1, CPU_CHUNK_ELEMENTS // x[0].numel())
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            chunk = x[lo:hi].mul_(1.0 / 255.0).clamp_(0.0, 1.0)
            for start, stop, k in _runs(keys[lo:hi]):
                if k % (NO_JITTER + 1) == NO_JITTER:
                    continue
                jittered = _apply_jitter(chunk[start:stop], params[lo + start : lo + stop],
                                         JITTER_ORDERS[k % (NO_JITTER + 1)])
                if stop - start == hi - lo:
                    chunk = jittered
                else:
                    chunk[start:stop] = jittered
            gray_rows = torch.nonzero(gray[lo:hi]).squeeze(1)
            if gray_rows.numel() == hi - lo:
                # Written back into the chunk, not kept as an expand() view of the luma: the blur
                # below writes into the chunk's tail, and a view whose three channels share memory
                # cannot be written to. No allocation (the luma is a new tensor, read before the copy).
                chunk.copy_(_gray(chunk).expand_as(chunk))
            elif gray_rows.numel():
                gray_rows = gray_rows.to(device)
                chunk.index_copy_(0, gray_rows, _gray(chunk.index_select(0, gray_rows)).expand(-1, 3, -1, -1))
            first_blur = blurred[lo:hi].index(True) if True in blurred[lo:hi] else hi - lo  # blurred rows: the tail
            if first_blur == 0:
                chunk = gaussian_blur(chunk, sigma[lo:hi].to(device))
            elif first_blur < hi - lo:
                chunk[first_blur:] = gaussian_blur(chunk[first_blur:], sigma[lo + first_blur : hi].to(device))
            for i in range(hi - lo):
                torch.addcmul(shift, chunk[i], scale, out=out[rows[lo + i]])
        return out

def _rois(boxes: Tensor, views: int, device: torch.device) -> tuple[Tensor, ...]:
    """roi_align's boxes ``(index, x1, y1, x2, y2)`` (pixel edges) per view, from ``(views * n, 4)`` boxes
    ``(top, left, height, width)``; one copy to ``device`` for all views."""
    n = boxes.shape[0] // views
    top, left, h, w = boxes.to(torch.float32).unbind(1)
    index = torch.arange(n, dtype=torch.float32).repeat(views)
    return torch.stack([index, left, top, left + w, top + h], dim=1).view(views, n, 5).to(device).unbind(0)


def _rgb(image: Tensor) -> Tensor:
    """A decoded image as ``3 x H x W`` uint8 (grayscale expanded), or a ValueError saying what it got."""
    if image.dim() == 3 and image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"MultiCropAugment expects 3 x H x W uint8 images, got {tuple(image.shape)} {image.dtype}")
    return image


def crop_each(images: Sequence[Tensor], boxes: Tensor, size: int, flip: Tensor) -> Tensor:
    """The CPU's crops: each image's box resized on its own with the antialiased (triangle) filter, as float 0..255.

    On a CPU an operation costs no kernel launch, and the uint8 antialiased resize is several times faster there
    than :func:`crop_resize`'s roi_align over a float batch (``bench/dispatch.py``)."""
    return torch.cat([_crop(images[j], boxes[j], size, bool(flip[j])) for j in range(len(images))]).float()


def _crop(image: Tensor, box: Tensor, size: int, flip: bool) -> Tensor:
    """One ``1 x 3 x size x size`` crop, resized with antialiasing (uint8 on CPU, float elsewhere)."""
    top, left, h, w = box.tolist()
    patch = image[:, top : top + h, left : left + w].unsqueeze(0)
    if patch.device.type != "cpu":
        patch = patch.float()  # uint8 antialiased resize has a fast kernel on CPU only
    patch = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return patch.flip(-1) if flip else patch


def stack_images(images: Sequence[Tensor]) -> Tensor:
    """``(n, 3, H, W)`` uint8: one ``stack`` when the images share a size (the sample sets do), else zero-padded to the
    largest (a crop box never reaches the padding: boxes are drawn inside each image's own size)."""
    h, w = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
    if all(im.shape[1] == h and im.shape[2] == w for im in images):
        return torch.stack(list(images))
    out = images[0].new_zeros((len(images), 3, h, w))
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
    return out


def crop_resize(batch: Tensor, boxes: Tensor, size: int, flip: Tensor, rois: Tensor | None = None) -> Tensor:
    """Every image's box resized to ``size x size`` in one ``roi_align``, mirrored where ``flip``; values as ``batch``.

    Args:
        batch: ``(n, 3, H, W)`` float images.
        boxes: ``(n, 4)`` int ``(top, left, height, width)`` (:func:`random_resized_crop_boxes`).
        size: the view's side.
        flip: ``(n,)`` bool (or ``(n, 1, 1, 1)``).
        rois: the boxes as roi_align takes them on ``batch``'s device, when already made (:func:`_rois`).
    """
    if rois is None:
        (rois,) = _rois(boxes, 1, batch.device)
    # sampling_ratio -1: ceil(box / size) samples per output pixel and axis, averaged (a box filter when shrinking)
    x = roi_align(batch, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    flip = flip.to(batch.device)
    return torch.where(flip if flip.dim() == 4 else flip.view(-1, 1, 1, 1), x.flip(-1), x)


__all__ = [
    "CPU_CHUNK_ELEMENTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiCropAugment",
    "crop_each",
    "crop_resize",
    "random_resized_crop_boxes",
    "stack_images",
]
