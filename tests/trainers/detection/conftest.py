"""The detection tests' shared fixture, built once per session: exported resnet18 backbones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from trainers.checkpoints import export_backbone
from trainers.resnet import build_trunk


@pytest.fixture(scope="session")
def backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Exported resnet18 backbones (BN and GN, random weights and statistics) and a mislabelled one."""
    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(1)
    bn = build_trunk("resnet18", "bn")
    with torch.no_grad():  # non-trivial statistics, so "preserved" means something
        for m in bn.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    gn = build_trunk("resnet18", "gn")
    return {
        "bn": export_backbone(root / "r18_bn", bn.state_dict(), {"arch": "resnet18", "norm": "bn"}),
        "gn": export_backbone(root / "r18_gn", gn.state_dict(), {"arch": "resnet18", "norm": "gn"}),
        # resnet18 weights whose backbone.json claims resnet34: loading must fail clearly.
        "mislabelled": export_backbone(root / "claims_r34", bn.state_dict(), {"arch": "resnet34", "norm": "bn"}),
    }
