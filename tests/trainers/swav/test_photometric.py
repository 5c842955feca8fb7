"""trainers/swav/photometric.py: the batched colour ops against torchvision, and each sample's own jitter order."""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF

from trainers.swav.photometric import (
    JITTER_ORDERS,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    gaussian_blur,
)


def test_photometric_ops_match_torchvision() -> None:
    x = torch.rand(5, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    factors = torch.tensor([0.2, 0.7, 1.0, 1.4, 1.8])
    shifts = torch.tensor([-0.2, -0.05, 0.0, 0.1, 0.2])
    pairs = [(adjust_brightness, TF.adjust_brightness, factors), (adjust_contrast, TF.adjust_contrast, factors),
             (adjust_saturation, TF.adjust_saturation, factors), (adjust_hue, TF.adjust_hue, shifts)]
    for ours, theirs, params in pairs:
        expected = torch.stack([theirs(x[i], float(params[i])) for i in range(5)])
        torch.testing.assert_close(ours(x.clone(), params), expected, atol=2e-4, rtol=0)
    blurred = gaussian_blur(x, torch.tensor([0.5, 1.0, 2.0, 0.1, 1.5]))
    assert blurred.shape == x.shape
    # Interior pixels equal torchvision's Gaussian blur (borders differ: replicate vs reflect padding).
    expected = TF.gaussian_blur(x[2], [13, 13], [2.0, 2.0])
    torch.testing.assert_close(blurred[2, :, 6:-6, 6:-6], expected[:, 6:-6, 6:-6], atol=1e-5, rtol=0)


def test_color_jitter_applies_each_samples_own_order() -> None:
    n = 6
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    params = torch.tensor([[1.6, 0.4, 1.7, 0.15], [0.3, 1.5, 0.5, -0.1]] * 3)
    orders = torch.tensor([0, 23, 5, 11, 17, 0])
    apply = torch.tensor([True, True, True, True, False, True])
    out = color_jitter(x.clone(), params, orders, apply)
    ops = {0: TF.adjust_brightness, 1: TF.adjust_contrast, 2: TF.adjust_saturation, 3: TF.adjust_hue}
    for i in range(n):
        expected = x[i]
        if apply[i]:
            for op in JITTER_ORDERS[int(orders[i])]:
                expected = ops[op](expected, float(params[i, op]))
        torch.testing.assert_close(out[i], expected, atol=2e-4, rtol=0)
    # The order matters (brightness then saturation is not saturation then brightness once clipped).
    assert not torch.allclose(out[0], out[5])
    assert torch.equal(out[4], x[4])  # a sample not jittered goes through every round unchanged, bit for bit
