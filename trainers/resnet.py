"""The ResNet trunk both trainers use, built explicitly.

torchvision's detection builders swap norm layers and freeze stages on their own when no
weights are passed; building the trunk here keeps the norm (BatchNorm or GroupNorm) and
the key names under our control, so a SwAV export loads into detection with ``strict=True``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from torch import nn
from torchvision.models import resnet18, resnet34, resnet50

ARCHS: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
TRUNK_NORMS = ("bn", "gn")
GN_GROUPS = 32  # as in the GroupNorm paper; every ResNet width (64..2048) divides by 32

# Output channels of the trunk (after layer4) per architecture.
TRUNK_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """The ``norm_layer`` callable torchvision's ResNet takes, for ``bn`` or ``gn``."""
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return partial(nn.GroupNorm, GN_GROUPS)
    raise ValueError(f"norm={norm!r} is invalid: choose one of {', '.join(TRUNK_NORMS)}")


def build_trunk(arch: str, norm: str = "bn") -> nn.Module:
    """A randomly initialised torchvision ResNet with ``fc = Identity`` (2048/512-d pooled output)."""
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is invalid: choose one of {', '.join(ARCHS)}")
    model = ARCHS[arch](weights=None, norm_layer=norm_layer(norm))
    model.fc = nn.Identity()
    return model

