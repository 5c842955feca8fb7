"""The Reporter protocol: how a trainer talks to whatever runs it.

A trainer calls ``report`` once per epoch (or evaluation) with its metrics, the epochs done as
``step`` (both trainers count epochs from 0 in their loops, as the SwAV and torchvision detection
references do, so epoch ``e`` reports step ``e + 1``; a checkpoint's ``epoch`` is the same count), optionally a directory holding a checkpoint it has just written (the reporter
takes a copy: the trainer may delete the directory once ``report`` returns) and files to
log as artifacts. ``should_stop`` lets the runner end a trial early (pruning);
``restore_dir`` points at the checkpoint to resume from.

Adapters for Ray Tune live in ``experiments/``; the in-memory reporter here serves tests
and the single-run commands (``ablate pretrain``, ``ablate finetune``).
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence, TextIO, runtime_checkable


@runtime_checkable
class Reporter(Protocol):
    """What a trainer needs from its runner."""

    def report(
        self,
        metrics: dict[str, float],
        step: int,
        checkpoint_dir: Path | None = None,
        artifacts: Sequence[Path] = (),
    ) -> None:
        """Record ``metrics`` for ``step`` (= epoch); persist ``checkpoint_dir`` and ``artifacts`` if given."""
        ...

    def should_stop(self) -> bool:
        """True when the runner wants the trainer to stop after the current epoch."""
        ...

    def restore_dir(self) -> Path | None:
        """The checkpoint directory to resume from, or None for a fresh start."""
        ...


@dataclass
class Report:
    """One call of :meth:`Reporter.report`, as the in-memory reporter keeps it."""

    step: int
    metrics: dict[str, float]
    checkpoint: Path | None
    artifacts: list[Path]


@dataclass
class InMemoryReporter:
    """Keeps every report in memory and checkpoints/artifacts under ``root``.

    Args:
        root: where checkpoint copies and artifacts go (a temporary directory if None).
        resume_from: returned by :meth:`restore_dir`.
        stop_after: ``should_stop()`` turns true once this many reports arrived (tests of early stop).
        deadline: ``should_stop()`` turns true once ``time.monotonic()`` passes it (a wall budget: the trainer
            stops after the epoch that crosses it).
        keep_checkpoints: how many of the newest checkpoint copies to keep on disk.
        echo: print one line per report to this stream (the single-run commands use stdout).
        formatter: how a report is printed when ``echo`` is set.
    """

    root: Path | None = None
    resume_from: Path | None = None
    stop_after: int | None = None
    deadline: float | None = None
    keep_checkpoints: int = 2
    echo: TextIO | None = None
    formatter: Callable[[int, dict[str, float]], str] | None = None
    reports: list[Report] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="ablate-run-"))
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def report(
        self,
        metrics: dict[str, float],
        step: int,
        checkpoint_dir: Path | None = None,
        artifacts: Sequence[Path] = (),
    ) -> None:
        assert self.root is not None
        kept: Path | None = None
        if checkpoint_dir is not None:
            kept = self.root / "checkpoints" / f"checkpoint_{step:06d}"
            if kept.exists():
                shutil.rmtree(kept)
            shutil.copytree(checkpoint_dir, kept)
            self._prune_checkpoints()
        copies = []
        for path in artifacts:
            dest = self.root / "artifacts" / f"step_{step:06d}" / Path(path).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
            copies.append(dest)
        self.reports.append(Report(step, dict(metrics), kept, copies))
        if self.echo is not None:
            line = (self.formatter or format_metrics)(step, metrics)
            print(line, file=self.echo, flush=True)

    def _prune_checkpoints(self) -> None:
        assert self.root is not None
        all_ckpts = sorted((self.root / "checkpoints").glob("checkpoint_*"))
        for old in all_ckpts[: max(0, len(all_ckpts) - self.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)

    def should_stop(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return True
        return self.stop_after is not None and len(self.reports) >= self.stop_after

    def restore_dir(self) -> Path | None:
        return self.resume_from

    # -- conveniences for tests and the CLI ---------------------------------

    def history(self, name: str) -> list[float]:
        """Every reported value of metric ``name``, in order (missing -> NaN)."""
        return [r.metrics.get(name, math.nan) for r in self.reports]

    @property
    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint copy, if any."""
        for r in reversed(self.reports):
            if r.checkpoint is not None and r.checkpoint.exists():
                return r.checkpoint
        return None


def format_metrics(step: int, metrics: dict[str, float]) -> str:
    """``epoch 3 | swav/loss 7.9812 | lr 0.0048 | ...`` — compact, fixed order (sorted names)."""

    def fmt(v: float) -> str:
        if isinstance(v, float) and (abs(v) >= 1e4 or (0 < abs(v) < 1e-3)):
            return f"{v:.3e}"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    parts = [f"epoch {step}"] + [f"{k} {fmt(v)}" for k, v in sorted(metrics.items())]
    return " | ".join(parts)


def stdout_reporter(root: Path | None = None, resume_from: Path | None = None) -> InMemoryReporter:
    """The reporter of the single-run commands: keeps checkpoints under ``root``, echoes to stdout."""
    return InMemoryReporter(root=root, resume_from=resume_from, echo=sys.stdout)
