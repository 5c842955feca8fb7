"""trainers/swav/optim.py: LARS against LARC's arithmetic, the learning-rate schedule scaled to the global batch, and
the prototype freezing in iterations."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from trainers.swav.model import SwAVModel
from trainers.swav.optim import LARS, build_optimizer, frozen_prototype_iterations, learning_rate, scaled_lr
from tests.trainers.swav.helpers import tiny_config


def test_lars_step_uses_the_trust_ratio() -> None:
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    weight.grad = torch.tensor([[0.0, 2.0]])  # norm 2
    bias.grad = torch.tensor([0.5])
    opt = LARS([{"params": [weight]}, {"params": [bias], "lars": False, "weight_decay": 0.0}],
               lr=0.1, weight_decay=0.01, eta=0.001)
    opt.step()
    trust = 0.001 * 5.0 / (2.0 + 0.01 * 5.0 + 1e-8)
    w0, g0 = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])
    expected = w0 - 0.1 * trust * (g0 + 0.01 * w0)
    torch.testing.assert_close(weight.detach(), expected)
    torch.testing.assert_close(bias.detach(), torch.tensor([1.0 - 0.1 * 0.5]))  # plain step, no decay


def test_lars_adapts_and_decays_every_parameter_as_the_references_larc() -> None:
    """facebookresearch/swav wraps SGD in apex LARC(trust 0.001, clip=False) over model.parameters()."""
    model = SwAVModel("resnet18", "bn", 8, 8, 16)
    opt = build_optimizer(model, tiny_config(optimizer="lars", weight_decay=1e-4))
    assert all(g["lars"] and g["weight_decay"] == 1e-4 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sgd = build_optimizer(model, tiny_config(optimizer="sgd", weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD) and all(g["momentum"] == 0.9 for g in sgd.param_groups)

    # one step against LARC's arithmetic written out, biases and BatchNorm included
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = build_optimizer(head, tiny_config(optimizer="lars", weight_decay=1e-6))
    for group in opt.param_groups:
        group["lr"] = 0.6
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    head(torch.randn(32, 8)).square().mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in head.named_parameters()}
    opt.step()
    for name, param in head.named_parameters():
        w, g = before[name], grads[name]
        if w.norm() > 0 and g.norm() > 0:
            expected = w - 0.6 * (g + 1e-6 * w) * (0.001 * w.norm() / (g.norm() + 1e-6 * w.norm() + 1e-8))
        else:  # LARC leaves such a gradient as it is (BatchNorm's bias starts at 0)
            expected = w - 0.6 * g
        torch.testing.assert_close(param.detach(), expected, msg=f"{name}: not LARC's update")


def test_learning_rate_warms_up_then_follows_a_cosine() -> None:
    # 64 images x 4 processes: the global batch of 256 the rates are given for.
    config = tiny_config(epochs=10, warmup_epochs=2, base_lr=1.0, final_lr=0.01, start_warmup_lr=0.1, batch_size=64)
    lr = partial(learning_rate, config, iters_per_epoch=5, world_size=4)
    assert lr(0) == pytest.approx(0.1)
    assert lr(5) == pytest.approx(0.55)
    assert lr(10) == pytest.approx(1.0)
    assert lr(30) == pytest.approx(0.01 + 0.5 * 0.99)
    assert lr(50) == pytest.approx(0.01)
    values = [lr(i) for i in range(10, 50)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize(
    ("batch_size", "world_size", "expected"),
    [(64, 4, 0.6), (64, 1, 0.15), (256, 1, 0.6), (64, 64, 9.6), (4, 1, 0.6 * 4 / 256)],
)
def test_learning_rate_scales_linearly_with_the_global_batch(batch_size: int, world_size: int, expected: float) -> None:
    assert scaled_lr(0.6, batch_size, world_size) == pytest.approx(expected)
    # The whole schedule scales: warmup start, peak and final rate alike.
    config = tiny_config(epochs=4, warmup_epochs=1, base_lr=0.6, final_lr=0.0006, start_warmup_lr=0.06,
                         batch_size=batch_size)
    ratio = expected / 0.6
    assert learning_rate(config, 0, 10, world_size) == pytest.approx(0.06 * ratio)
    assert learning_rate(config, 10, 10, world_size) == pytest.approx(expected)
    assert learning_rate(config, 40, 10, world_size) == pytest.approx(0.0006 * ratio)
    assert learning_rate(config, 10, 10) == pytest.approx(scaled_lr(0.6, batch_size, 1))  # one process by default


def test_scaled_lr_rejects_an_empty_batch() -> None:
    with pytest.raises(ValueError, match="world_size=0"):
        scaled_lr(0.6, 64, 0)


@pytest.mark.parametrize(
    ("epochs", "iters_per_epoch", "expected"),
    [
        (1.0, 1_281_167 // 256, 5004),  # ImageNet at batch 256 (the reference: 5005, the epoch rounded up)
        (1.0, 1_281_167 // 4096, 312),  # at batch 4096 (the reference's default: 313)
        (1.0, 3, 3),
        (0.5, 4, 2),
        (0.5, 3, 2),  # rounded up
        (0.7, 10, 7),  # not 8: 0.7 * 10 is 7.000000000000001 in floating point
        (0.01, 10, 1),  # any positive fraction freezes at least one iteration
        (2.5, 100, 250),
        (0, 100, 0),
        (1.0, 0, 0),
    ],
)
def test_frozen_prototype_iterations_follow_the_epochs(epochs: float, iters_per_epoch: int, expected: int) -> None:
    assert frozen_prototype_iterations(epochs, iters_per_epoch) == expected


def test_frozen_prototype_iterations_reject_negative_values() -> None:
    with pytest.raises(ValueError, match="epochs=-1"):
        frozen_prototype_iterations(-1, 10)
