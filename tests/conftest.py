"""Shared fixtures: the generated `small` sample data set, built once per test session."""

from __future__ import annotations

import os
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
