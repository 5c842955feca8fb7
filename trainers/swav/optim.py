"""Optimisers for SwAV: SGD with momentum or LARS, and the per-iteration learning rate.

The reference wraps SGD in apex's LARC (``clip=False``, trust coefficient 0.001). The LARS
here follows LARC's arithmetic, except that biases and normalisation parameters (every
parameter with fewer than two dimensions) get neither weight decay nor the trust ratio,
the usual LARS practice (You et al. 2017; the SimCLR/BYOL recipes).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from trainers.common import warmup_cosine
from trainers.swav.config import SwAVConfig

MOMENTUM = 0.9  # as the reference
LARS_ETA = 0.001  # LARC trust coefficient in the reference


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling.

    For a parameter ``w`` with gradient ``g`` in a group with ``lars=True``::

        trust = eta * |w| / (|g| + weight_decay * |w| + eps)   (1 if |w| or |g| is 0)
        d = trust * (g + weight_decay * w)
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
                    trust = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                    grad = grad.add(param, alpha=decay).mul_(trust)
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
    """SGD (momentum 0.9, weight decay on every parameter, as the reference) or LARS.

    The learning rate is set every iteration by :func:`learning_rate`; the one given here is
    the warmup start.
    """
    weights, others = parameter_groups(model)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            [{"params": weights}, {"params": others}],
            lr=config.start_warmup_lr, momentum=MOMENTUM, weight_decay=config.weight_decay,
        )
    if config.optimizer == "lars":
        return LARS(
            [{"params": weights}, {"params": others, "lars": False, "weight_decay": 0.0}],
            lr=config.start_warmup_lr, weight_decay=config.weight_decay,
        )
    raise ValueError(f"optimizer={config.optimizer!r} is invalid: choose one of sgd, lars")


def learning_rate(config: SwAVConfig, iteration: int, iters_per_epoch: int) -> float:
    """Per-iteration linear warmup from ``start_warmup_lr`` then cosine to ``final_lr``."""
    return warmup_cosine(
        iteration,
        total_iters=config.epochs * iters_per_epoch,
        warmup_iters=config.warmup_epochs * iters_per_epoch,
        base_lr=config.base_lr,
        final_lr=config.final_lr,
        start_lr=config.start_warmup_lr,
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


__all__ = ["LARS", "LARS_ETA", "MOMENTUM", "build_optimizer", "learning_rate", "parameter_groups", "set_learning_rate"]
