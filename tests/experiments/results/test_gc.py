"""experiments/results/gc.py: `ablate gc STUDY` on a local Ray storage path laid out by hand. It deletes every
``checkpoint_*`` folder of the study except the one an unfinished trial resumes from, an experiment folder with no
such state left, and the backbone cache; other studies' folders and the tracking store stay; a running launch, an
unknown study or a missing store are refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from experiments.results.gc import GcError, collect, gc
from experiments.store.tracking import Tracker
from trainers.vocabulary import TAG_CHECKPOINT, TAG_STAGE

STUDY = "gcstudy"
A, B, C = "20261208-010203-aaaaaa", "20261208-020304-bbbbbb", "20261208-030405-cccccc"  # launch ids
# every folder of the layout: (path under the storage root, bytes of its one file)
LAYOUT = {
    f"{STUDY}-pretrain-{A}/trial_a/checkpoint_000001": 100,
    f"{STUDY}-pretrain-{A}/trial_a/checkpoint_000002": 200,  # trial A finished: nothing resumes from it
    f"{STUDY}-finetune-{A}/trial_b/checkpoint_000002": 300,
    f"{STUDY}-finetune-{A}/trial_b/checkpoint_000003": 400,  # trial B stopped: `ablate launch` resumes from this
    f"{STUDY}-finetune-{A}/trial_c/checkpoint_000001": 500,
    f"{STUDY}-finetune-{B}/trial_d/checkpoint_000001": 600,  # an older launch: no state kept in it
    "backbones/res18_ep2_p30": 700,
    f"other-pretrain-{A}/trial_x/checkpoint_000001": 800,  # another study's
    f"{STUDY}-pretrain-finetune-{B}/trial_y/checkpoint_000001": 50,  # study gcstudy-pretrain's, not this study's
}
ELSEWHERE = f"{STUDY}-pretrain-{C}/trial_e/checkpoint_000001"  # under the storage_path a launch recorded


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, new_store: Callable[[Path], str]) -> dict[str, Any]:
    """A store with the study's two finished launches (one recorded its own storage_path) and trials A and B, a
    study whose launch is still running, and the two storage roots (laid out again for every test by ``storage``)."""
    root = tmp_path_factory.mktemp("gc")
    uri = new_store(root)
    default, recorded = root / "ray", root / "team-ray"
    tracker = Tracker(uri, STUDY)
    first = tracker.create_run("launch 1", {TAG_STAGE: "launch"})
    tracker.finish(first)
    second = tracker.create_run("launch 2", {TAG_STAGE: "launch"})
    tracker.log_params_tags(second, params={"storage_path": str(recorded)})
    tracker.finish(second)
    run_a = tracker.create_run("a", {TAG_STAGE: "pretrain",
                                     TAG_CHECKPOINT: str(default / f"{STUDY}-pretrain-{A}/trial_a/checkpoint_000002")},
                               parent_run_id=first)
    tracker.finish(run_a)
    run_b = tracker.create_run("b", {TAG_STAGE: "finetune",
                                     TAG_CHECKPOINT: str(default / f"{STUDY}-finetune-{A}/trial_b/checkpoint_000003")},
                               parent_run_id=first)
    tracker.finish(run_b, "KILLED")
    busy = Tracker(uri, "busy")
    busy.create_run("launch", {TAG_STAGE: "launch"})  # RUNNING and just started: its driver is at work
    return {"uri": uri, "default": default, "recorded": recorded, "b": run_b}


@pytest.fixture
def storage(lab: dict[str, Any]) -> dict[str, Any]:
    """The layout, fresh: each folder holding one file of its size."""
    for folder, size in [*((lab["default"] / k, v) for k, v in LAYOUT.items()), (lab["recorded"] / ELSEWHERE, 900)]:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "state.bin").write_bytes(bytes(size))
    (lab["default"] / f"{STUDY}-pretrain-{A}" / "tuner.pkl").write_bytes(bytes(10))
    return lab


def _folders(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


def test_collect_keeps_only_the_state_an_unfinished_trial_resumes_from(storage: dict[str, Any]) -> None:
    default = storage["default"]
    plan = collect(storage["uri"], STUDY, default)
    assert plan.remove == [
        default / f"{STUDY}-pretrain-{A}",  # no state kept in it: the whole experiment folder, tuner.pkl and all
        default / f"{STUDY}-finetune-{A}/trial_b/checkpoint_000002",
        default / f"{STUDY}-finetune-{A}/trial_c/checkpoint_000001",
        default / f"{STUDY}-finetune-{B}",
        default / "backbones",
        storage["recorded"] / f"{STUDY}-pretrain-{C}",  # the launch's own storage_path is walked too
    ]
    assert plan.keep == {default / f"{STUDY}-finetune-{A}/trial_b/checkpoint_000003": storage["b"]}
    assert plan.size() == 100 + 200 + 10 + 300 + 500 + 600 + 700 + 900 and plan.skipped == []
    assert (default / f"{STUDY}-pretrain-{A}").is_dir()  # collect only looks


def test_dry_run_lists_then_gc_deletes_and_keeps_the_rest(storage: dict[str, Any]) -> None:
    default, before = storage["default"], _folders(storage["default"])
    text = gc(storage["uri"], STUDY, default, dry_run=True)
    lines = text.splitlines()
    assert lines[0] == (f"gc {STUDY}: would free 3.2 KB in 6 folder(s); registered models and the tracking store are "
                        "untouched")
    assert f"  would delete {default / 'backbones'}" in lines
    assert lines[-1] == (f"  kept {default / f'{STUDY}-finetune-{A}/trial_b/checkpoint_000003'} "
                         f"(run {storage['b'][:8]} resumes from it)")
    assert _folders(default) == before  # a dry run deletes nothing

    assert gc(storage["uri"], STUDY, default).startswith(f"gc {STUDY}: freed 3.2 KB in 6 folder(s)")
    assert _folders(default) == {
        f"{STUDY}-finetune-{A}", f"{STUDY}-finetune-{A}/trial_b", f"{STUDY}-finetune-{A}/trial_b/checkpoint_000003",
        f"{STUDY}-finetune-{A}/trial_c", f"other-pretrain-{A}", f"other-pretrain-{A}/trial_x",
        f"other-pretrain-{A}/trial_x/checkpoint_000001", f"{STUDY}-pretrain-finetune-{B}",
        f"{STUDY}-pretrain-finetune-{B}/trial_y", f"{STUDY}-pretrain-finetune-{B}/trial_y/checkpoint_000001"}
    assert not (storage["recorded"] / f"{STUDY}-pretrain-{C}").exists()
    assert Path(storage["uri"][len("sqlite:///"):]).is_file()  # the tracking store is not storage
    kept = default / f"{STUDY}-finetune-{A}/trial_b/checkpoint_000003"
    assert gc(storage["uri"], STUDY, default) == (f"gc {STUDY}: nothing to delete; registered models and the tracking "
                                                  f"store are untouched\n  kept {kept} (run {storage['b'][:8]} resumes "
                                                  "from it)")


def test_refusals(lab: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(GcError, match=r"no study 'nope' in the tracking store; `ablate report` lists"):
        collect(lab["uri"], "nope", tmp_path)
    with pytest.raises(GcError, match=r"launch run \w+ of study 'busy' is still running \(driver unknown\); run "
                                      r"`ablate gc busy` after it has ended"):
        gc(lab["uri"], "busy", tmp_path, dry_run=True)
    with pytest.raises(GcError, match="no MLflow store at .*missing/mlflow.db"):
        collect(f"sqlite:///{tmp_path}/missing/mlflow.db", STUDY, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing deleted
