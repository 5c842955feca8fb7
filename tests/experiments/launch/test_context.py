"""experiments.launch.context: the launch's options and outcomes, and the LaunchContext every part shares (its
progress lines, its tracker before and after the store is open, a stage's section of the space)."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments.launch.context import (
    LaunchContext,
    LaunchError,
    LaunchOptions,
    LaunchSetupError,
    TrialOutcome,
    stage_section,
)
from trainers.vocabulary import STAGE_FINETUNE, STAGE_PRETRAIN


def _ctx(**options) -> LaunchContext:
    spec = SimpleNamespace(pretrain="the pretrain section", finetune="the finetune section")
    return LaunchContext(spec=spec, options=LaunchOptions(**options), tracking_uri="sqlite:///x.db",  # type: ignore[arg-type]
                         storage="/ray", local_storage=Path("/ray"),
                         optuna_storage="sqlite:///optuna.db", max_concurrent=2, launch_id="20260101-000000-abcdef",
                         git_sha="abc")


def test_the_tracker_is_there_only_once_the_launch_opened_the_store():
    ctx = _ctx()
    with pytest.raises(LaunchError, match="the tracking store is not open yet: Launcher.run"):
        ctx.tracker  # noqa: B018
    tracker = object()
    ctx.tracker = tracker  # type: ignore[assignment]
    assert ctx.tracker is tracker


def test_a_progress_line_carries_the_seconds_since_the_start_and_quiet_prints_none():
    out = io.StringIO()
    ctx = _ctx(out=out)
    ctx.t0 -= 42
    ctx.say("pretrain start   res18")
    assert re.fullmatch(r"\[ {4}4[23]s\] pretrain start   res18\n", out.getvalue())
    quiet = io.StringIO()
    _ctx(out=quiet, quiet=True).say("anything")
    assert quiet.getvalue() == ""


def test_defaults_outcomes_and_sections():
    options = LaunchOptions()
    assert (options.register, options.keep_checkpoints, options.dry_run, options.max_failures) == (True, False, False, 2)
    assert options.out is sys.stdout
    a, b = TrialOutcome(STAGE_PRETRAIN, "a", "h", "r", "done"), TrialOutcome(STAGE_PRETRAIN, "b", "h2", "r2", "done")
    a.metrics["swav/loss"] = 1.0
    assert b.metrics == {} and (a.epochs_run, a.epochs_budget, a.reason) == (0, 0, "")  # no shared default
    assert issubclass(LaunchSetupError, ValueError) and issubclass(LaunchError, RuntimeError)  # the CLI exits 2 / 1
    ctx = _ctx()
    assert stage_section(ctx.spec, STAGE_PRETRAIN) == "the pretrain section"
    assert stage_section(ctx.spec, STAGE_FINETUNE) == "the finetune section"
    assert ctx.data_paths == {} and ctx.parent_run_id is None
