"""A view's random draws and its photometric ops: colour jitter, grayscale, Gaussian blur, with per-sample parameters.

The reference (``src/multicropdataset.py``) applies, per image and per crop, torchvision's v1 ``ColorJitter(0.8,
0.8, 0.8, 0.2)`` in a random order (p=0.8), ``RandomGrayscale`` (p=0.2) and PIL's Gaussian blur with radius
0.1-2 (p=0.5), after a horizontal flip (p=0.5). Here each op runs on a whole view's batch with every sample's own
parameters, drawn with those distributions (:class:`Draws`, for all views of a batch at once).

Two schedules give the same images:

* the CPU's (:mod:`trainers.swav.augment`'s windowed path): samples sorted by jitter order, each op once per
  sample (:data:`JITTER_OPS` in the order's sequence), grayscale and blur on the selected rows only;
* the accelerator's (:class:`ViewPlan` and :func:`apply_plan`): a fixed schedule whatever the batch, every sample
  through every step, the identity where its draws say no: six brightness/contrast/saturation blend rounds
  around one hue step (:data:`JITTER_STAGES`), then grayscale and blur through ``where``. About 70 operations
  per view on the device, plus about 115 per batch for all views' draws and plans and their one copy to the
  device (``bench/dispatch.py`` counts them).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

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


def _gray(x: Tensor) -> Tensor:
    """Luma of a ``(n, 3, h, w)`` float batch, ``(n, 1, h, w)``: :func:`_luma` with the device's constants, in full
    float32 on a GPU."""
    with _float32_convolutions(x.device):
        return _luma(x, _constants(x.device))


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
    no = torch.zeros(n, dtype=torch.bool)
    draws = Draws(no, apply.cpu(), params.cpu(), orders.cpu(), no, no, torch.ones(n))
    (plan,) = ViewPlan.build(draws, (x.shape[-1],), x.device)
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


def _jitter(x: Tensor, plan: "ViewPlan", c: "_Constants") -> Tensor:
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


class Draws:
    """The random choices of one view, drawn on the CPU generator in a fixed order (same on any device)."""

    def __init__(self, flip: Tensor, jitter: Tensor, params: Tensor, orders: Tensor, gray: Tensor,
                 blur: Tensor, sigma: Tensor) -> None:
        self.flip, self.jitter, self.params, self.orders = flip, jitter, params, orders
        self.gray, self.blur, self.sigma = gray, blur, sigma

    @classmethod
    def sample(cls, n: int, generator: torch.Generator | None) -> "Draws":
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

    def split(self, views: int) -> list["Draws"]:
        """Per view (consecutive equal parts), for the draws of ``views`` views sampled at once."""
        fields = (self.flip, self.jitter, self.params, self.orders, self.gray, self.blur, self.sigma)
        return [Draws(*parts) for parts in zip(*(f.chunk(views) for f in fields))]


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


class ViewPlan:
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
    def build(cls, d: Draws, sizes: Sequence[int], device: torch.device) -> list["ViewPlan"]:
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


def _blur_kernels(d: Draws, sizes: Sequence[int], device: torch.device) -> list[tuple[Tensor, Tensor] | None]:
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


def apply_plan(x: Tensor, plan: ViewPlan) -> Tensor:
    """Jitter, grayscale and blur of one view's crops ``x`` (in [0, 1]) on the accelerator's schedule: about 70
    operations whatever the batch, every sample through each (identity where its draws say no; ``where`` and
    blend weight 1 keep those samples exact)."""
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
    return x


__all__ = [
    "JITTER_ORDERS",
    "JITTER_STAGES",
    "Draws",
    "ViewPlan",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_plan",
    "color_jitter",
    "gaussian_blur",
]
