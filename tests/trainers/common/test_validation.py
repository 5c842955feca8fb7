"""trainers/common/validation.py: the shared validators, and ConfigError naming the field it refuses (the field
the message leads with, for both trainers' configs)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from trainers.common.validation import (ConfigError, closest, require_bool, require_choice, require_int, require_number,
                                        unknown_key_message)
from trainers.detection import DetectionConfig
from trainers.pairing import SCRATCH
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


def test_an_unknown_key_names_the_place_and_the_closest_valid_key() -> None:
    assert closest("prototype", ["prototypes", "epochs"]) == "prototypes"
    assert closest("zzz", ["prototypes", "epochs"]) is None
    assert unknown_key_message("prototype", {"prototypes", "epochs"}, "pretrain.yaml") == (
        "pretrain.yaml: unknown key 'prototype' (did you mean 'prototypes'?)")
    assert unknown_key_message("zzz", {"prototypes", "epochs"}) == "unknown key 'zzz' (valid keys: epochs, prototypes)"
