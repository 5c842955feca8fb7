"""The fixture every experiments test that writes runs shares: an empty MLflow sqlite store to copy (``new_store``:
its schema takes 1-2 s to create, a copy milliseconds), its schema built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="session")
def new_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], str]:
    """``new_store(folder)``: a fresh, empty MLflow sqlite store at ``folder/mlflow.db``; returns its tracking URI."""
    template = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()  # creates the schema

    def make(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"

    return make
