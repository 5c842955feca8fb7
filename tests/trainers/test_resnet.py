"""Tests for trainers.resnet: the trunk keeps torchvision's key names without ``fc``, its norm is the one asked for,
its width is TRUNK_CHANNELS, and an unknown arch or norm is refused."""

from __future__ import annotations

import pytest
import torch
import torchvision.models
from torch import nn

from trainers.resnet import ARCHS, GN_GROUPS, TRUNK_CHANNELS, build_trunk, norm_layer


def test_a_bn_trunk_has_torchvisions_keys_without_fc_and_a_pooled_output() -> None:
    torch.manual_seed(0)
    trunk = build_trunk("resnet18").eval()
    assert isinstance(trunk.fc, nn.Identity)
    with torch.device("meta"):
        reference = torchvision.models.resnet18(weights=None)
    expected = {k for k in reference.state_dict() if not k.startswith("fc.")}
    assert set(trunk.state_dict()) == expected  # so an export loads into torchvision with strict=True
    with torch.no_grad():
        assert trunk(torch.rand(2, 3, 32, 32)).shape == (2, TRUNK_CHANNELS["resnet18"])


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_is_as_wide_as_trunk_channels_says_in_either_norm(arch: str) -> None:
    for norm, layer in (("bn", nn.BatchNorm2d), ("gn", nn.GroupNorm)):
        with torch.device("meta"):  # the structure alone: no memory, no initialisation cost
            trunk = build_trunk(arch, norm)
        norms = [m for m in trunk.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
        assert norms and all(type(m) is layer for m in norms)
        if norm == "gn":
            assert all(m.num_groups == GN_GROUPS for m in norms)
        last = [m for m in trunk.layer4.modules() if isinstance(m, layer)][-1]
        assert (last.num_channels if norm == "gn" else last.num_features) == TRUNK_CHANNELS[arch]


def test_an_unknown_arch_or_norm_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"^arch='resnet101' is invalid: choose one of resnet18, resnet34, resnet50$"):
        build_trunk("resnet101")
    with pytest.raises(ValueError, match=r"^norm='ln' is invalid: choose one of bn, gn$"):
        build_trunk("resnet18", "ln")
    group = norm_layer("gn")(128)
    assert isinstance(group, nn.GroupNorm) and (group.num_groups, group.num_channels) == (GN_GROUPS, 128)
