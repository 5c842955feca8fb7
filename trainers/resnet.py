"""The ResNet trunk both trainers use, built explicitly.

torchvision's detection builders swap norm layers and freeze stages on their own when no
weights are passed; building the trunk here keeps the norm (BatchNorm or GroupNorm) and
the key names under our control, so a SwAV export loads into detection with ``strict=True``.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch loads when a trunk is built; validating a config needs only the names
    from torch import nn

ARCHS = ("resnet18", "resnet34", "resnet50")  # torchvision.models' constructors of these names
TRUNK_NORMS = ("bn", "gn")
GN_GROUPS = 32  # as in the GroupNorm paper; every ResNet width (64..2048) divides by 32

# Output channels of the trunk (after layer4) per architecture.
TRUNK_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """The ``norm_layer`` callable torchvision's ResNet takes, for ``bn`` or ``gn``."""
    from torch import nn

    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return partial(nn.GroupNorm, GN_GROUPS)
    raise ValueError(f"norm={norm!r} is invalid: choose one of {', '.join(TRUNK_NORMS)}")


def build_trunk(arch: str, norm: str = "bn") -> nn.Module:
    """A randomly initialised torchvision ResNet with ``fc = Identity`` (2048/512-d pooled output)."""
    import torchvision.models
    from torch import nn

    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is invalid: choose one of {', '.join(ARCHS)}")
    model = getattr(torchvision.models, arch)(weights=None, norm_layer=norm_layer(norm))
    model.fc = nn.Identity()
    return model

