"""Optimisers for SwAV: SGD with momentum or LARS, the per-iteration learning rate, and how long
the prototypes stay frozen.

The reference (facebookresearch/swav ``main_swav.py``) wraps SGD in apex's LARC (``clip=False``,
trust coefficient 0.001) over ``model.parameters()``: every parameter, biases and BatchNorm's
affine parameters included, gets the weight decay and the trust ratio. The LARS here does the
same arithmetic on the same parameters. (Leaving the parameters with fewer than two dimensions
out of both, as SimCLR/BYOL and solo-learn do, is a different recipe: solo-learn pairs it with a
trust coefficient of 0.02 and clipping. With LARC's 0.001 and those parameters taking full-rate
steps, SwAV's projection head collapsed within a few dozen iterations on the digits study.)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

from trainers.common.schedules import warmup_cosine
from trainers.swav.config import SwAVConfig

MOMENTUM = 0.9  # as the reference
LARS_ETA = 0.001  # LARC trust coefficient in the reference
REFERENCE_BATCH = 256  # the global batch the configured learning rates are given for


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling.

    For a parameter ``w`` with gradient ``g`` in a group with ``lars=True``::

        trust = eta * |w| / (|g| + weight_decay * |w| + eps)
        d = trust * (g + weight_decay * w)    (d = g, no decay, if |w| or |g| is 0: LARC's rule)
        buf = momentum * buf + d;  w -= lr * buf

    Groups with ``lars=False`` take a plain momentum step on ``g`` (no decay, no trust ratio).

    Args:
        params: parameters or parameter groups (a group may set ``lars`` and ``weight_decay``).
        lr: learning rate.
        momentum: momentum factor.
        weight_decay: L2 penalty for adapted groups.
        eta: trust coefficient.
        eps: guards the division.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = MOMENTUM,
        weight_decay: float = 0.0,
        eta: float = LARS_ETA,
        eps: float = 1e-8,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS: invalid lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "eps": eps, "lars": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["lars"]:
                    decay = group["weight_decay"]
                    w_norm = torch.linalg.vector_norm(param)
                    g_norm = torch.linalg.vector_norm(grad)
                    trust = group["eta"] * w_norm / (g_norm + decay * w_norm + group["eps"])
                    grad = torch.where((w_norm > 0) & (g_norm > 0), grad.add(param, alpha=decay).mul_(trust), grad)
                state = self.state[param]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                param.add_(buf, alpha=-group["lr"])
        return loss


def parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, biases-and-norm-parameters): matrices/kernels vs parameters with < 2 dims."""
    weights, others = [], []
    for param in model.parameters():
        if param.requires_grad:
            (weights if param.dim() >= 2 else others).append(param)
    return weights, others


def build_optimizer(model: nn.Module, config: SwAVConfig) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, weight decay on every parameter) or LARS (the reference's LARC, every parameter).

    The learning rate is set before every step to :func:`learning_rate` (scaled to the global
    batch); the one given here is only a placeholder.
    """
    weights, others = parameter_groups(model)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            [{"params": weights}, {"params": others}],
            lr=config.start_warmup_lr, momentum=MOMENTUM, weight_decay=config.weight_decay,
        )
    if config.optimizer == "lars":
        # every parameter adapted and decayed, as the reference's LARC over model.parameters()
        return LARS([{"params": weights}, {"params": others}], lr=config.start_warmup_lr,
                    weight_decay=config.weight_decay)
    raise ValueError(f"optimizer={config.optimizer!r} is invalid: choose one of sgd, lars")


def scaled_lr(lr: float, batch_size: int, world_size: int) -> float:
    """A learning rate given for a global batch of :data:`REFERENCE_BATCH` (256), scaled linearly.

    The linear scaling rule (Goyal et al. 2017): the real global batch is ``batch_size`` images
    per process times ``world_size`` processes, so 64 x 4 = 256 keeps ``lr`` and 64 x 1 gives
    ``lr / 4``.
    """
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"scaled_lr: batch_size={batch_size} and world_size={world_size} must be >= 1")
    return lr * batch_size * world_size / REFERENCE_BATCH


def learning_rate(config: SwAVConfig, iteration: int, iters_per_epoch: int, world_size: int = 1) -> float:
    """The effective learning rate at ``iteration``: what the optimiser uses and ``lr`` reports.

    Per-iteration linear warmup from ``start_warmup_lr`` then cosine to ``final_lr``, as the
    reference; all three rates are for a global batch of 256 and the whole schedule is scaled by
    :func:`scaled_lr` to the real global batch ``config.batch_size * world_size``.
    """
    schedule = warmup_cosine(
        iteration,
        total_iters=config.epochs * iters_per_epoch,
        warmup_iters=config.warmup_epochs * iters_per_epoch,
        base_lr=config.base_lr,
        final_lr=config.final_lr,
        start_lr=config.start_warmup_lr,
    )
    return scaled_lr(schedule, config.batch_size, world_size)


def frozen_prototype_iterations(epochs: float, iters_per_epoch: int) -> int:
    """How many first iterations keep the prototypes frozen: ``epochs`` of the run's real epochs.

    Rounded up, so that any positive fraction freezes at least one iteration. The reference's
    ``--freeze_prototypes_niters`` values are one ImageNet epoch (1,281,167 images) rounded up:
    5005 iterations at batch 256 and 313 at batch 4096. ``epochs=1`` here gives 5004 and 312 on
    ImageNet, since an epoch drops its last partial batch (as the reference's loader does).

    Args:
        epochs: ``SwAVConfig.freeze_prototypes_epochs`` (>= 0).
        iters_per_epoch: optimiser iterations per epoch of this run (images per process,
            capped by ``max_images``, over ``batch_size``).
    """
    if epochs < 0 or iters_per_epoch < 0:
        raise ValueError(f"frozen_prototype_iterations: epochs={epochs} and iters_per_epoch={iters_per_epoch} "
                         "must be >= 0")
    # round() first: 0.7 * 10 is 7.000000000000001 in floating point, which must stay 7.
    return math.ceil(round(epochs * iters_per_epoch, 6))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


__all__ = ["LARS", "LARS_ETA", "MOMENTUM", "REFERENCE_BATCH", "build_optimizer", "frozen_prototype_iterations",
           "learning_rate", "parameter_groups", "scaled_lr", "set_learning_rate"]
