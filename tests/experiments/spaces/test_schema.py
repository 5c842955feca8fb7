"""experiments/spaces/schema.py: the validated study's dataclasses (adaptive seeds and their experiment tag, a
trial's cell, the plan's trials per backbone, missing data paths), the pairing and study-name rules, and errors that
name the file, the key path and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.spaces.schema import (
    PAIRING, STUDY_NAME_RE, AdaptiveSeeds, DataSpec, FinetuneTrial, Plan, SpaceError, _check_keys, _err, _mapping,
)


def test_adaptive_seeds_and_their_tag():
    seeds = AdaptiveSeeds(initial=2, max=8, budget_trials=40)
    assert seeds.initial_seeds == (0, 1) and seeds.all_seeds == tuple(range(8))
    assert seeds.looks == 7  # after the initial wave and after each of the 6 seeds it may add
    assert seeds.tag() == "initial=2,max=8,budget_trials=40" and AdaptiveSeeds.parse(seeds.tag()) == seeds
    assert AdaptiveSeeds.parse("initial=3,max=5") == AdaptiveSeeds(3, 5, None)
    for unreadable in (None, "", "initial=2", "initial=two,max=8", "max=8"):  # a fixed-seeds study
        assert AdaptiveSeeds.parse(unreadable) is None


def _trial(name: str, upstream: str | None, backbone: str, group: str | None = None, group_name: str = "") -> FinetuneTrial:
    return FinetuneTrial({}, upstream, 0, f"h-{name}", name, backbone, group, group_name)


def test_a_trials_cell_and_the_plans_trials_per_backbone():
    seeded = _trial("res18_ep2_p30_s1 · bn · mlp · 357 · seed0", "bb1", "res18_ep2_p30_s1", "group", "res18_ep2_p30")
    assert seeded.cell_upstream == "group" and seeded.cell_name == "res18_ep2_p30 · bn · mlp · 357 · seed0"
    plain = _trial("res18_ep2_p30 · bn · mlp · 357 · seed0", "bb2", "res18_ep2_p30")
    assert plain.cell_upstream == "bb2" and plain.cell_name == plain.name
    scratch = _trial("scratch_res18 · bn · mlp · uniform · seed0", None, "scratch_res18")
    plan = Plan(None, "fp", [], [seeded, plain, scratch], [], 0)  # type: ignore[arg-type] - no spec needed here
    assert plan.finetune_for("bb2") == [plain] and plan.finetune_for(None) == [scratch]
    assert plan.finetune_for("unknown") == [] and plan.warnings == [] and plan.reserve == []


def test_missing_data_paths(tmp_path: Path):
    (tmp_path / "train").mkdir()
    paths = dict(unlabeled=tmp_path / "u", train_images=tmp_path / "train", train_annotations=tmp_path / "a.json",
                 val_images=tmp_path / "train", val_annotations=tmp_path / "v.json")
    assert DataSpec(**paths).missing() == ["unlabeled", "train_annotations", "val_annotations"]
    assert DataSpec(**paths, sample=("small", 0, "shapes", 1)).missing() == []  # generated at launch


def test_pairing_and_study_names():
    assert PAIRING == {"bn": "bn", "frozen_bn": "bn", "frozen_affine": "bn", "gn": "gn"}  # GN weights need GN layers
    for good in ("norm_type", "paper.v2-run_3", "7"):
        assert STUDY_NAME_RE.fullmatch(good)
    for bad in ("-lead", "_lead", "a/b", "a@b", "two words", ""):
        assert not STUDY_NAME_RE.fullmatch(bad)


def test_errors_name_the_file_the_key_path_and_the_fix(tmp_path: Path):
    path = tmp_path / "s.yaml"
    err = _err(path, "pretrain.grid.prototypes[1]", "prototypes=0 is invalid", "use a positive count")
    assert isinstance(err, ValueError) and str(err) == (
        f"{path}: pretrain.grid.prototypes[1]: prototypes=0 is invalid — use a positive count")
    with pytest.raises(SpaceError, match=rf"^{path}: pretrain: unknown key 'gird' \(did you mean 'grid'\?\)$"):
        _check_keys(path, "pretrain", {"fixed": {}, "gird": {}}, ("fixed", "grid", "cases"))
    assert _mapping(path, "pretrain.fixed", None) == {} and _mapping(path, "x", {"a": 1}) == {"a": 1}
    with pytest.raises(SpaceError, match=rf"^{path}: pretrain.fixed: expected a mapping, got list \[1, 2\]$"):
        _mapping(path, "pretrain.fixed", [1, 2])
