"""Fixtures of the launch's unit tests: an empty MLflow store, its schema built once per session.

MLflow creates and migrates a sqlite store's tables in seconds; a copy of one empty store costs
milliseconds, so every test that writes runs gets a store of its own without that cost.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite store with its tables and no experiment besides MLflow's default one."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # creates the tables
    return db


@pytest.fixture
def store_uri(empty_store: Path, tmp_path: Path) -> str:
    """A fresh copy of the empty store at ``tmp_path/mlruns/mlflow.db`` (artifacts beside it); its URI."""
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(empty_store, db)
    return f"sqlite:///{db}"


@pytest.fixture
def launch_ctx(tmp_path: Path, store_uri: str):
    """Make the LaunchContext of a tiny study (experiments/testing/spaces.py) whose tracker writes to ``store_uri``.

    ``make(name, options=None, **space)``: ``space`` goes to ``tiny_space``; the study's Ray storage is
    ``tmp_path/ray``. No launch runs: the tests drive the launch's parts by hand.
    """
    import io

    from experiments import spaces
    from experiments.launch.context import LaunchContext, LaunchOptions
    from experiments.store.tracking import Tracker
    from experiments.testing.spaces import tiny_space, write_space

    def make(name: str = "study", options: LaunchOptions | None = None, **space) -> LaunchContext:
        spec = spaces.load_space(write_space(tmp_path, tiny_space(name, **space)))
        ctx = LaunchContext(spec=spec, options=options or LaunchOptions(out=io.StringIO()), tracking_uri=store_uri,
                            storage=str(tmp_path / "ray"), local_storage=tmp_path / "ray",
                            optuna_storage=f"sqlite:///{tmp_path / 'optuna.db'}", max_concurrent=spec.max_concurrent,
                            launch_id="20260101-000000-abcdef", git_sha="0123abc", data_fingerprint="fp")
        ctx.tracker = Tracker(store_uri, spec.name)
        return ctx

    return make
