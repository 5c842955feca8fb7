"""Reproducibility and provenance: seeds derived from integers, every RNG state a resumed run needs (as tensors
and plain values, no pickles), and the code version a run records."""

from __future__ import annotations

import functools
import hashlib
import os
import random
import subprocess
from pathlib import Path
from typing import Any, Mapping

import numpy as np

def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. ``(seed, epoch, rank)``), independent of global RNG state."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state a resumed run needs, as tensors and plain values (no pickles)."""
    import torch

    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1].numpy(), dtype=np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def git_sha() -> str:
    """The code version: ABLATE_GIT_SHA if set (e.g. in a container, or a copy of the tree without git), else ``git
    rev-parse HEAD`` of the checkout (asked once per process), else 'unknown'. A tree with no ``.git`` (a copy)
    never runs git."""
    if os.environ.get("ABLATE_GIT_SHA"):
        return os.environ["ABLATE_GIT_SHA"]
    return _checkout_sha()


@functools.lru_cache(maxsize=1)
def _checkout_sha() -> str:
    root = Path(__file__).resolve().parents[2]  # trainers/common/ -> the checkout
    if not (root / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=root)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
