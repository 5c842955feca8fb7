"""Shared fixtures, each built once per session: the generated `small` sample data set, the smoke launch and the
planted-collapse launch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Two cores here: more threads than cores only adds contention.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory):
    """The deterministic `small` sample data set (unlabeled folder + COCO train/val)."""
    from trainers.data import generate_sample

    root: Path = tmp_path_factory.mktemp("sample")
    return generate_sample(root, seed=0, size="small")


@pytest.fixture(scope="session")
def planted_collapse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """``ablate launch`` of the planted-collapse grid (tests/spaces.py: 7 epochs, pruning on) in a fresh folder.

    One launch serves test_launch (what the launch records) and test_bench (the pruning benchmark
    reads the same store). Returns (the folder, with its own ``mlruns/``; the study; the launch's stdout).
    """
    from tests.spaces import planted_collapse_space, write_space

    cwd = tmp_path_factory.mktemp("planted_collapse")
    space = planted_collapse_space("prune_study", epochs=7, pruning=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # one torch thread, as in bench/
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "launch", str(write_space(cwd, space))], cwd=cwd,
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, space["name"], proc.stdout


@pytest.fixture(scope="session")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    """`ablate launch search_spaces/smoke.yaml` (the demo's study) once, in a fresh folder with its own mlruns/.

    Shared by test_launch (what the launch records) and test_ui (the MLflow UI on it, in Chromium).
    Returns (the folder, an MlflowClient of its store, the launch's stdout).
    """
    from mlflow.tracking import MlflowClient

    root = Path(__file__).resolve().parents[1]
    cwd = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "launch", str(root / "search_spaces" / "smoke.yaml")],
                          cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    return cwd, client, proc.stdout
