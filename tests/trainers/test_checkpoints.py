"""Tests for trainers.checkpoints: a training checkpoint's round trip through safetensors and JSON, the record read
without tensors, a backbone export with its sha256, and the errors on a missing, corrupt or foreign file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainers.checkpoints import (
    BACKBONE_CONFIG,
    BACKBONE_FORMAT,
    BACKBONE_WEIGHTS,
    STATE_JSON,
    STATE_TENSORS,
    CheckpointError,
    checkpoint_progress,
    export_backbone,
    load_backbone_weights,
    load_checkpoint,
    read_backbone_config,
    read_tensors,
    save_checkpoint,
)


def test_a_checkpoint_round_trips_nested_state(tmp_path: Path) -> None:
    weight = torch.randn(3, 2)
    saved = weight.clone()
    state = {
        "epoch": 4,
        "model": {"weight": weight, "steps": torch.tensor([7], dtype=torch.int64)},
        # an optimizer's state is keyed by parameter index: int keys must come back as ints
        "optimizer": {"state": {0: {"momentum": torch.ones(2, dtype=torch.bfloat16)}}, "param_groups": [{"lr": 0.1}]},
        "rng": (torch.arange(4, dtype=torch.uint8), 12345),
        "metrics": {"swav/loss": 7.5, "collapsed": False, "note": "x", "count": 3},
        "upstream": None,
    }
    assert save_checkpoint(tmp_path / "ckpt", state) == tmp_path / "ckpt"
    weight.add_(1.0)  # the checkpoint holds a copy, not the live tensor
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.keys() == state.keys() and loaded["epoch"] == 4 and loaded["upstream"] is None
    assert torch.equal(loaded["model"]["weight"], saved)
    assert loaded["model"]["steps"].dtype == torch.int64 and loaded["model"]["steps"].tolist() == [7]
    momentum = loaded["optimizer"]["state"][0]["momentum"]
    assert momentum.dtype == torch.bfloat16 and torch.equal(momentum, torch.ones(2, dtype=torch.bfloat16))
    assert loaded["optimizer"]["param_groups"] == [{"lr": 0.1}]
    assert isinstance(loaded["rng"], tuple) and loaded["rng"][1] == 12345
    assert loaded["metrics"] == state["metrics"]
    # the record is plain JSON, the tensors only in the safetensors file
    assert "__tensor__" in (tmp_path / "ckpt" / STATE_JSON).read_text()
    assert set(read_tensors(tmp_path / "ckpt" / STATE_TENSORS)) == {"t0", "t1", "t2", "t3"}
    # the driver's cheap look: the epoch and the numeric metrics (no bools, no strings)
    assert checkpoint_progress(tmp_path / "ckpt") == (4, {"swav/loss": 7.5, "count": 3.0})


def test_what_json_cannot_hold_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot store set in a checkpoint"):
        save_checkpoint(tmp_path / "ckpt", {"epoch": 1, "seen": {1, 2}})
    assert not (tmp_path / "ckpt").exists()  # nothing is left: the state is checked before the folder is made


def test_a_missing_corrupt_or_foreign_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"^{tmp_path}: not a checkpoint \\(missing {STATE_TENSORS}\\)$"):
        load_checkpoint(tmp_path)
    folder = save_checkpoint(tmp_path / "ckpt", {"epoch": 1, "w": torch.zeros(64)})
    data = (folder / STATE_TENSORS).read_bytes()
    for broken in (data[: len(data) // 2], b"\x80\x04\x95 not safetensors but a pickle", b""):
        (folder / STATE_TENSORS).write_bytes(broken)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(folder)
        assert str(info.value).startswith(f"{folder / STATE_TENSORS}: not a readable safetensors file")
        assert "ablate pull" in str(info.value)
    (folder / STATE_JSON).write_text(json.dumps({"__dict__": {"step": 3}}))
    with pytest.raises(CheckpointError, match="not a training checkpoint's record \\(KeyError"):
        checkpoint_progress(folder)
    with pytest.raises(CheckpointError, match="not a training checkpoint's record"):
        checkpoint_progress(tmp_path / "nowhere")


def test_an_exported_backbone_loads_back_and_a_replaced_weights_file_is_caught(tmp_path: Path) -> None:
    trunk = {"conv1.weight": torch.randn(4, 3, 1, 1), "bn1.running_mean": torch.zeros(4),
             "fc.weight": torch.randn(2, 4), "fc.bias": torch.zeros(2)}
    folder = export_backbone(tmp_path / "bb", trunk, {"arch": "resnet18", "norm": "bn", "epochs": 2})
    weights, config = load_backbone_weights(folder)
    assert set(weights) == {"conv1.weight", "bn1.running_mean"}  # no fc
    assert torch.equal(weights["conv1.weight"], trunk["conv1.weight"])
    assert config["format"] == BACKBONE_FORMAT
    assert (config["arch"], config["norm"], config["epochs"]) == ("resnet18", "bn", 2)
    assert config == read_backbone_config(folder) and len(config["sha256"]) == 64

    other = export_backbone(tmp_path / "other", {"conv1.weight": torch.ones(4, 3, 1, 1)},
                            {"arch": "resnet18", "norm": "bn"})
    (folder / BACKBONE_WEIGHTS).write_bytes((other / BACKBONE_WEIGHTS).read_bytes())
    with pytest.raises(CheckpointError, match=f"sha256 does not match {BACKBONE_CONFIG}"):
        load_backbone_weights(folder)
    assert torch.equal(load_backbone_weights(folder, verify=False)[0]["conv1.weight"], torch.ones(4, 3, 1, 1))
    with pytest.raises(ValueError, match="meta must contain 'norm'"):
        export_backbone(tmp_path / "x", trunk, {"arch": "resnet18"})


def test_a_folder_that_is_not_an_export_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not an exported backbone .*ablate pretrain"):
        read_backbone_config(tmp_path)
    folder = export_backbone(tmp_path / "bb", {"w": torch.zeros(1)}, {"arch": "resnet18", "norm": "gn"})
    config = json.loads((folder / BACKBONE_CONFIG).read_text())
    (folder / BACKBONE_CONFIG).write_text(json.dumps({**config, "format": "something-else/v9"}))
    with pytest.raises(CheckpointError, match=f"format 'something-else/v9' is not '{BACKBONE_FORMAT}'"):
        read_backbone_config(folder)
