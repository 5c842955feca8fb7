"""trainers/common/provenance.py: seeds derived from integers, the RNG states a resumed run restores, and the code
version a run records."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainers.common import provenance
from trainers.common.provenance import derive_seed, git_sha, rng_state, seed_everything, set_rng_state


def test_derived_seeds_are_stable_63_bit_and_differ_by_every_part() -> None:
    seed = derive_seed(7, 3, 2, 0)
    assert seed == derive_seed(7, 3, 2, 0) and 0 <= seed < 2**63
    assert len({seed, derive_seed(7, 3, 2, 1), derive_seed(7, 4, 2, 0), derive_seed(8, 3, 2, 0)}) == 4
    random.seed(1)
    before = derive_seed(5)
    random.seed(2)  # independent of the global RNG state
    assert derive_seed(5) == before


def test_restoring_the_rng_state_replays_python_numpy_and_torch() -> None:
    seed_everything(11)
    state = rng_state()
    assert all(isinstance(v, (torch.Tensor, int, float, str, list)) for v in state["numpy"])  # no pickled objects
    first = (random.random(), float(np.random.rand()), torch.rand(3))
    seed_everything(99)  # moves every generator elsewhere
    set_rng_state(state)
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_the_recorded_code_version_prefers_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABLATE_GIT_SHA", "0123abc")
    assert git_sha() == "0123abc"
    monkeypatch.delenv("ABLATE_GIT_SHA")
    sha = git_sha()  # this checkout's HEAD, or 'unknown' in a copy without git
    assert sha == "unknown" or (len(sha) == 40 and int(sha, 16) >= 0)
    assert provenance._checkout_sha() == sha
