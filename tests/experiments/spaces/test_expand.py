"""experiments/spaces/expand.py: a study expanded into unique pretraining runs and norm-paired fine-tuning trials
(deduplicated, hashed by what changes a result), the data a launch trains on, and what a scratch trunk may not do."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments import spaces
from experiments.spaces import SpaceError, load_space
from experiments.spaces.expand import expand
from tests.experiments.spaces.helpers import SPACES, sample_paths, smoke_with, write_sample_space


def test_dedup_and_hash_stability(tmp_path, sample_data):
    space = {
        "name": "dedup", "data": {"root": str(sample_data.root)}, "seeds": [0, 1],
        "pretrain": {"fixed": {"arch": "resnet18", "epochs": 2},
                     # the same config twice (3000 is the default), plus `workers`, which does not change results
                     "cases": [{"prototypes": 3000}, {"workers": 1}, {"prototypes": 100}]},
        "finetune": {"fixed": {"epochs": 1}},
    }
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(space))
    spec = load_space(f)
    plan = expand(spec, "fp", sample_paths(sample_data))
    assert plan.requested_pretrain == 3 and len(plan.pretrain) == 2
    again = expand(load_space(f), "fp", sample_paths(sample_data))
    assert [t.config_hash for t in again.pretrain] == [t.config_hash for t in plan.pretrain]
    other_data = expand(spec, "other-fingerprint", sample_paths(sample_data))
    assert not {t.config_hash for t in other_data.pretrain} & {t.config_hash for t in plan.pretrain}
    assert len(plan.finetune) == 2 * 2  # two backbones x two seeds


def test_resolve_data_generates_digits_in_their_own_folder(tmp_path, sample_data):
    from experiments.launch import resolve_data

    spec = load_space(write_sample_space(tmp_path, {"kind": "digits"}, sample_data))
    paths, fingerprint = resolve_data(spec, tmp_path / "storage")
    assert Path(paths["val_annotations"]).is_relative_to(tmp_path / "storage" / "data" / "sample-digits-small-0")
    assert fingerprint and "sample small/0 (digits)" in spaces._describe_data(spec.data)


def test_a_supervised_backbone_is_one_more_pretraining_run_and_swav_runs_keep_their_hashes(tmp_path, sample_data):
    """``method: supervised`` (the positive control) plans as one more backbone, named for its method, with its labels
    file in its identity; the SwAV runs beside it hash as they did before the method existed."""
    from experiments.launch import resolve_data

    def plan(cases):
        path = write_sample_space(tmp_path, {"kind": "digits"}, sample_data)
        body = yaml.safe_load(path.read_text())
        body["pretrain"]["cases"] = cases
        path.write_text(yaml.safe_dump(body))
        spec = load_space(path)
        paths, fingerprint = resolve_data(spec, tmp_path / "storage")
        return expand(spec, fingerprint, paths), paths

    before, _ = plan([{}])
    after, paths = plan([{}, {"method": "supervised"}, {"method": "supervised", "prototypes": 77}])
    swav, supervised = after.pretrain  # the two supervised cases differ in a SwAV-only field: one run
    assert swav.config_hash == before.pretrain[0].config_hash and swav.config["method"] == "swav"
    assert supervised.name.endswith("_supervised") and supervised.config["method"] == "supervised"
    assert {t.upstream_hash for t in after.finetune} >= {swav.config_hash, supervised.config_hash}
    labels = Path(paths["unlabeled"]) / "labels.json"
    labels.write_text(labels.read_text().replace(': "1"', ': "7"', 1))  # one image's class changed
    changed, _ = plan([{}, {"method": "supervised"}])
    assert changed.pretrain[0].config_hash == swav.config_hash
    assert changed.pretrain[1].config_hash != supervised.config_hash


def test_world_size_is_part_of_a_run_s_identity(tmp_path, sample_data):
    def more_workers(d):
        d["pretrain"]["resources"]["processes"] = 2
        d["pretrain"]["resources"]["cpu"] = 1
    one = expand(load_space(SPACES / "smoke.yaml"), "fp", sample_paths(sample_data))
    two = expand(load_space(smoke_with(tmp_path, more_workers)), "fp", sample_paths(sample_data))
    assert {t.config_hash for t in one.pretrain}.isdisjoint(t.config_hash for t in two.pretrain)
    # the fine-tuning runs on those backbones differ with them; the scratch ones stay the same
    scratch = lambda plan: {t.config_hash for t in plan.finetune if t.upstream_hash is None}  # noqa: E731
    assert scratch(one) == scratch(two)


def test_pretraining_runs_get_the_labeled_set_for_the_knn_monitor_outside_their_identity(tmp_path, sample_data):
    plan = expand(load_space(SPACES / "smoke.yaml"), "fp", sample_paths(sample_data))
    for t in plan.pretrain:
        assert (t.config["knn_train_images"], t.config["knn_val_annotations"]) == (
            str(sample_data.train_images), str(sample_data.val_annotations))

    def monitor_settings(d):
        d["pretrain"]["fixed"].update(knn_every=3, knn_k=10, knn_max_objects=50)
    changed = expand(load_space(smoke_with(tmp_path, monitor_settings)), "fp", sample_paths(sample_data))
    # The monitor reads the trunk and never trains it: same runs, same hashes, same fine-tuning trials.
    assert [t.config_hash for t in changed.pretrain] == [t.config_hash for t in plan.pretrain]
    assert [t.config_hash for t in changed.finetune] == [t.config_hash for t in plan.finetune]
    assert changed.pretrain[0].config["knn_every"] == 3

    def set_path(d):
        d["pretrain"]["fixed"]["knn_train_images"] = "/elsewhere"
    with pytest.raises(spaces.SpaceError, match="pretrain.fixed.knn_train_images.*top-level `data`"):
        load_space(smoke_with(tmp_path, set_path))


def test_scratch_with_frozen_bn_is_refused_naming_the_field(tmp_path, sample_data, capsys):
    from experiments import cli

    def edit(d):
        d["finetune"]["cases"][2]["norm"] = "frozen_bn"
    path = smoke_with(tmp_path, edit)
    with pytest.raises(SpaceError, match=r"finetune\.cases\[2\]\.norm: norm='frozen_bn'.*identity.*norm: bn"):
        expand(load_space(path), "fp", sample_paths(sample_data))
    assert cli.main(["launch", str(path), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "finetune.cases[2].norm" in capsys.readouterr().err


@pytest.mark.parametrize("change, words", [
    ({"norm": "frozen_affine"}, "frozen_affine"),
    ({"lr_scheme": "357"}, "357"),
    ({"lr_scheme": "frozen"}, "lr_scheme: frozen"),
])
def test_dry_run_warns_when_a_scratch_trunk_would_stay_untrained(tmp_path, sample_data, change, words):
    def edit(d):
        d["finetune"]["cases"][2].update(change)
    plan = expand(load_space(smoke_with(tmp_path, edit)), "fp", sample_paths(sample_data))
    assert len(plan.warnings) == 1 and words in plan.warnings[0] and "finetune.cases[2]" in plan.warnings[0]
    assert "warnings (1):" in spaces.format_plan(plan)
