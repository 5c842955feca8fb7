"""trainers/swav/config.py: SwAVConfig's defaults, the crop groups from plain values, the validation that names the
field, and the kNN monitor's settings."""

from __future__ import annotations

import pytest

from trainers.common.configs import config_from_dict, config_to_dict
from trainers.common.validation import ConfigError
from trainers.swav.config import CropGroup, SwAVConfig
from tests.trainers.swav.helpers import TINY, TINY_CROPS, knn_paths


def test_defaults_follow_the_paper() -> None:
    config = SwAVConfig()
    assert config.prototypes == 3000 and config.feat_dim == 128 and config.temperature == 0.1
    assert config.epsilon == 0.05 and config.sinkhorn_iterations == 3 and config.crops_for_assign == (0, 1)
    assert config.crops == (CropGroup(2, 224, 0.14, 1.0), CropGroup(6, 96, 0.05, 0.14))
    assert config.total_crops == 8 and config.crop_sizes == (224, 224) + (96,) * 6
    assert config.base_lr == 0.6 and config.freeze_prototypes_epochs == 1.0  # the reference's batch-256 recipe
    assert config.amp and config.amp_dtype == "float16"  # the reference's fp16 with loss scaling


def test_crops_from_yaml_lists_are_normalised() -> None:
    config = config_from_dict(SwAVConfig, {"crops": [dict(c) for c in TINY_CROPS], "crops_for_assign": [0, 1]})
    assert config.crops == (CropGroup(2, 32, 0.14, 1.0), CropGroup(2, 16, 0.05, 0.14))
    assert config.crops_for_assign == (0, 1)
    # The resolved config round-trips through plain values (what MLflow and checkpoints store).
    assert config_from_dict(SwAVConfig, config_to_dict(config)) == config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"arch": "resnet99"}, "arch"),
        ({"norm": "ln"}, "norm"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"crops": [{"count": 2, "size": 32, "min_scale": 0.5, "max_scale": 1.5}]}, "crops[0].max_scale"),
        ({"crops": [{"count": 2, "size": 32, "min_scale": 0.0, "max_scale": 0.5}]}, "crops[0].min_scale"),
        ({"crops": [{"count": 2, "size": 32, "min_scale": 0.6, "max_scale": 0.5}]}, "crops[0].min_scale"),
        ({"crops": [{"count": 1, "size": 32, "min_scale": 0.1, "max_scale": 0.5}]}, "crops"),
        ({"prototypes": 0}, "prototypes"),
        ({"base_lr": -0.1}, "base_lr"),
        ({"final_lr": -1e-3}, "final_lr"),
        ({"queue_length": 3840, "epochs": 10, "queue_start_epoch": 15}, "queue_start_epoch"),
        ({"queue_length": 8, "batch_size": 16}, "queue_length"),
        ({"crops_for_assign": (0, 8)}, "crops_for_assign"),
        ({"crops_for_assign": (1, 1)}, "crops_for_assign"),
        ({"crops_for_assign": ()}, "crops_for_assign"),
        ({"temperature": 0}, "temperature"),
        ({"epsilon": -0.05}, "epsilon"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations"),
        ({"batch_size": 1}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"warmup_epochs": 200, "epochs": 100}, "warmup_epochs"),
        ({"amp": "yes"}, "amp"),
        ({"amp_dtype": "fp16"}, "amp_dtype"),
        ({"freeze_prototypes_epochs": -1}, "freeze_prototypes_epochs"),
        ({"freeze_prototypes_epochs": 313, "epochs": 100}, "freeze_prototypes_epochs"),
        ({"freeze_prototypes_epochs": "1"}, "freeze_prototypes_epochs"),
        ({"freeze_prototypes_epochs": float("nan")}, "freeze_prototypes_epochs"),
        ({"max_images": 3, "batch_size": 4}, "max_images"),
        ({"workers": -1}, "workers"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        config_from_dict(SwAVConfig, overrides)
    message = str(excinfo.value)
    assert message.startswith(f"{field}="), message
    assert "invalid" in message


def test_unknown_keys_suggest_the_closest_name() -> None:
    with pytest.raises(ValueError, match="unknown key 'prototype'.*did you mean 'prototypes'"):
        config_from_dict(SwAVConfig, {"prototype": 100})
    with pytest.raises(ValueError, match="crops\\[0\\].*unknown key 'sise'.*did you mean 'size'"):
        config_from_dict(SwAVConfig, {"crops": [{"count": 2, "sise": 32, "min_scale": 0.1, "max_scale": 1.0}]})
    with pytest.raises(ValueError, match="crops\\[1\\]: missing key"):
        config_from_dict(SwAVConfig, {"crops": [TINY_CROPS[0], {"count": 2, "size": 16}]})
    # The iteration count it replaced (and the reference's flag) point at the new field.
    for old in ("freeze_prototypes_iters", "freeze_prototypes_niters"):
        with pytest.raises(ValueError, match=f"unknown key '{old}'.*did you mean 'freeze_prototypes_epochs'"):
            config_from_dict(SwAVConfig, {old: 313})


def test_freeze_prototypes_error_gives_the_reference_value() -> None:
    with pytest.raises(ValueError, match="313 is invalid: .*about 1 epoch: 5005 iterations at batch 256"):
        config_from_dict(SwAVConfig, {"freeze_prototypes_epochs": 313})


# ---------------------------------------------------------------------------
# The kNN monitor's settings
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("epochs, every, due", [
    (7, None, [1, 2, 3, 4, 5, 6, 7]),     # short runs: every epoch
    (100, None, list(range(5, 101, 5))),  # long runs: every epochs // 20, the last included
    (10, 3, [3, 6, 9, 10]),               # the last epoch always
    (10, 0, []),                          # off
])
def test_knn_schedule(sample_data, epochs: int, every: int | None, due: list[int]) -> None:
    config = SwAVConfig(**{**TINY, "data": "x", "epochs": epochs, "knn_every": every, **knn_paths(sample_data)})
    assert [e for e in range(1, epochs + 1) if config.knn_due(e)] == due
    assert not any(SwAVConfig(**{**TINY, "data": "x", "epochs": epochs}).knn_due(e) for e in range(1, epochs + 1))


def test_config_needs_all_four_knn_paths_or_none(sample_data) -> None:
    paths = knn_paths(sample_data)
    with pytest.raises(ConfigError, match="knn_val_images") as info:
        SwAVConfig(**{**TINY, "data": "x", **paths, "knn_val_images": ""})
    assert info.value.field == "knn_val_images"
    with pytest.raises(ConfigError, match="knn_every"):
        SwAVConfig(**{**TINY, "data": "x", "knn_every": -1})
    with pytest.raises(ConfigError, match="knn_temperature"):
        SwAVConfig(**{**TINY, "data": "x", "knn_temperature": 0})
