"""What every part of a launch shares, and what a launch hands back.

:class:`LaunchContext` is passed down to the parts of :mod:`experiments.launch` (the ledger, the launch run,
the stage runner) instead of the :class:`~experiments.launch.launcher.Launcher`: the space, the options,
the store and where the launch keeps its files, and one way to print a progress line. It imports no Ray.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from experiments.spaces import Plan, StageSpec, StudySpec

if TYPE_CHECKING:  # type hints only: the tracker's module loads MLflow
    from experiments.store.tracking import Tracker


class LaunchError(RuntimeError):
    """The launch itself broke (not a single trial)."""


class LaunchSetupError(ValueError):
    """The launch cannot start as asked (unreachable store, a cluster too small); the CLI exits 2."""


@dataclass
class LaunchOptions:
    """Command-line options of ``ablate launch``."""

    tracking_uri: str | None = None
    storage_path: str | None = None
    name: str | None = None
    dry_run: bool = False
    resume: bool = False
    max_concurrent: int | None = None
    address: str | None = None
    optuna_storage: str | None = None
    max_failures: int = 2
    register: bool = True
    keep_checkpoints: bool = False  # keep finished trials' training states (default: exported model only)
    notify: str | None = None  # shell command run when the launch ends or a trial fails (experiments.launch.control.notify)
    quiet: bool = False  # print the summary only, no progress lines
    num_gpus: float | None = None  # GPUs the local Ray node declares (default: those torch sees); --num-gpus
    out: TextIO = field(default_factory=lambda: sys.stdout)


@dataclass
class TrialOutcome:
    """How one trial ended, for the summary and the parent run's counts."""

    stage: str
    name: str
    config_hash: str
    run_id: str
    status: str  # done | reused | pruned | failed | skipped | stopped
    metrics: dict[str, float] = field(default_factory=dict)
    epochs_run: int = 0
    epochs_budget: int = 0
    reason: str = ""


@dataclass
class LaunchResult:
    """What a launch did."""

    study: str
    parent_run_id: str | None
    outcomes: list[TrialOutcome]
    exit_code: int
    plan: Plan | None = None
    data: dict[str, str] | None = None  # the data set's resolved paths (DATA_PATH_KEYS -> path)


@dataclass
class LaunchContext:
    """One launch's settings and shared handles.

    Attributes:
        spec: the validated space.
        options: the command line's options.
        tracking_uri: the store (credentials from the environment applied).
        storage: Ray's storage path (a folder or a URI).
        local_storage: where this machine keeps generated data and downloaded backbones.
        optuna_storage: the Optuna database of the pruner and the `tpe` sampler.
        max_concurrent: trials at once.
        launch_id: this launch's id (time and a random suffix).
        git_sha: the code's commit.
        data_paths: the data set's resolved paths (set when the launch plans).
        data_fingerprint: the data set's digest, part of every config hash (set when the launch plans).
        parent_run_id: the launch's own MLflow run (set once it exists).
    """

    spec: StudySpec
    options: LaunchOptions
    tracking_uri: str
    storage: str
    local_storage: Path
    optuna_storage: str
    max_concurrent: int
    launch_id: str
    git_sha: str
    data_paths: dict[str, str] = field(default_factory=dict)
    data_fingerprint: str = ""
    parent_run_id: str | None = None
    t0: float = field(default_factory=time.time)
    _tracker: Tracker | None = None

    @property
    def tracker(self) -> Tracker:
        """The study's MLflow writer (opened when the launch runs)."""
        if self._tracker is None:
            raise LaunchError("the tracking store is not open yet: Launcher.run() opens it")
        return self._tracker

    @tracker.setter
    def tracker(self, tracker: Tracker) -> None:
        self._tracker = tracker

    def say(self, text: str) -> None:
        """One progress line, with the seconds since the launch started."""
        if self.options.quiet:
            return
        elapsed = time.time() - self.t0
        print(f"[{elapsed:6.0f}s] {text}", file=self.options.out, flush=True)


def stage_section(spec: StudySpec, stage: str) -> StageSpec:
    """The space's section of ``stage`` (``pretrain`` or ``finetune``: trainers.vocabulary's stage names)."""
    return getattr(spec, stage)
