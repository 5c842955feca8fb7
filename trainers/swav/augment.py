"""Multi-crop augmentation on decoded uint8 tensors: every op batched over the view, none per image.

The reference (``src/multicropdataset.py``) runs, per image and per crop, torchvision's v1
transforms on a PIL image: RandomResizedCrop, horizontal flip, colour jitter (0.8 strength,
p=0.8), grayscale (p=0.2), Gaussian blur (radius 0.1-2, p=0.5), ToTensor, Normalize. Here each
image is decoded once. On an accelerator (the whole-batch path) the batch is stacked once
(zero-padded where sizes differ) and each view cuts and resizes every image's crop in one
``torchvision.ops.roi_align`` over the batch's boxes (as DALI and kornia batch their crops) and
flips with one ``where``: the operations a view issues do not grow with the batch
(``bench/dispatch.py`` counts them), so a GPU is not left waiting on Python launching a kernel
per image. On the CPU (the windowed path), where an operation costs no launch, each crop is
resized on its own uint8 tensor (:func:`crop_each`, several times faster there). Either way the
photometric transforms run as tensor ops over the view's batch with per-sample random parameters.

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

import itertools
import math
from typing import Mapping, Sequence

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
    heights: Tensor, widths: Tensor, scale: tuple[float, float], generator: torch.Generator | None = None
) -> Tensor:
    """Crop boxes ``(top, left, height, width)`` drawn as torchvision's ``RandomResizedCrop.get_params``.

    Vectorised over images: each image gets 10 tries of (area fraction, log aspect ratio); the
    first try that fits is used, else the central crop clipped to the aspect-ratio range.

    Args:
        heights: ``(n,)`` image heights.
        widths: ``(n,)`` image widths.
        scale: ``(min, max)`` fraction of the image area.
        generator: source of randomness (CPU).

    Returns:
        ``(n, 4)`` int64 tensor of boxes.
    """
    n = heights.shape[0]
    h_img = heights.to(torch.float64).unsqueeze(1)
    w_img = widths.to(torch.float64).unsqueeze(1)
    u = torch.rand(n, CROP_TRIES, 4, generator=generator, dtype=torch.float64)
    area = h_img * w_img * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    top = torch.floor(u[..., 2] * (h_img - h + 1))
    left = torch.floor(u[..., 3] * (w_img - w + 1))
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # index of the first fitting try
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    h_sel, w_sel, top_sel, left_sel = pick(h), pick(w), pick(top), pick(left)

    # Fallback (no try fits): central crop with the aspect ratio clipped to RATIO.
    hh, ww = h_img.squeeze(1), w_img.squeeze(1)
    in_ratio = ww / hh
    fb_w = torch.where(in_ratio > RATIO[1], torch.round(hh * RATIO[1]), ww)
    fb_h = torch.where(in_ratio < RATIO[0], torch.round(ww / RATIO[0]), hh)
    fb_top = torch.div(hh - fb_h, 2, rounding_mode="floor")
    fb_left = torch.div(ww - fb_w, 2, rounding_mode="floor")
    ok = fits.any(dim=1)
    boxes = torch.stack(
        [
            torch.where(ok, top_sel, fb_top),
            torch.where(ok, left_sel, fb_left),
            torch.where(ok, h_sel, fb_h),
            torch.where(ok, w_sel, fb_w),
        ],
        dim=1,
    )
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


def color_jitter(x: Tensor, params: Tensor, orders: Tensor, apply: Tensor) -> Tensor:
    """torchvision ``ColorJitter`` with per-sample factors and a per-sample op order.

    Whole-batch form: in each of the four rounds every op runs on the whole batch and is kept
    (``torch.where``) only for the samples whose order puts it in that round. 4x the
    arithmetic of one pass but few, large kernels: what an accelerator wants. (The CPU path of
    :class:`MultiCropAugment` instead sorts samples by order and runs each op once per sample.)

    Args:
        x: ``(n, 3, h, w)`` float images in [0, 1].
        params: ``(n, 4)``: brightness, contrast and saturation factors, hue shift.
        orders: ``(n,)`` index into :data:`JITTER_ORDERS`.
        apply: ``(n,)`` bool, which samples are jittered at all (RandomApply).

    Returns:
        The jittered batch.
    """
    op_at_round = torch.tensor(JITTER_ORDERS)[orders.cpu()]  # (n, 4): the op each sample applies in each round
    params = params.to(x.device, x.dtype)
    apply = apply.cpu()
    for rnd in range(4):
        for op_index, op in enumerate(JITTER_OPS):
            selected = (op_at_round[:, rnd] == op_index) & apply
            if bool(selected.any()):
                mask = selected.to(x.device).view(-1, 1, 1, 1)
                x = torch.where(mask, op(x, params[:, op_index]), x)
    return x


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
        heights = torch.tensor([s[0].shape[1] for s in sets])
        widths = torch.tensor([s[0].shape[2] for s in sets])
        chunked = self.chunked if self.chunked is not None else sets[0][0].device.type == "cpu"
        layers = max(len(s) for s in sets)
        # view v's source images: rendering v mod n of each image (its only one without renderings)
        sources = [[s[r % len(s)] for s in sets] for r in range(layers)]
        # accelerators: the batch stacked once for every view, each view's crops in one roi_align; the CPU (no launch
        # overhead per operation) keeps the per-image uint8 resize, 3.5x faster there than roi_align over floats
        batches = None if chunked else [stack_images(layer).float() for layer in sources]
        views: list[Tensor] = []
        for group in self.crops:
            for _ in range(group.count):
                layer = len(views) % layers
                boxes = random_resized_crop_boxes(heights, widths, (group.min_scale, group.max_scale), generator)
                draws = _Draws.sample(len(sets), generator)
                if batches is None:
                    views.append(self._view_chunked(crop_each(sources[layer], boxes, group.size, draws.flip), draws))
                else:
                    views.append(self._view_batched(self.crop(batches[layer], boxes, group.size, draws.flip), draws))
        return views

    def crop(self, batch: Tensor, boxes: Tensor, size: int, flip: Tensor) -> Tensor:
        """Every image's crop of one view, resized and flipped: :func:`crop_resize` (``bench/dispatch.py`` swaps in
        the per-image path it replaced, to measure both in one run)."""
        return crop_resize(batch, boxes, size, flip)

    def _normalisation(self, device: torch.device) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return mean, std

    def _view_batched(self, x: Tensor, d: "_Draws") -> Tensor:
        """One view from its crops ``x`` (0..255), whole-batch ops (accelerators)."""
        device = x.device
        x = x.div(255.0).clamp_(0.0, 1.0)
        x = color_jitter(x, d.params, d.orders, d.jitter)
        rows = torch.nonzero(d.gray).squeeze(1).to(device)
        if rows.numel():
            x.index_copy_(0, rows, _gray(x.index_select(0, rows)).expand(-1, 3, -1, -1))
        rows = torch.nonzero(d.blur).squeeze(1)
        if rows.numel():
            sigma = d.sigma[rows].to(device)
            rows = rows.to(device)
            x.index_copy_(0, rows, gaussian_blur(x.index_select(0, rows), sigma))
        mean, std = self._normalisation(device)
        return x.sub_(mean).div_(std)

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
        flip = torch.rand(n, generator=generator) < FLIP_P
        jitter = torch.rand(n, generator=generator) < JITTER_P
        lo, hi = 1.0 - JITTER_STRENGTH, 1.0 + JITTER_STRENGTH
        factors = lo + (hi - lo) * torch.rand(n, 3, generator=generator)
        shifts = HUE_STRENGTH * (2.0 * torch.rand(n, 1, generator=generator) - 1.0)
        orders = torch.randint(0, len(JITTER_ORDERS), (n,), generator=generator)
        gray = torch.rand(n, generator=generator) < GRAYSCALE_P
        blur = torch.rand(n, generator=generator) < BLUR_P
        sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * torch.rand(n, generator=generator)
        return cls(flip, jitter, torch.cat([factors, shifts], dim=1), orders, gray, blur, sigma)


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


def crop_resize(batch: Tensor, boxes: Tensor, size: int, flip: Tensor) -> Tensor:
    """Every image's box resized to ``size x size`` in one ``roi_align``, mirrored where ``flip``; values as ``batch``.

    Args:
        batch: ``(n, 3, H, W)`` float images.
        boxes: ``(n, 4)`` int ``(top, left, height, width)`` (:func:`random_resized_crop_boxes`).
        size: the view's side.
        flip: ``(n,)`` bool.
    """
    n = batch.shape[0]
    b = boxes.to(batch.device, torch.float32)
    rois = torch.stack([torch.arange(n, device=batch.device, dtype=torch.float32), b[:, 1], b[:, 0],
                        b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], dim=1)  # (index, x1, y1, x2, y2), pixel edges
    # sampling_ratio -1: ceil(box / size) samples per output pixel and axis, averaged (a box filter when shrinking)
    x = roi_align(batch, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return torch.where(flip.to(batch.device).view(-1, 1, 1, 1), x.flip(-1), x)


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
