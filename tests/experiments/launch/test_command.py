"""experiments.launch.command: ``ablate launch``'s arguments and how they become the launch's options, its checks,
the shipped space ``ablate demo`` runs, and the demo's verdict where there is nothing to judge."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

import experiments.launch as launch_pkg
from experiments.launch.command import default_space, demo_verdict, register, register_demo, run_demo, run_launch

ROOT = Path(__file__).resolve().parents[3]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub, "launch", "run a study", common)
    register_demo(sub, "demo", "the demo", common)
    return parser


@pytest.fixture
def launched(monkeypatch):
    """``experiments.launch.launch`` replaced: what it was called with, and the exit code it hands back."""
    calls: list[tuple] = []

    def fake_launch(space, options):
        calls.append((space, options))
        return SimpleNamespace(exit_code=130)

    monkeypatch.setattr(launch_pkg, "launch", fake_launch)
    return calls


def test_the_command_line_becomes_the_launchs_options(launched):
    args = _parser().parse_args(["launch", "space.yaml", "--tracking-uri", "sqlite:///s.db", "--storage-path",
                                 "s3://team/ray", "--name", "other", "--resume", "--max-concurrent", "3",
                                 "--address", "ray://head:10001", "--optuna-storage", "sqlite:///o.db", "--no-register",
                                 "--keep-checkpoints", "--notify", "true", "--quiet", "--num-gpus", "0.5"])
    assert args.run is run_launch and run_launch(args) == 130  # the launch's exit code is the command's
    [(space, options)] = launched
    assert space == Path("space.yaml")
    assert (options.tracking_uri, options.storage_path, options.name, options.resume, options.max_concurrent,
            options.address, options.optuna_storage, options.register, options.keep_checkpoints, options.notify,
            options.quiet, options.num_gpus, options.dry_run) == (
        "sqlite:///s.db", "s3://team/ray", "other", True, 3, "ray://head:10001", "sqlite:///o.db", False, True, "true",
        True, 0.5, False)
    defaults = _parser().parse_args(["launch", "space.yaml", "--dry-run"])
    run_launch(defaults)
    options = launched[-1][1]
    assert options.dry_run and options.register and options.max_concurrent is None and options.num_gpus is None


@pytest.mark.parametrize("flag, value, message", [
    ("--max-concurrent", "0", "--max-concurrent 0: must be >= 1"),
    ("--num-gpus", "-1", "--num-gpus -1: must be >= 0"),
])
def test_impossible_numbers_are_refused_before_the_launch(launched, flag, value, message):
    args = _parser().parse_args(["launch", "space.yaml", flag, value])
    with pytest.raises(ValueError, match=message):
        run_launch(args)
    assert launched == []


def test_the_demo_runs_the_local_space_else_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_space("smoke.yaml") == ROOT / "search_spaces" / "smoke.yaml"
    assert default_space("smoke.yaml").is_file()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "smoke.yaml").write_text("name: mine\n")
    assert default_space("smoke.yaml") == Path("search_spaces") / "smoke.yaml"
    assert _parser().parse_args(["demo"]).run is run_demo


def test_no_verdict_without_a_launch_run_or_a_store(tmp_path):
    result = SimpleNamespace(parent_run_id=None, study="s", outcomes=[])
    assert demo_verdict(result, f"sqlite:///{tmp_path / 'mlflow.db'}") == []
    missing = tmp_path / "nothing_here" / "mlflow.db"
    assert demo_verdict(SimpleNamespace(parent_run_id="r1", study="s", outcomes=[]), f"sqlite:///{missing}") == []
    assert not missing.exists()  # looking did not create a store
