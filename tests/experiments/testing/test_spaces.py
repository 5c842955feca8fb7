"""experiments/testing/spaces.py: the tiny search spaces the tests and the benchmarks launch are valid studies, as
small as promised; the planted collapse plans two backbones that differ in the temperature alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.spaces import DATA_PATH_KEYS, Resources, expand, load_space
from experiments.testing.spaces import (
    COLLAPSED, CONTROL_LR, HEALTHY, planted_collapse_space, tiny_space, tiny_space_file, write_space,
)


@pytest.fixture
def data_paths(tmp_path: Path) -> dict[str, str]:
    """Empty stand-ins for the five data paths (the configs check only that they exist)."""
    paths = {}
    for key in DATA_PATH_KEYS:
        path = tmp_path / "data" / (f"{key}.json" if key.endswith("annotations") else key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if key.endswith("annotations"):
            path.write_text("{}")
        else:
            path.mkdir()
        paths[key] = str(path)
    return paths


def test_tiny_space_is_a_small_valid_study(tmp_path: Path) -> None:
    space = tiny_space("tiny", pretrain_grid={"prototypes": [20, 30]}, finetune_cases=[{"norm": "bn"}])
    assert "prototypes" not in space["pretrain"]["fixed"]  # a grid axis is no fixed value too
    assert space["pretrain"]["fixed"]["max_images"] == 16 and space["finetune"]["fixed"]["max_iters_per_epoch"] == 2
    path = write_space(tmp_path, space)
    assert path == tmp_path / "tiny.yaml" and yaml.safe_load(path.read_text()) == space
    spec = load_space(path)
    assert (spec.name, spec.seeds, spec.max_concurrent, spec.data.sample) == ("tiny", (0,), 1, ("small", 0, "shapes", 1))
    assert spec.pruning["enabled"] is False and len(spec.pretrain.cells) == 2 and len(spec.finetune.cells) == 1


def test_tiny_space_file_makes_a_ddp_trial_of_one_cpu_processes(tmp_path: Path) -> None:
    one = load_space(tiny_space_file(tmp_path, "single", pretrain_epochs=3))
    assert one.pretrain.resources == Resources(cpu=2, processes=1) and one.pretrain.fixed["epochs"] == 3
    ddp = load_space(tiny_space_file(tmp_path, "ddp", processes=2, prototypes=40))
    assert ddp.pretrain.resources == Resources(cpu=1, processes=2) and ddp.pretrain.fixed["prototypes"] == 40


def test_planted_collapse_differs_in_the_temperature_alone(tmp_path: Path, data_paths: dict[str, str]) -> None:
    space = planted_collapse_space("planted", epochs=7, pruning=True)
    assert space["pruning"] == {"enabled": True}
    assert {k: space["pretrain"]["fixed"][k] for k in CONTROL_LR} == CONTROL_LR
    plan = expand(load_space(write_space(tmp_path, space)), "fp", data_paths)
    healthy, collapsed = plan.pretrain
    assert (healthy.config["temperature"], collapsed.config["temperature"]) == (HEALTHY, COLLAPSED)
    assert {k for k in healthy.config if healthy.config[k] != collapsed.config[k]} == {"temperature"}
    assert healthy.config["epochs"] == 7
    assert [t.upstream_hash for t in plan.finetune] == [healthy.config_hash, collapsed.config_hash]  # one trial each
