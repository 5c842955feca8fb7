"""The shared config pieces: YAML that refuses a key given twice, config files and ``--set`` overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from trainers.common import (DuplicateKeyError, StrictSafeLoader, config_to_dict, load_config_file, load_yaml,
                             parse_overrides)


@dataclass(frozen=True)
class TinyConfig:
    epochs: int = 1
    arch: str = "resnet18"
    crops: tuple = ()


# (YAML text, key path, key, line of the first and of the second occurrence)
DUPLICATES = [
    ("epochs: 1\narch: resnet18\nepochs: 500\n", "epochs", "epochs", 1, 3),
    ("pretrain:\n  fixed:\n    epochs: 1\n    epochs: 500\n", "pretrain.fixed.epochs", "epochs", 3, 4),
    ("cases:\n  - {norm: bn}\n  - norm: gn\n    head: mlp\n    norm: bn\n", "cases[1].norm", "norm", 3, 5),
    ("a:\n  - - {x: 1}\n    - {y: 1}\n    - y: 2\n      y: 3\n", "a[0][2].y", "y", 4, 5),
    ("1: a\n1.0: b\n", "1.0", 1.0, 1, 2),  # one key once loaded: the dict would keep only the second
]


@pytest.mark.parametrize("text,key_path,key,first,second", DUPLICATES, ids=[d[1] for d in DUPLICATES])
def test_a_key_given_twice_is_refused_at_any_depth(text, key_path, key, first, second):
    with pytest.raises(DuplicateKeyError) as err:
        load_yaml(text, "space.yaml")
    exc = err.value
    assert (exc.key_path, exc.key) == (key_path, key)
    assert (exc.first.line + 1, exc.second.line + 1) == (first, second)
    msg = exc.describe()
    assert msg.startswith(f"{key_path}: key {key!r} is given twice (lines {first} and {second})"), msg
    assert "delete one of them" in msg
    assert 'in "space.yaml"' in str(exc)  # the YAML mark names the file too


def test_duplicates_on_one_line_name_the_columns():
    with pytest.raises(DuplicateKeyError, match=r"x: key 'x' is given twice \(line 1, columns 2 and 8\)"):
        load_yaml("{x: 1, x: 2}", "--set crops")


def test_yaml_that_repeats_no_key_loads_as_safe_load_does():
    text = ("base: &b {lr: 0.1, epochs: 2}\n"
            "run:\n  <<: *b\n  epochs: 5\n"  # overriding a merged key is what merges are for
            "again: *b\n"
            "list: [*b, *b]\n"
            "same_value_twice: {a: 1, b: 1}\n")
    assert load_yaml(text, "f.yaml") == yaml.safe_load(text)
    assert load_yaml(text, "f.yaml")["run"] == {"lr": 0.1, "epochs": 5}
    assert issubclass(StrictSafeLoader, yaml.SafeLoader)


def test_other_yaml_errors_name_the_source():
    with pytest.raises(yaml.YAMLError, match='in "cfg.yaml", line 1'):
        load_yaml("a: [1, 2\n", "cfg.yaml")


def test_config_file_with_a_key_given_twice_names_file_key_and_lines(tmp_path: Path):
    path = tmp_path / "pretrain.yaml"
    path.write_text("epochs: 1\narch: resnet18\nepochs: 500\n")
    with pytest.raises(ValueError) as err:
        load_config_file(TinyConfig, path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: epochs: key 'epochs' is given twice (lines 1 and 3)"), msg
    assert "delete one of them" in msg


def test_config_file_without_duplicates_still_loads_with_overrides(tmp_path: Path):
    path = tmp_path / "pretrain.yaml"
    path.write_text("epochs: 1\narch: resnet18\n")
    config = load_config_file(TinyConfig, path, ["epochs=3", "crops=[{count: 2}]"])
    assert config_to_dict(config) == {"epochs": 3, "arch": "resnet18", "crops": [{"count": 2}]}


def test_set_given_twice_for_one_key_is_refused():
    with pytest.raises(ValueError, match=r"--set 'epochs=500': 'epochs' is already set by --set 'epochs=1'"):
        parse_overrides(["epochs=1", "arch=resnet18", "epochs=500"])


def test_set_value_with_a_key_given_twice_is_refused():
    with pytest.raises(ValueError, match=r"--set 'crops=\[\{count: 2, count: 6\}\]': \[0\]\.count: key 'count' is "
                                         r"given twice"):
        parse_overrides(["crops=[{count: 2, count: 6}]"])


# ---------------------------------------------------------------------------
# Devices: what a trial given GPUs by Ray trains on
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("value, ids", [(None, []), ("", []), ("0", ["0"]), ("2, 3", ["2", "3"]), ("1,-1,2", ["1"]),
                                        ("GPU-5f1e,GPU-aa02", ["GPU-5f1e", "GPU-aa02"])])
def test_assigned_gpus_reads_cuda_visible_devices_as_cuda_does(monkeypatch, value, ids) -> None:
    from trainers.common import assigned_gpus

    if value is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert assigned_gpus() == ids


def test_an_assigned_gpu_torch_cannot_use_falls_back_to_the_cpu_with_one_warning(monkeypatch, caplog) -> None:
    import torch

    from trainers import common

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(common, "_warned_unusable", set())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with caplog.at_level("WARNING", logger="trainers.common"):
        assert common.default_device() == torch.device("cpu")
        assert common.default_device() == torch.device("cpu")
    warnings = [r.getMessage() for r in caplog.records if r.name == "trainers.common"]
    assert len(warnings) == 1 and "GPU 1 assigned" in warnings[0] and "training on the CPU" in warnings[0]
    assert common.device_note(torch.device("cpu")) == "cpu (GPU 1 assigned, unusable)"
    assert common.ddp_backend() == "gloo"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    caplog.clear()
    with caplog.at_level("WARNING", logger="trainers.common"):
        assert common.default_device() == torch.device("cpu")  # nothing assigned: the CPU, silently
    assert not caplog.records and common.device_note(torch.device("cpu")) == "cpu"


def test_each_ddp_process_takes_the_gpu_of_its_rank_and_nccl(monkeypatch) -> None:
    """``resources: {processes: 4, gpu: 1}``: Ray gives the trial four GPUs, each DDP process its own."""
    import torch

    from trainers import common

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    for rank in range(4):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert common.default_device() == torch.device("cuda", rank)
    assert common.ddp_backend() == "nccl"
    monkeypatch.setenv("LOCAL_RANK", "4")  # a fifth process on four GPUs: refused, with the fix
    with pytest.raises(RuntimeError, match=r"rank 4 needs a GPU of its own but only 4 are visible.*resources\.gpu: 1"):
        common.default_device()
