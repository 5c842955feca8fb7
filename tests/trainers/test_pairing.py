"""trainers/pairing.py: the norm pairing is one table, which the detection trunk, the detection config and the
space's validation all read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from torch import nn

from trainers.checkpoints import export_backbone
from trainers.common.validation import ConfigError
from trainers.data import sample_paths
from trainers.detection import NORMS, DetectionConfig, detection_trunk
from trainers.pairing import PRETRAINED_NORM, SCRATCH, pretrained_norm
from trainers.resnet import TRUNK_NORMS, build_trunk


def test_every_detection_norm_pairs_with_a_trunk_norm() -> None:
    assert NORMS == tuple(PRETRAINED_NORM)
    assert set(PRETRAINED_NORM.values()) <= set(TRUNK_NORMS)
    with pytest.raises(ValueError, match="norm='ln' is invalid"):
        pretrained_norm("ln")


@pytest.mark.parametrize("norm", NORMS)
def test_the_detection_trunk_is_built_with_the_paired_norm(norm: str) -> None:
    trunk = detection_trunk("resnet18", norm)
    has_gn = any(isinstance(m, nn.GroupNorm) for m in trunk.modules())
    assert has_gn == (pretrained_norm(norm) == "gn")


@pytest.mark.parametrize("pretrained", TRUNK_NORMS)
@pytest.mark.parametrize("norm", NORMS)
def test_the_config_accepts_exactly_the_paired_backbones(tmp_path: Path, sample_data: Any, norm: str,
                                                         pretrained: str) -> None:
    folder = export_backbone(tmp_path / pretrained, build_trunk("resnet18", pretrained).state_dict(),
                             {"arch": "resnet18", "norm": pretrained})
    paths = {name: str(getattr(sample_data, name))
             for name in ("train_images", "train_annotations", "val_images", "val_annotations")}
    if PRETRAINED_NORM[norm] == pretrained:
        assert DetectionConfig(backbone=str(folder), norm=norm, **paths).norm == norm
    else:
        with pytest.raises(ConfigError, match="-pretrained backbone") as err:
            DetectionConfig(backbone=str(folder), norm=norm, **paths)
        assert err.value.field == "norm"


def test_sample_paths_is_the_layout_spaces_reads(tmp_path: Path) -> None:
    from experiments import spaces

    paths = sample_paths(tmp_path)
    assert spaces.sample_layout(tmp_path) == tuple(getattr(paths, key) for key in spaces.DATA_PATH_KEYS)
    assert spaces.PAIRING is PRETRAINED_NORM and spaces.BACKBONE_SCRATCH == SCRATCH
