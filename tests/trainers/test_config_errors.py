"""The shared validators: ConfigError names the field it refuses, and the norm pairing is one table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from trainers.checkpoints import export_backbone
from trainers.common import ConfigError, require_bool, require_choice, require_int, require_number
from trainers.data import sample_paths
from trainers.detection import NORMS, DetectionConfig, detection_trunk
from trainers.pairing import PRETRAINED_NORM, SCRATCH, pretrained_norm
from trainers.resnet import TRUNK_NORMS, build_trunk
from trainers.swav import SwAVConfig


@pytest.mark.parametrize("check, message", [
    (lambda: require_int("epochs", 0, 1), "epochs=0 is invalid: an integer >= 1"),
    (lambda: require_int("seed", 1.5), "seed=1.5 is invalid: an integer"),
    (lambda: require_int("epochs", True, 1), "epochs=True is invalid: an integer >= 1"),
    (lambda: require_number("lr", 0.0, 0.0, low_open=True), "lr=0.0 is invalid: a finite number > 0.0"),
    (lambda: require_number("m", math.inf, 0.0, 1.0), "m=inf is invalid: a finite number >= 0.0 and <= 1.0"),
    (lambda: require_number("t", -1, 0, low_open=True, finite=False), "t=-1 is invalid: a number > 0"),
    (lambda: require_number("x", "a", finite=False), "x='a' is invalid: a number"),
    (lambda: require_bool("amp", 1), "amp=1 is invalid: true or false"),
    (lambda: require_choice("norm", "gm", ("bn", "gn")), "norm='gm' is invalid: choose one of bn, gn (did you mean"),
])
def test_validators_raise_config_errors_with_the_field(check: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check()
    assert str(err.value).startswith(message)
    assert err.value.field == message.split("=", 1)[0]
    assert isinstance(err.value, ValueError)


def test_validators_accept_what_they_allow() -> None:
    require_int("epochs", 1, 1)
    require_number("t", math.inf, 0, low_open=True, finite=False)
    require_number("m", 1.0, 0.0, 1.0)
    require_bool("amp", False)
    require_choice("norm", "gn", ("bn", "gn"))


@pytest.mark.parametrize("make, field, top", [
    (lambda: SwAVConfig(epochs=0), "epochs", "epochs"),
    (lambda: SwAVConfig(crops=[{"count": 2, "size": 224, "min_scale": 0.5, "max_scale": 1.0},
                               {"count": 6, "size": 96, "min_scale": 0.0, "max_scale": 0.1}]),
     "crops[1].min_scale", "crops"),
    (lambda: SwAVConfig(crops=[{"count": 2, "size": 224, "min_scale": 0.5}]), "crops[0]", "crops"),
    (lambda: SwAVConfig(crops=[{"count": 2, "size": 224, "min_scale": 0.5, "max_scale": 1.0, "sise": 1}]),
     "crops[0]", "crops"),
    (lambda: DetectionConfig(norm="bn", lr_multipliers={"detector": -1.0}), "lr_multipliers.detector", "lr_multipliers"),
    (lambda: DetectionConfig(norm="bn", lr_multipliers={"detectr": 1.0}), "lr_multipliers key", "lr_multipliers"),
    (lambda: DetectionConfig(backbone=SCRATCH), "norm", "norm"),  # frozen_bn (the default) on a random trunk
])
def test_config_errors_name_the_field_the_message_leads_with(make: Any, field: str, top: str) -> None:
    with pytest.raises(ConfigError) as err:
        make()
    assert (err.value.field, err.value.top_field) == (field, top)
    assert str(err.value).startswith(top)


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
