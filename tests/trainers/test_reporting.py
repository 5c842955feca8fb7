"""Tests for trainers.reporting: the in-memory reporter (reports, checkpoint copies, artifacts, early stop, resume)
against the Reporter protocol, and the one-line metrics format of the single-run commands."""

from __future__ import annotations

import io
import math
import shutil
import time
from pathlib import Path

import pytest

from trainers.reporting import InMemoryReporter, Reporter, format_metrics, stdout_reporter


def test_the_reporter_keeps_every_report_and_resumes_from_what_it_was_given(tmp_path: Path) -> None:
    reporter = InMemoryReporter(root=tmp_path / "run", resume_from=tmp_path / "old")
    assert isinstance(reporter, Reporter)
    metrics = {"swav/loss": 8.0, "lr": 0.1}
    reporter.report(metrics, step=1)
    metrics["swav/loss"] = -1.0  # the trainer may reuse its dict: the report holds a copy
    reporter.report({"swav/loss": 7.0}, step=2)
    assert [(r.step, r.metrics, r.checkpoint, r.artifacts) for r in reporter.reports] == [
        (1, {"swav/loss": 8.0, "lr": 0.1}, None, []), (2, {"swav/loss": 7.0}, None, [])]
    assert reporter.history("swav/loss") == [8.0, 7.0]
    lr = reporter.history("lr")
    assert lr[0] == 0.1 and math.isnan(lr[1])
    assert reporter.restore_dir() == tmp_path / "old" and reporter.last_checkpoint is None
    assert (tmp_path / "run").is_dir()


def test_checkpoints_are_copied_the_newest_kept_and_artifacts_filed_by_step(tmp_path: Path) -> None:
    reporter = InMemoryReporter(root=tmp_path / "run", keep_checkpoints=2)
    for step in (1, 2, 3):
        written = tmp_path / "trainer" / "ckpt"
        written.mkdir(parents=True)
        (written / "state.json").write_text(f'{{"epoch": {step}}}')
        plot = tmp_path / "trainer" / "curve.png"
        plot.write_bytes(b"png %d" % step)
        reporter.report({"loss": 1.0 / step}, step, checkpoint_dir=written, artifacts=[plot])
        shutil.rmtree(tmp_path / "trainer")  # the trainer may delete its folder once report returns
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["checkpoint_000002", "checkpoint_000003"]
    assert reporter.last_checkpoint == tmp_path / "run" / "checkpoints" / "checkpoint_000003"
    assert (reporter.last_checkpoint / "state.json").read_text() == '{"epoch": 3}'
    assert reporter.reports[1].artifacts == [tmp_path / "run" / "artifacts" / "step_000002" / "curve.png"]
    assert reporter.reports[1].artifacts[0].read_bytes() == b"png 2"
    # a pruned copy is no checkpoint to resume from: the newest that still exists is
    shutil.rmtree(reporter.last_checkpoint)
    assert reporter.last_checkpoint == tmp_path / "run" / "checkpoints" / "checkpoint_000002"


def test_should_stop_after_enough_reports_or_past_the_deadline(tmp_path: Path) -> None:
    reporter = InMemoryReporter(root=tmp_path, stop_after=2)
    reporter.report({}, 1)
    assert not reporter.should_stop()
    reporter.report({}, 2)
    assert reporter.should_stop()
    assert not InMemoryReporter(root=tmp_path, deadline=time.monotonic() + 3600).should_stop()
    assert InMemoryReporter(root=tmp_path, deadline=time.monotonic() - 1).should_stop()
    assert not InMemoryReporter(root=tmp_path).should_stop()


def test_reports_are_echoed_one_line_each_in_a_fixed_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = format_metrics(3, {"swav/loss": 7.98123, "lr": 0.00048, "big": 12345.0, "zero": 0.0, "n": 4})
    assert line == "epoch 3 | big 1.234e+04 | lr 4.800e-04 | n 4 | swav/loss 7.9812 | zero 0.0000"
    stream = io.StringIO()
    reporter = InMemoryReporter(root=tmp_path / "a", echo=stream, formatter=lambda step, m: f"{step}:{sorted(m)}")
    reporter.report({"b": 1.0, "a": 2.0}, 5)
    assert stream.getvalue() == "5:['a', 'b']\n"
    stdout_reporter(root=tmp_path / "b").report({"det/AP50": 0.5}, 1)
    assert capsys.readouterr().out == "epoch 1 | det/AP50 0.5000\n"
