"""experiments/spaces/parse.py: `load_space` reads a space file, and every broken one fails naming the file, the key
path and the fix (unknown keys, bad values, keys given twice, study names the registry cannot parse back)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments import spaces
from experiments.spaces import SpaceError, expand
from experiments.spaces.parse import load_space
from tests.experiments.spaces.helpers import SPACES, write_base, write_sample_space


BROKEN = [
    ({"pretrian": {}}, "<top level>: unknown key 'pretrian' (did you mean 'pretrain'?)"),
    ({"pretrain": {"grid": {"prototype": [10, 20]}}}, "pretrain.grid: unknown key 'prototype' (did you mean 'prototypes'?)"),
    ({"pretrain": {"grid": {"prototypes": [10, 0]}}}, "pretrain.grid.prototypes[1]: prototypes=0"),
    ({"pretrain": {"fixed": {"arch": "resnet18", "epochs": 2, "base_lr": -1.0}}}, "pretrain.fixed.base_lr: base_lr=-1.0"),
    ({"pretrain": {"cases": [{"crops": [{"count": 2, "size": 32, "min_scale": 0.5, "max_scale": 1.5}]}]}},
     "pretrain.cases[0].crops"),
    ({"pretrain": {"cases": [{"crops": [{"count": 2, "size": 32, "min_scale": 0.9, "max_scale": 0.5}]}]}},
     "pretrain.cases[0].crops"),
    ({"pretrain": {"fixed": {"arch": "resnet18", "epochs": 2, "queue_length": 64, "queue_start_epoch": 5}}},
     "queue_start_epoch"),
    ({"pretrain": {"grid": {"prototypes": 100}}}, "pretrain.grid.prototypes: a grid axis is a non-empty list"),
    ({"finetune": {"grid": {"norm": ["gn"]}}}, "finetune.grid.norm[0]: norm=gn has no backbone to pair with"),
    ({"finetune": {"grid": {"head": ["mlp", "transformer"]}}}, "finetune.grid.head[1]: head='transformer'"),
    ({"finetune": {"grid": {"base_lr": {"loguniform": [1, 10]}}}}, "distributions need `search: {kind: tpe}`"),
    ({"data": {"root": "/nonexistent/data"}}, "data.unlabeled: /nonexistent/data/unlabeled does not exist"),
    ({"seeds": [0, 0]}, "seeds: duplicate seeds"),
    ({"name": "a/b"}, "name: 'a/b' may not contain"),
    ({"pretrain": {"resources": {"gpu": -1}}}, "pretrain.resources.gpu"),
    ({"pruning": {"patiense": 3}}, "pruning: "),
    ({"finetune": {"cases": [{"backbone": "res18_ep2_p300"}]}}, "did you mean 'res18_ep2_p3000'"),
    ({"storage_path": 5}, "storage_path: expected a folder or an s3:// URI"),
    ({"storage_path": "gs://b/ray"}, "storage_path: 'gs://b/ray' is not a storage this service supports"),
    ({"storage_path": "s3://key:secret@b/ray"}, "storage_path: credentials do not belong in the space file"),
    ({"pretrain": {"cases": [{"method": "supervised"}]}}, "pretrain.cases[0].method: method: supervised needs each "
     "image's class, and"),
    ({"pretrain": {"cases": [{"method": "clip"}]}}, "method='clip' is invalid"),
]


@pytest.mark.parametrize("body,expected", BROKEN, ids=[b[1][:40] for b in BROKEN])
def test_broken_space_names_file_key_and_fix(tmp_path, sample_data, body, expected):
    from experiments.launch import resolve_data

    path = write_base(tmp_path, body, sample_data)
    with pytest.raises(SpaceError) as err:
        spec = load_space(path)
        paths, fp = resolve_data(spec, tmp_path)
        expand(spec, fp, paths)
    msg = str(err.value)
    assert msg.startswith(str(path)), msg
    assert expected in msg, msg


@pytest.mark.parametrize("sample,expected", [
    ({"size": "small"}, ("small", 0, "shapes", 1)),
    ({"kind": "digits", "size": "medium", "seed": 3}, ("medium", 3, "digits", 1)),
    ({"kind": "digits", "size": "medium", "seed": 3, "renderings": 2}, ("medium", 3, "digits", 2)),
])
def test_data_sample_kind(tmp_path, sample_data, sample, expected):
    spec = load_space(write_sample_space(tmp_path, sample, sample_data))
    assert spec.data.sample == expected
    # shapes keep their storage folder name; other kinds are named in it
    assert spaces.sample_folder(*expected) == {"shapes": "sample-small-0", "digits": "sample-digits-medium-3"}[
        expected[2]] + ("-r2" if expected[3] == 2 else "")


def test_data_sample_kind_invalid_names_the_key(tmp_path, sample_data):
    path = write_sample_space(tmp_path, {"kind": "letters"}, sample_data)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "data.sample.kind" in msg and "shapes or digits" in msg, msg


def test_resources_workers_is_read_as_processes_with_a_warning(tmp_path):
    data = yaml.safe_load((SPACES / "smoke.yaml").read_text())
    data["pretrain"]["resources"] = {"cpu": 1, "workers": 2}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.warns(FutureWarning, match=r"pretrain\.resources\.workers is now pretrain\.resources\.processes"):
        assert load_space(path).pretrain.resources.processes == 2
    data["pretrain"]["resources"]["processes"] = 2
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpaceError, match="both processes and workers"):
        load_space(path)


# ---------------------------------------------------------------------------
# Hostile input: keys given twice, study names
# ---------------------------------------------------------------------------

SPACE_HEAD = "name: dup\ndata: {root: /nowhere}\n"


@pytest.mark.parametrize("body,key_path,lines", [
    ("pretrain:\n  fixed:\n    epochs: 1\n    arch: resnet18\n    epochs: 500\n", "pretrain.fixed.epochs", (5, 7)),
    ("name: other\n", "name", (1, 3)),
    ("pretrain:\n  cases:\n    - {prototypes: 10}\n    - prototypes: 20\n      prototypes: 30\n",
     "pretrain.cases[1].prototypes", (6, 7)),
    ("finetune: {grid: {norm: [bn], head: [mlp], norm: [gn]}}\n", "finetune.grid.norm", (3, 3)),
], ids=["pretrain.fixed.epochs", "name", "cases[1].prototypes", "flow mapping"])
def test_space_with_a_key_given_twice_names_file_lines_key_and_fix(tmp_path, body, key_path, lines):
    path = tmp_path / "dup.yaml"
    path.write_text(SPACE_HEAD + body)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    key = key_path.rsplit(".", 1)[-1].split("]")[-1].lstrip(".")
    assert msg.startswith(f"{path}: {key_path}: key '{key}' is given twice ("), msg
    first, second = lines
    assert (f"lines {first} and {second}" if first != second else f"line {first}, columns") in msg, msg
    assert "delete one of them" in msg


BAD_NAMES = ["my+study", "it's", 'say"hi"', "x" * 300, "-lead", "_lead", "two words", "a/b", "a@b", "a:b", "tab\there",
             "ünï"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_study_name_that_the_registry_cannot_parse_is_refused_at_load(tmp_path, sample_data, bad):
    from experiments.results.registry import RegistryError, model_name

    path = write_base(tmp_path, {"name": bad}, sample_data)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: name: "), msg
    assert (repr(bad) if len(bad) < 40 else "300 characters") in msg, msg
    assert "letters, digits, '_', '.' or '-'" in msg and "1-100" in msg
    suggestion = msg.rsplit("e.g. ", 1)[1]
    assert spaces.validate_study_name(suggestion) == suggestion  # the suggested name is itself valid

    # the same value given as `--name` (the override argument) is refused the same way, saying so
    good = write_base(tmp_path, {"name": "fine"}, sample_data)
    with pytest.raises(SpaceError, match=r"name \(given by --name\): "):
        load_space(good, name=bad)
    # and the registry uses the same rule rather than creating a model `pull` cannot parse back
    with pytest.raises(RegistryError, match="study name"):
        model_name(bad, "detector")


@pytest.mark.parametrize("good", ["norm_type", "paper.v2-run_3", "A", "x" * 100])
def test_every_accepted_study_name_gives_model_names_pull_can_parse(tmp_path, sample_data, good):
    from experiments.results.pull import parse_spec
    from experiments.results.registry import model_name

    assert load_space(write_base(tmp_path, {"name": "fine"}, sample_data), name=good).name == good
    for kind in ("detector", "backbone"):
        name = model_name(good, kind)
        assert parse_spec(name) == (name, "champion", None)
        assert parse_spec(f"{name}/3") == (name, None, "3")


def test_space_description_is_the_experiments(tmp_path: Path) -> None:
    import yaml

    from experiments.spaces import SpaceError, load_space
    from experiments.testing.spaces import tiny_space, write_space

    space = tiny_space("described")
    space["description"] = "  K x norm on the sample data  "
    assert load_space(write_space(tmp_path, space)).description == "K x norm on the sample data"
    space["description"] = ["not", "text"]
    path = write_space(tmp_path, space)
    with pytest.raises(SpaceError, match=rf"{path}: description: expected text.*e\.g\. description: "):
        load_space(path)
    del space["description"]
    assert load_space(write_space(tmp_path, space)).description == ""
    assert yaml.safe_load((Path(__file__).resolve().parents[3] / "search_spaces" / "smoke.yaml").read_text())["description"]
