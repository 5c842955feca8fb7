"""Mixed precision for both trainers: the autocast dtype, the gradient scaler, one guarded optimiser step, and the
non-finite-loss guard.

The reference trains with apex AMP at ``opt_level="O1"`` (``--use_fp16 true``): float16
autocast with dynamic loss scaling, starting at 2**16, halving the scale and skipping the step
after a gradient overflow, doubling it after 2000 clean steps — ``torch.amp.GradScaler``'s
defaults. The study this project reproduces credits that loss scaling with keeping runs from
collapsing, so ``amp_dtype="float16"`` means float16 autocast *with* a GradScaler on every
device, the CPU included (PyTorch supports both there), and the mixed-precision axis tests the
paper's mechanism wherever it runs. ``amp_dtype="bfloat16"`` is the other option: bfloat16
has float32's exponent range, so it runs without a scaler (and is much faster than float16 on
CPUs, whose float16 convolution backward is slow).

Detection fine-tuning follows torchvision's detection reference (``--amp``): float16 autocast with a GradScaler
on CUDA; on a CPU it takes bfloat16, since float16 there is slow and adds nothing the detection axes test
(:func:`trainers.detection.config.DetectionConfig.amp_dtype_on`).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Iterable

import torch
from torch import Tensor, nn



class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite, so the trial is marked failed."""


# amp_dtype name -> autocast dtype. Only float16 gets loss scaling.
AMP_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def autocast(device: torch.device, amp: bool, amp_dtype: str) -> ContextManager[Any]:
    """The forward pass's mixed-precision context (a no-op when ``amp`` is off).

    Args:
        device: the training device (its type picks the autocast backend).
        amp: mixed precision on or off.
        amp_dtype: ``"float16"`` or ``"bfloat16"`` (see :data:`AMP_DTYPES`).
    """
    if not amp:
        return nullcontext()
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype={amp_dtype!r} is invalid: choose one of {', '.join(AMP_DTYPES)}")
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp_dtype])


def grad_scaler(device: torch.device, amp: bool, amp_dtype: str) -> torch.amp.GradScaler:
    """A dynamic loss scaler, enabled for float16 mixed precision on any device.

    Disabled (a pass-through) without mixed precision and for bfloat16, which needs no scaling.
    """
    return torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == "float16")


def check_finite(loss: Tensor, epoch: int, step: int, what: str = "loss") -> None:
    """Raise :class:`NonFiniteLossError` naming the epoch and step when ``loss`` is NaN/inf."""
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(f"non-finite {what} ({loss.item()}) at epoch {epoch}, step {step}")


def gradients_finite(params: Iterable[nn.Parameter]) -> bool:
    """True when no gradient holds inf or nan (one device sync)."""
    checks = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(checks).all()) if checks else True


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _clip(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(_optimizer_params(optimizer), max_norm)


def backward_and_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    drop_grads: Iterable[nn.Parameter] = (),
    skip_non_finite: bool = False,
    clip_grad_norm: float = 0.0,
) -> bool:
    """Backpropagate ``loss`` and take one optimiser step, unless the gradients overflowed.

    With an enabled ``scaler`` (float16): the loss is multiplied by the scale before
    ``backward``; the gradients are unscaled (``scaler.unscale_``) *before* the optimiser sees
    them, so LARS's trust ratio ``|w| / |g|`` and its weight-decay term use the true gradients;
    ``scaler.step`` skips the step when any gradient is inf/nan, and ``scaler.update`` then
    halves the scale (so a skipped step is one whose update lowered the scale). Under DDP the
    gradients are all-reduced before the check, so every process skips the same steps.

    Without a scaler, the step is taken, except that ``skip_non_finite`` (bfloat16) skips a
    step with inf/nan gradients all the same.

    Args:
        loss: the scalar loss (float32).
        optimizer: SGD or :class:`trainers.swav.optim.LARS`.
        scaler: from :func:`grad_scaler` (possibly disabled).
        drop_grads: parameters whose gradients are discarded after ``backward`` (the prototypes
            while they are frozen, as the reference).
        skip_non_finite: without an enabled scaler, skip a step whose gradients are not finite.
        clip_grad_norm: when > 0, clip the (unscaled) gradients to this total norm before the step, as
            torchvision's detection reference does with ``--clip-grad-norm``.

    Returns:
        True if the optimiser stepped, False if the step was skipped.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    for param in drop_grads:
        param.grad = None
    if scaler.is_enabled():
        scaler.unscale_(optimizer)  # explicit: nothing below may see scaled gradients
        _clip(optimizer, clip_grad_norm)
        scale_before = scaler.get_scale()
        scaler.step(optimizer)  # skipped when unscale_ found inf/nan
        scaler.update()
        return scaler.get_scale() >= scale_before  # the scale only ever drops after an overflow
    if skip_non_finite and not gradients_finite(_optimizer_params(optimizer)):
        return False
    _clip(optimizer, clip_grad_norm)
    optimizer.step()
    return True


__all__ = ["AMP_DTYPES", "NonFiniteLossError", "autocast", "backward_and_step", "check_finite", "grad_scaler",
           "gradients_finite"]
