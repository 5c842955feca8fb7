"""Multi-crop augmentation on decoded uint8 tensors: every op batched over the view, none per image.

The reference (``src/multicropdataset.py``) runs, per image and per crop, torchvision's v1
transforms on a PIL image: RandomResizedCrop, horizontal flip, colour jitter (0.8 strength,
p=0.8), grayscale (p=0.2), Gaussian blur (radius 0.1-2, p=0.5), ToTensor, Normalize. Here each
image is decoded once. On an accelerator (the whole-batch path) the batch is stacked once
(zero-padded where sizes differ) and each view cuts and resizes every image's crop in one
``torchvision.ops.roi_align`` over the batch's boxes (as DALI and kornia batch their crops) and
flips with one ``where``; its photometric ops run on a fixed schedule (:data:`JITTER_STAGES`: every
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

import contextlib
import functools
import itertools
import math
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from trainers.swav.config import CropGroup, as_crop_group

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's RandomResizedCrop aspect-ratio range and number of tries.
RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10

# Colour distortion of strength s = 1 as in the SimCLR/SwAV ``get_color_distortion``.
JITTER_STRENGTH = 0.8  # brightness, contrast and saturation factors in [1 - 0.8, 1 + 0.8]
HUE_STRENGTH = 0.2  # hue shift in [-0.2, 0.2] of a full turn
JITTER_P = 0.8
GRAYSCALE_P = 0.2
FLIP_P = 0.5
BLUR_P = 0.5
BLUR_SIGMA = (0.1, 2.0)  # the reference's PILRandomGaussianBlur radius range, in pixels

# ITU-R 601 luma, as PIL's convert("L") and torchvision's rgb_to_grayscale.
LUMA = (0.299, 0.587, 0.114)


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


def _gray(x: Tensor) -> Tensor:
    """Luma of a ``(n, 3, h, w)`` float batch, ``(n, 1, h, w)``."""
    if x.device.type == "cpu":
        # A 1x1 convolution: one kernel, about 2x faster than the weighted sum on CPU.
        return F.conv2d(x, torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1))
    # Elsewhere the weighted sum (a GPU convolution may run in TF32).
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Per-sample brightness: ``x * factor`` clipped to [0, 1] (``factor``: ``(n,)``)."""
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Per-sample contrast: blend with the image's mean luma, clipped to [0, 1]."""
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    f = factor.view(-1, 1, 1, 1)
    return (x * f).add_(mean * (1.0 - f)).clamp_(0.0, 1.0)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Per-sample saturation: blend with the grayscale image, clipped to [0, 1]."""
    # lerp(gray, x, f) = f * x + (1 - f) * gray in one pass.
    return torch.lerp(_gray(x).expand_as(x), x, factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Per-sample hue rotation by ``shift`` (fraction of a turn, ``(n,)``) in HSV space.

    Matches ``torchvision.transforms.functional.adjust_hue`` (to float rounding). Value and
    chroma are unchanged by a hue shift, so only the hue is computed; RGB is rebuilt as
    ``min + chroma * ramp_c(h)`` with the piecewise-linear HSV ramps
    ``R = |6h - 3| - 1``, ``G = 2 - |6h - 2|``, ``B = 2 - |6h - 4|`` clipped to [0, 1].
    Written with masks and in-place arithmetic rather than ``torch.where`` chains, which
    are several times slower on CPU.
    """
    r, g, b = x.unbind(1)
    maxc = x.amax(dim=1)
    minc = x.amin(dim=1)
    chroma = maxc - minc
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~(is_r | is_g)
    # 6h * chroma: (g - b) if red is the largest, 2 chroma + (b - r) if green, 4 chroma + (r - g) if blue.
    hue = (g - b).mul_(is_r)
    hue.addcmul_((b - r).add_(chroma, alpha=2.0), is_g)
    hue.addcmul_((r - g).add_(chroma, alpha=4.0), is_b)
    hue.div_(chroma.clamp_min(1e-12))  # grey pixels (chroma 0) keep hue 0; their ramp is multiplied by 0
    hue.add_((6.0 * shift).view(-1, 1, 1))
    hue.sub_(torch.floor(hue * (1.0 / 6.0)).mul_(6.0))  # wrap into [0, 6)
    out = torch.empty_like(x)
    torch.sub(hue, 3.0, out=out[:, 0]).abs_().sub_(1.0)
    torch.sub(hue, 2.0, out=out[:, 1]).abs_().neg_().add_(2.0)
    torch.sub(hue, 4.0, out=out[:, 2]).abs_().neg_().add_(2.0)
    out.clamp_(0.0, 1.0)
    return out.mul_(chroma.unsqueeze(1)).add_(minc.unsqueeze(1))


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-sample separable Gaussian blur (``sigma``: ``(n,)`` pixels), edges replicated as PIL does.

    The kernel covers 3 sigma of the largest sigma in the batch. On CPU each pass is a sum of
    shifted copies weighted per sample (fast on cache-sized inputs); elsewhere one grouped
    convolution per pass.
    """
    n, c, h, w = x.shape
    radius = max(1, min(int(math.ceil(3.0 * float(sigma.max()))), max(h, w) - 1))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1).to(x.dtype)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (n, 2r+1)
    if x.device.type == "cpu":
        weights = kernel.view(n, 1, 1, 1, -1)
        padded = F.pad(x, (radius, radius, 0, 0), mode="replicate")
        rows = padded[..., 0:w] * weights[..., 0]
        for t in range(1, 2 * radius + 1):
            rows.addcmul_(padded[..., t : t + w], weights[..., t])
        padded = F.pad(rows, (0, 0, radius, radius), mode="replicate")
        out = padded[..., 0:h, :] * weights[..., 0]
        for t in range(1, 2 * radius + 1):
            out.addcmul_(padded[..., t : t + h, :], weights[..., t])
        return out
    kernel = kernel.repeat_interleave(c, dim=0)  # one kernel per (sample, channel)
    flat = x.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


# The 24 orders in which ColorJitter can apply its ops (brightness, contrast, saturation, hue).
JITTER_ORDERS: tuple[tuple[int, ...], ...] = tuple(itertools.permutations(range(4)))
JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
NO_JITTER = len(JITTER_ORDERS)  # the jitter-order key of samples that are not jittered

# On CPU the photometric ops run on windows of about this many floats (1 MiB), so a window
# stays in cache through all of its ops; on a whole 224-px batch every op would stream from
# memory (measured: about 2x slower).
CPU_CHUNK_ELEMENTS = 1 << 18


def _apply_jitter(x: Tensor, params: Tensor, order: Sequence[int]) -> Tensor:
    """Apply the four jitter ops to ``x`` in ``order``; ``params``: ``(n, 4)`` (three factors, hue shift)."""
    for op_index in order:
        x = JITTER_OPS[op_index](x, params[:, op_index])
    return x


def _stage_table() -> Tensor:
    """``(25, 6)``: the brightness/contrast/saturation op (0, 1, 2; 3 = none) each jitter order applies in each of six
    rounds around its one hue step (:data:`JITTER_STAGES`); the last row is the order of a sample not jittered."""
    rows = []
    for order in JITTER_ORDERS:
        at = order.index(3)
        before, after = list(order[:at]), list(order[at + 1 :])
        rows.append([NO_OP] * (3 - len(before)) + before + after + [NO_OP] * (3 - len(after)))
    rows.append([NO_OP] * BCS_ROUNDS)
    return torch.tensor(rows)


# The accelerator's jitter runs a fixed schedule whatever the batch: three brightness/contrast/saturation rounds, one
# hue step, three more rounds. A sample's order puts the ops it applies before its hue into rounds 0-2 (right-aligned)
# and those after into rounds 3-5; its other rounds are the identity (blend weight 1, exact). The same images as
# applying the order's four ops in turn, in a number of operations that does not depend on the batch or its orders.
NO_OP = 3
BCS_ROUNDS = 6
HUE_AFTER_ROUND = 2
JITTER_STAGES = _stage_table()


def color_jitter(x: Tensor, params: Tensor, orders: Tensor, apply: Tensor) -> Tensor:
    """torchvision ``ColorJitter`` with per-sample factors and a per-sample op order, on the whole batch at once.

    The accelerator's schedule (:data:`JITTER_STAGES`: six blend rounds around one hue step, identity where a sample's
    order has nothing to do). (The CPU path of :class:`MultiCropAugment` instead sorts samples by order and runs each
    op once per sample.)

    Args:
        x: ``(n, 3, h, w)`` float images in [0, 1].
        params: ``(n, 4)``: brightness, contrast and saturation factors, hue shift.
        orders: ``(n,)`` index into :data:`JITTER_ORDERS`.
        apply: ``(n,)`` bool, which samples are jittered at all (RandomApply).

    Returns:
        The jittered batch.
    """
    n = x.shape[0]
    ones = torch.zeros(n, dtype=torch.bool)
    draws = _Draws(ones, apply.cpu(), params.cpu(), orders.cpu(), ones, ones, torch.ones(n))
    (plan,) = _ViewPlan.build(draws, (x.shape[-1],), x.device)
    return _jitter(x, plan, _constants(x.device))


def _luma(x: Tensor, c: "_Constants") -> Tensor:
    """Luma of a ``(n, 3, h, w)`` batch, ``(n, 1, h, w)``: one 1x1 convolution (in full float32 on a GPU:
    :func:`_float32_convolutions`)."""
    return F.conv2d(x, c.luma)


@contextlib.contextmanager
def _float32_convolutions(device: torch.device) -> Iterator[None]:
    """cuDNN convolutions in full float32 inside (TF32, on by default for them, keeps 10 bits of mantissa): the luma
    and the blur stay as exact as the CPU's."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    before = cudnn.allow_tf32
    cudnn.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32 = before


def _jitter(x: Tensor, plan: "_ViewPlan", c: "_Constants") -> Tensor:
    """The colour jitter of one view on the accelerator's schedule: 6 x 6 blend operations and 19 for the hue."""
    for r in range(BCS_ROUNDS):
        # brightness blends with 0, contrast with the mean luma, saturation with the luma image; none: weight 1
        luma = _luma(x, c)
        target = torch.addcmul(plan.to_mean[r] * luma.mean(dim=(2, 3), keepdim=True), plan.to_luma[r], luma)
        x = torch.lerp(target, x, plan.weight[r]).clamp_(0.0, 1.0)
        if r == HUE_AFTER_ROUND:
            x = torch.where(plan.hue, _rotate_hue(x, plan.hue_shift6, c), x)
    return x


def _rotate_hue(x: Tensor, shift6: Tensor, c: "_Constants") -> Tensor:
    """:func:`adjust_hue` with every channel in one tensor: 18 operations whatever the batch (``shift6``: six times
    the shift, ``(n, 1, 1, 1)``). A tie between the largest channels gives the same hue whichever is taken."""
    maxc, largest = x.max(dim=1, keepdim=True)
    minc = x.amin(dim=1, keepdim=True)
    chroma = maxc - minc
    # 6h * chroma: (g - b) if red is the largest, 2 chroma + (b - r) if green, 4 chroma + (r - g) if blue
    hue = (x.roll(-1, 1) - x.roll(-2, 1)).gather(1, largest).addcmul_(largest, chroma, value=2.0)
    hue = hue.div_(chroma.clamp_min(1e-12)).add_(shift6).remainder_(6.0)
    ramp = torch.addcmul(c.ramp_offset, (hue - c.ramp_centre).abs_(), c.ramp_sign).clamp_(0.0, 1.0)
    return torch.addcmul(minc, chroma, ramp)


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
        draws = _Draws.sample(views * n, generator)
        if chunked:
            # the CPU (no launch overhead per operation) keeps the per-image uint8 resize, 3.5x faster there than
            # roi_align over floats, and its cache-sized windows
            return [self._view_chunked(crop_each(sources[v % layers], b, g.size, d.flip), d)
                    for v, (g, b, d) in enumerate(zip(groups, boxes.chunk(views), draws.split(views)))]
        # accelerators: the batch stacked once for every view, each view's crops in one roi_align, its photometric
        # ops on a fixed schedule: the operations a view issues do not grow with the batch
        device = sources[0][0].device
        batches = [stack_images(layer).float().div_(255.0) for layer in sources]
        plans = _ViewPlan.build(draws, tuple(g.size for g in groups), device)
        rois = _rois(boxes, views, device)
        return [self._photometric(self.crop(batches[v % layers], b, g.size, plan.flip, rois[v]), plan)
                for v, (g, b, plan) in enumerate(zip(groups, boxes.chunk(views), plans))]

    def crop(self, batch: Tensor, boxes: Tensor, size: int, flip: Tensor, rois: Tensor | None = None) -> Tensor:
        """Every image's crop of one view, resized and flipped: :func:`crop_resize` (``bench/dispatch.py`` swaps in
        the per-image path it replaced, to measure both in one run)."""
        return crop_resize(batch, boxes, size, flip, rois)

    def _normalisation(self, device: torch.device) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return mean, std

    def _view_batched(self, x: Tensor, d: "_Draws") -> Tensor:
        """One view from its crops ``x`` (0..255) and draws, whole-batch ops (accelerators)."""
        (plan,) = _ViewPlan.build(d, (x.shape[-1],), x.device)
        return self._photometric(x.div(255.0), plan)

    def _photometric(self, x: Tensor, plan: "_ViewPlan") -> Tensor:
        """Jitter, grayscale, blur and normalisation of one view's crops (in [0, 1]): about 70 operations whatever
        the batch, every sample through each (identity where its draws say no; ``where`` keeps them exact)."""
        c = _constants(x.device)
        with _float32_convolutions(x.device):
            x = _jitter(x, plan, c)
            x = torch.where(plan.gray, _luma(x, c), x)
            if plan.kernels is not None:
                across, down = plan.kernels
                n, channels, h, w = x.shape
                r = across.shape[-1] // 2
                flat = F.pad(x.reshape(1, n * channels, h, w), (r, r, r, r), mode="replicate")
                flat = F.conv2d(F.conv2d(flat, across, groups=n * channels), down, groups=n * channels)
                x = torch.where(plan.blur, flat.view(n, channels, h, w), x)
        key = str(x.device)
        if key not in self._scaled:
            mean, std = self._normalisation(x.device)
            self._scaled[key] = (-mean / std, 1.0 / std)
        shift, scale = self._scaled[key]
        return torch.addcmul(shift, x, scale)  # (x - mean) / std as one multiply-add

    def _view_chunked(self, crops: Tensor, d: "_Draws") -> Tensor:
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
        mean, std = self._normalisation(device)
        scale, shift = 1.0 / std[0], -mean[0] / std[0]  # (x - mean) / std as one multiply-add
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


class _Draws:
    """The random choices of one view, drawn on the CPU generator in a fixed order (same on any device)."""

    def __init__(self, flip: Tensor, jitter: Tensor, params: Tensor, orders: Tensor, gray: Tensor,
                 blur: Tensor, sigma: Tensor) -> None:
        self.flip, self.jitter, self.params, self.orders = flip, jitter, params, orders
        self.gray, self.blur, self.sigma = gray, blur, sigma

    @classmethod
    def sample(cls, n: int, generator: torch.Generator | None) -> "_Draws":
        u = torch.rand(n, 9, generator=generator)
        coins = torch.tensor([FLIP_P, JITTER_P, GRAYSCALE_P, BLUR_P])
        flip, jitter, gray, blur = (u[:, :4] < coins).unbind(1)
        lo, hi = 1.0 - JITTER_STRENGTH, 1.0 + JITTER_STRENGTH
        # brightness, contrast, saturation factors uniform in [lo, hi]; the hue shift uniform in +-HUE_STRENGTH
        params = torch.addcmul(torch.tensor([lo, lo, lo, -HUE_STRENGTH]), u[:, 4:8],
                               torch.tensor([hi - lo, hi - lo, hi - lo, 2.0 * HUE_STRENGTH]))
        sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[:, 8]
        orders = torch.randint(0, len(JITTER_ORDERS), (n,), generator=generator)
        return cls(flip, jitter, params, orders, gray, blur, sigma)

    def split(self, views: int) -> list["_Draws"]:
        """Per view (consecutive equal parts), for the draws of ``views`` views sampled at once."""
        fields = (self.flip, self.jitter, self.params, self.orders, self.gray, self.blur, self.sigma)
        return [_Draws(*parts) for parts in zip(*(f.chunk(views) for f in fields))]


class _Constants:
    """Small per-device constants of the accelerator's photometric ops, made once per device."""

    def __init__(self, device: torch.device) -> None:
        def column(values: Sequence[float]) -> Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)

        self.luma = column(LUMA)  # as a 1x1 convolution's weight: 3 channels in, 1 out
        # the HSV ramps of R, G, B as offset + sign * |6h - centre|: |6h - 3| - 1, 2 - |6h - 2|, 2 - |6h - 4|
        self.ramp_centre, self.ramp_sign, self.ramp_offset = column((3, 2, 4)), column((1, -1, -1)), column((-1, 2, 2))


@functools.lru_cache(maxsize=16)
def _constants(device: torch.device) -> _Constants:
    return _Constants(device)


class _ViewPlan:
    """One view's photometric choices as device tensors of shape ``(n, 1, 1, 1)``: per blend round its weight and
    whether it blends with the luma image or its mean (:data:`JITTER_STAGES`), six times the hue shift, the masks
    (jittered, grayscale, blurred, mirrored) and the blur kernels (None when no sample of the view is blurred)."""

    def __init__(self, floats: Sequence[Tensor], masks: Sequence[Tensor],
                 kernels: tuple[Tensor, Tensor] | None) -> None:
        self.weight = floats[:BCS_ROUNDS]
        self.to_luma = floats[BCS_ROUNDS : 2 * BCS_ROUNDS]
        self.to_mean = floats[2 * BCS_ROUNDS : 3 * BCS_ROUNDS]
        self.hue_shift6 = floats[3 * BCS_ROUNDS]
        self.hue, self.gray, self.blur, self.flip = masks
        self.kernels = kernels

    @classmethod
    def build(cls, d: _Draws, sizes: Sequence[int], device: torch.device) -> list["_ViewPlan"]:
        """The plans of ``len(sizes)`` views (of those sizes) from their draws (consecutive rows per view): a few
        operations on the host and two copies to ``device`` for all of them."""
        views = len(sizes)
        n = d.flip.shape[0] // views
        stages = JITTER_STAGES[torch.where(d.jitter, d.orders, NO_JITTER)]  # (N, 6): the op of each round
        factors = torch.cat([d.params[:, :3], torch.ones(n * views, 1)], dim=1)  # no op: weight 1
        hue_shift6 = (6.0 * d.params[:, 3:]).where(d.jitter.unsqueeze(1), 0.0)
        floats = torch.cat([factors.gather(1, stages), (stages == 2).float(), (stages == 1).float(), hue_shift6], 1)
        masks = torch.stack([d.jitter, d.gray, d.blur, d.flip], dim=1)
        per_view = [_by_view(t, views, device) for t in (floats, masks)]
        width = 3 * BCS_ROUNDS + 1
        kernels = _blur_kernels(d, sizes, device)
        return [cls(per_view[0][v * width : (v + 1) * width], per_view[1][4 * v : 4 * v + 4], kernels[v])
                for v in range(views)]


def _by_view(table: Tensor, views: int, device: torch.device) -> tuple[Tensor, ...]:
    """``(views * n, k)`` host rows -> ``views * k`` device tensors ``(n, 1, 1, 1)``, view-major (one copy)."""
    n = table.shape[0] // views
    return table.view(views, n, -1).transpose(1, 2).reshape(-1, n, 1, 1, 1).to(device).unbind(0)


def _blur_kernels(d: _Draws, sizes: Sequence[int], device: torch.device) -> list[tuple[Tensor, Tensor] | None]:
    """Per view, its separable Gaussian kernels ``(n * 3, 1, 1, k)`` and ``(n * 3, 1, k, 1)`` (one per sample and
    channel), or None when none of its samples is blurred. The kernel covers 3 sigma of the largest blurred sigma,
    at most the view's side; one build per distinct radius."""
    views = len(sizes)
    n = d.flip.shape[0] // views
    any_blur = d.blur.view(views, n).any(dim=1).tolist()
    if not any(any_blur):
        return [None] * views
    reach = math.ceil(3.0 * float(d.sigma.where(d.blur, 0.0).max()))
    radii = [max(1, min(reach, size - 1)) for size in sizes]
    out: list[tuple[Tensor, Tensor] | None] = [None] * views
    for radius in sorted(set(radii)):
        taps = -0.5 * torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2
        kernel = torch.softmax(taps / d.sigma.square().unsqueeze(1), dim=1)  # exp(-t^2 / 2 sigma^2), summing to 1
        kernel = kernel.view(views, n, 1, -1).expand(-1, -1, 3, -1)
        kernel = kernel.reshape(views, n * 3, 1, 1, -1).to(device)
        for v, (across, down) in enumerate(zip(kernel.unbind(0), kernel.transpose(-1, -2).unbind(0))):
            if radii[v] == radius and any_blur[v]:
                out[v] = (across, down)
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
    "JITTER_ORDERS",
    "MultiCropAugment",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "color_jitter",
    "crop_each",
    "crop_resize",
    "gaussian_blur",
    "random_resized_crop_boxes",
    "stack_images",
]
