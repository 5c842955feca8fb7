"""Fixtures of the launch's unit tests: a store of each test's own (a copy of one empty store) and a tiny
study's launch context writing to it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest


@pytest.fixture
def store_uri(new_store: Callable[[Path], str], tmp_path: Path) -> str:
    """A fresh copy of the empty store (tests/experiments/conftest.py) at ``tmp_path/mlruns/mlflow.db``; its URI."""
    return new_store(tmp_path / "mlruns")


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
