"""trainers/detection/config.py: DetectionConfig's validation, the arch and lr multipliers it resolves, and the
norm a backbone allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainers.common.configs import config_from_dict, config_to_dict
from trainers.detection.config import DetectionConfig, scratch_warnings
from tests.trainers.detection.helpers import data_paths


def test_config_resolves_arch_and_multipliers(sample_data: Any, backbones: dict[str, Path]) -> None:
    scratch = DetectionConfig(norm="bn", **data_paths(sample_data))
    assert scratch.arch == "resnet50" and scratch.lr_scheme == "357"
    assert scratch.lr_multipliers == {"detector": 1e-3, "late_backbone": 1e-5, "early_backbone": 1e-7}
    # The default base_lr makes the 357 detector rate a working SGD rate.
    assert scratch.group_lr("detector") == pytest.approx(0.02)

    pretrained = DetectionConfig(backbone=str(backbones["bn"]), **data_paths(sample_data))
    assert pretrained.arch == "resnet18"
    uniform = DetectionConfig(lr_scheme="uniform", norm="bn", lr_multipliers={"detector": 5e-4}, **data_paths(sample_data))
    assert uniform.lr_multipliers == {"detector": 5e-4}
    # YAML reads `lr_scheme: 357` as an integer.
    assert DetectionConfig(lr_scheme=357, norm="bn", **data_paths(sample_data)).lr_scheme == "357"
    # The resolved config round-trips through its dict form unchanged.
    assert config_from_dict(DetectionConfig, config_to_dict(pretrained)) == pretrained


@pytest.mark.parametrize("overrides, message", [
    ({"norm": "frozen"}, "norm='frozen' is invalid"),
    ({"head": "res4"}, "head='res4'"),
    ({"lr_scheme": "358"}, "lr_scheme='358'"),
    ({"lr_multipliers": {"detectr": 1e-3}}, "did you mean 'detector'"),
    ({"lr_scheme": "uniform", "lr_multipliers": {"late_backbone": 1e-3}}, "lr_multipliers.late_backbone"),
    ({"base_lr": 0.0}, "base_lr=0.0"),
    ({"epochs": 0}, "epochs=0"),
    ({"max_size": 64, "min_size": 128}, "max_size=64"),
    ({"lr_steps": [0.9, 0.5]}, "lr_steps"),
    ({"backbone": "/no/such/backbone"}, "backbone='/no/such/backbone'"),
    ({"train_images": "/no/such/images"}, "train_images='/no/such/images'"),
    ({"val_annotations": "/no/such/val.json"}, "val_annotations='/no/such/val.json'"),
    ({"train_annotations": ""}, "train_annotations='' is invalid: required"),
    ({"norm": "frozen_bn"}, "norm='frozen_bn' is invalid with backbone='scratch'"),
    ({"head": "res6"}, "head='res6'"),
])
def test_config_rejects_bad_values(sample_data: Any, overrides: dict[str, Any], message: str) -> None:
    values = {"norm": "bn", **data_paths(sample_data), **overrides}  # the default norm, frozen_bn, needs a backbone
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DetectionConfig(**values)


def test_config_norm_must_match_backbone(sample_data: Any, backbones: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"norm='gn' needs a GroupNorm-pretrained backbone.*norm='bn'"):
        DetectionConfig(backbone=str(backbones["bn"]), norm="gn", **data_paths(sample_data))
    for norm in ("bn", "frozen_bn", "frozen_affine"):
        with pytest.raises(ValueError, match=rf"norm='{norm}' needs a BatchNorm-pretrained backbone.*norm='gn'"):
            DetectionConfig(backbone=str(backbones["gn"]), norm=norm, **data_paths(sample_data))
    with pytest.raises(ValueError, match=r"arch='resnet50' conflicts with backbone=.*resnet18"):
        DetectionConfig(backbone=str(backbones["bn"]), arch="resnet50", **data_paths(sample_data))


def test_scratch_trunk_refuses_frozen_bn_and_warns_about_untrained_choices(sample_data: Any,
                                                                          backbones: dict[str, Path]) -> None:
    # FrozenBatchNorm2d on a random trunk is the identity: refused, naming field, value and the fix.
    with pytest.raises(ValueError) as info:
        DetectionConfig(**data_paths(sample_data))  # scratch with the default norm
    message = str(info.value)
    assert "norm='frozen_bn'" in message and "backbone='scratch'" in message
    assert "norm: bn (or gn) with lr_scheme: uniform" in message
    # The same norm on a pretrained backbone is unchanged (the default there).
    assert DetectionConfig(backbone=str(backbones["bn"]), **data_paths(sample_data)).norm == "frozen_bn"
    for norm in ("bn", "frozen_affine", "gn"):
        DetectionConfig(norm=norm, **data_paths(sample_data))
    # The ordinary scratch recipe warns about nothing; each near-untrained choice is named.
    assert scratch_warnings("bn", "uniform") == [] and scratch_warnings("gn", "uniform") == []
    assert [len(scratch_warnings(n, s)) for n, s in [("frozen_affine", "uniform"), ("bn", "frozen"), ("bn", 357),
                                                       ("frozen_affine", "357")]] == [1, 1, 1, 2]
    assert "frozen_affine" in scratch_warnings("frozen_affine", "uniform")[0]
    assert "lr_scheme: frozen" in scratch_warnings("gn", "frozen")[0]
    assert all("lr_scheme: uniform" in w for w in scratch_warnings("frozen_affine", "357"))


def test_config_rejects_folder_without_backbone(sample_data: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"backbone=.*not an exported backbone"):
        DetectionConfig(backbone=str(tmp_path), **data_paths(sample_data))
