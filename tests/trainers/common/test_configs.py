"""trainers/common/configs.py: YAML that refuses a key given twice, config files and ``--set`` overrides, a config
dataclass as plain values and its hash."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from trainers.common.configs import (
    DuplicateKeyError, StrictSafeLoader, config_to_dict, load_config_file, load_yaml, parse_overrides,
)


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
