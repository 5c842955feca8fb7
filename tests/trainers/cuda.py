"""The CUDA-only tests' mark: skipped without a CUDA device, selected by ``pytest -m cuda`` (``bench device``)."""

from __future__ import annotations

from typing import Callable, TypeVar

import pytest
import torch

F = TypeVar("F", bound=Callable[..., object])


def cuda_only(test: F) -> F:
    """Mark ``test`` as needing CUDA: ``cuda`` for selection, skipped where torch sees no device."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))
