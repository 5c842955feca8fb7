"""trainers/common/precision.py: the autocast context, the loss scaler and the guarded optimiser step (float16 loss
scaling unscales before SGD/LARS, a planted inf skips the step, frozen gradients are dropped)."""

from __future__ import annotations

import copy

import pytest
import torch

from trainers.common.precision import NonFiniteLossError, autocast, backward_and_step, check_finite, grad_scaler
from trainers.swav.optim import build_optimizer, set_learning_rate
from tests.trainers.swav.helpers import tiny_config


@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_float16_loss_scaling_unscales_before_the_optimizer(optimizer: str) -> None:
    """``backward_and_step`` under float16 autocast: a planted inf gradient skips the step (no
    weight or momentum change) and halves the scale; the next step equals an unscaled step, so
    LARS's trust ratio and weight decay (large here, so a scaled gradient would show) see the true
    gradients."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    reference = copy.deepcopy(model)
    config = tiny_config(optimizer=optimizer, weight_decay=0.5)
    opt, ref_opt = build_optimizer(model, config), build_optimizer(reference, config)
    set_learning_rate(opt, 0.1)
    set_learning_rate(ref_opt, 0.1)
    scaler = grad_scaler(torch.device("cpu"), True, "float16")
    x = torch.randn(6, 8)

    def loss_of(net: torch.nn.Module) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.float16):
            out = net(x)
        assert out.dtype == torch.float16
        return out.float().pow(2).mean()

    start = [p.detach().clone() for p in model.parameters()]
    hook = model[0].weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    assert backward_and_step(loss_of(model), opt, scaler) is False
    hook.remove()
    assert scaler.get_scale() == 2.0 ** 15 and not opt.state  # no momentum buffer either
    for p, p0 in zip(model.parameters(), start):
        assert torch.equal(p.detach(), p0)

    assert backward_and_step(loss_of(model), opt, scaler) is True
    assert scaler.get_scale() == 2.0 ** 15
    ref_opt.zero_grad()
    loss_of(reference).backward()  # no scaling at all
    ref_opt.step()
    for p, q, p0 in zip(model.parameters(), reference.parameters(), start):
        # Equal up to float16 rounding of the gradients; a scaled gradient would be off by far more.
        torch.testing.assert_close(p.detach() - p0, q.detach() - p0, rtol=2e-2, atol=1e-6)
        assert not torch.equal(p.detach(), p0)


def test_frozen_gradients_are_dropped_before_the_step() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bias = model.bias.detach().clone()
    assert backward_and_step(model(torch.randn(4, 3)).sum(), opt, grad_scaler(torch.device("cpu"), True, "float16"),
                             drop_grads=[model.bias])
    assert model.bias.grad is None and torch.equal(model.bias.detach(), bias)


def test_autocast_and_the_scaler_follow_amp_and_its_dtype() -> None:
    x, w = torch.randn(2, 3), torch.randn(3, 4)
    with autocast(torch.device("cpu"), False, "bfloat16"):
        assert (x @ w).dtype == torch.float32  # amp off: a no-op whatever the dtype
    with autocast(torch.device("cpu"), True, "bfloat16"):
        assert (x @ w).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="amp_dtype='fp16' is invalid: choose one of float16, bfloat16"):
        autocast(torch.device("cpu"), True, "fp16")
    cpu = torch.device("cpu")
    assert grad_scaler(cpu, True, "float16").is_enabled()
    assert not grad_scaler(cpu, True, "bfloat16").is_enabled() and not grad_scaler(cpu, False, "float16").is_enabled()


def test_without_a_scaler_non_finite_steps_are_skipped_on_request_and_gradients_clipped() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    off = grad_scaler(torch.device("cpu"), False, "float16")
    start = model.weight.detach().clone()
    hook = model.weight.register_hook(lambda grad: grad * float("nan"))
    assert backward_and_step(model(torch.randn(4, 3)).sum(), opt, off, skip_non_finite=True) is False
    assert torch.equal(model.weight.detach(), start)
    hook.remove()
    # A clean step, its gradients clipped to a total norm of 1e-3 (lr 1: the weights move by at most that).
    assert backward_and_step(model(torch.randn(4, 3)).sum() * 100, opt, off, clip_grad_norm=1e-3) is True
    moved = model.weight.detach() - start
    assert 0 < float(moved.norm()) <= 1e-3 + 1e-9
    with pytest.raises(NonFiniteLossError, match="non-finite loss \\(nan\\) at epoch 2, step 5"):
        check_finite(torch.tensor(float("nan")), 2, 5)
    check_finite(torch.tensor(1.0), 2, 5)  # a finite loss passes
