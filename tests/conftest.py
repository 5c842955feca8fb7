"""Shared fixtures, each built once per session: the generated `small` sample data set, the smoke launch and the
planted-collapse launch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# Two cores here: more threads than cores only adds contention.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def private_tmpdir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One temporary folder for everything the suite starts: ``TMPDIR`` for this process and its children.

    Ray's session folders (``$TMPDIR/ray``), Ray's checkpoint copies and a trainer's checkpoint
    staging folder land here instead of ``/tmp``; a launch the tests kill with SIGKILL cannot clean
    its own, so the suite does, unless a test failed (then the folder is kept, like pytest's own).
    Short (``/tmp/ablate-t…``): Ray's socket paths have a length limit.
    """
    tmp_path_factory.getbasetemp()  # pytest's folders stay where pytest keeps them
    folder = tempfile.mkdtemp(prefix="ablate-t", dir="/tmp" if os.path.isdir("/tmp") else None)
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = folder
    yield Path(folder)
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]
    tempfile.tempdir = saved[1]
    if request.session.testsfailed == 0:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory):
    """The deterministic `small` sample data set (unlabeled folder + COCO train/val)."""
    from trainers.data import generate_sample

    root: Path = tmp_path_factory.mktemp("sample")
    return generate_sample(root, seed=0, size="small")


@pytest.fixture(scope="session")
def planted_collapse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """``ablate launch`` of the planted-collapse grid (experiments/testing/spaces.py: 7 epochs, pruning on) in a fresh folder.

    One launch serves test_launch (what the launch records) and test_bench (the pruning benchmark
    reads the same store). Returns (the folder, with its own ``mlruns/``; the study; the launch's stdout).
    """
    from experiments.testing.spaces import planted_collapse_space, write_space

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

    Shared by tests/e2e/test_launch.py (what the launch records) and tests/e2e/test_ui_browser.py (the MLflow UI on
    it, in Chromium).
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
