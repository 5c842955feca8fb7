"""``ablate status``: a running launch seen from any machine that reaches the tracking store.

Everything comes from the store (a local sqlite store through :mod:`experiments.store.sqlite_reader`, an MLflow
server or another database through ``MlflowClient``): the launch
runs (driver, start, heartbeat age), every trial of the launch with its ``ablate.state``, the
epoch it reached against its budget, its key metric and an ETA, and the study's headline
(:func:`current_best`). :func:`render_table` draws it for a terminal (``--watch`` redraws it in
place); :func:`render_json` is the same data for scripts. This module imports no Ray.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence, TextIO

from experiments.store.redaction import redact
from experiments.store.sqlite_reader import ACTIVE_ONLY, read_client
from experiments.store.checks import check_store, finite_or_none, store_errors
from experiments.results.headline import Headline, study_headline
from experiments.store.tracking import PARENT_TAG, launch_alive
from trainers.swav.collapse import collapse_label
from trainers.vocabulary import (
    DET_AP50,
    LAUNCH_PREFIX,
    STAGES,
    STAGE_RECORDS,
    TAG_DRIVER,
    TAG_HEADLINE,
    TAG_HEARTBEAT,
    TAG_NAME,
    TAG_STAGE,
    TAG_STARTED,
    TAG_STATE,
    TAG_STOP_REQUESTED,
)

WATCH_EVERY_S = 5.0
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: --watch redraws the table in place


class StatusError(ValueError):
    """``ablate status`` cannot show what was asked (no store, no such study); the CLI exits 2."""


# ---------------------------------------------------------------------------
# What the store says about a launch
# ---------------------------------------------------------------------------


@dataclass
class TrialStatus:
    """One trial of a launch, as the status table shows it."""

    name: str
    stage: str
    state: str
    run_id: str
    epoch: int | None  # the last epoch logged (None before the first)
    epochs: int | None  # the budget
    metric: str
    value: float | None
    eta_s: float | None  # running trials: remaining epochs x seconds per epoch of this run so far
    seconds_per_epoch: float | None = None
    stop_requested: bool = False
    collapsed: str | None = None  # pretraining: "collapsed: <reasons>" when its latest swav/collapsed is 1


@dataclass
class LaunchStatus:
    """One launch run and its trials."""

    study: str
    run_id: str
    status: str  # the MLflow status: RUNNING, FINISHED, FAILED, KILLED
    alive: bool
    driver: str
    started: float  # unix seconds
    heartbeat_age_s: float | None
    stop_requested: bool
    counts: dict[str, float]
    headline: str
    best_run_id: str | None
    max_concurrent: int
    trials: list[TrialStatus] = field(default_factory=list)
    ended: float | None = None  # unix seconds, once the launch run ended

    @property
    def host(self) -> str:
        return self.driver.rpartition(":")[0] or self.driver

    def eta_s(self) -> float | None:
        """Seconds until every running and planned trial is done, from each stage's measured seconds per epoch.

        None while a stage with work left has no measured epoch yet (its trials cost differently).
        """
        left = [t for t in self.trials if t.state in ("running", "planned")]
        if not left:
            return 0.0
        total = 0.0
        for stage in STAGES:
            rates = [t.seconds_per_epoch for t in self.trials if t.stage == stage and t.seconds_per_epoch]
            todo = sum(max(0, (t.epochs or 0) - (t.epoch or 0)) for t in left if t.stage == stage)
            if todo and not rates:
                return None
            if todo:
                total += todo * sum(rates) / len(rates)
        return total / max(1, self.max_concurrent)


def _float_tag(tags: dict[str, str], key: str) -> float | None:
    return finite_or_none(tags.get(key))


def _trial_status(client: Any, run: Any, now: float) -> TrialStatus:
    tags, stage = run.data.tags, run.data.tags.get(TAG_STAGE, "")
    state = tags.get(TAG_STATE) or {"RUNNING": "running", "FINISHED": "finished", "FAILED": "failed",
                                    "KILLED": "stopped", "SCHEDULED": "planned"}.get(run.info.status, "?")
    key = STAGE_RECORDS[stage].key_metric if stage in STAGE_RECORDS else DET_AP50
    epochs = finite_or_none(run.data.params.get(f"{stage}.epochs"))
    epoch, per_epoch, eta = None, None, None
    fresh: list[Any] = []
    if state != "planned":
        # the step of the last value logged is the epoch reached (a resumed run's history includes earlier launches')
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        if history:
            epoch = int(history[-1].step)
            started = _float_tag(tags, TAG_STARTED)
            fresh = [m for m in history if started is not None and m.timestamp / 1000 >= started]
            if started is not None and fresh:
                per_epoch = (fresh[-1].timestamp / 1000 - started) / len(fresh)
    if state == "running" and epochs is not None and per_epoch is not None:  # no rate before its first epoch here
        eta = max(0.0, (epochs - (epoch or 0)) * per_epoch - (now - fresh[-1].timestamp / 1000))
    feat_dim = finite_or_none(run.data.params.get(f"{stage}.feat_dim"))
    collapsed = collapse_label(run.data.metrics, int(feat_dim) if feat_dim else None) if stage == "pretrain" else None
    return TrialStatus(tags.get(TAG_NAME, run.info.run_name or ""), stage, state, run.info.run_id, epoch,
                       int(epochs) if epochs is not None else None, key, finite_or_none(run.data.metrics.get(key)),
                       eta, per_epoch, TAG_STOP_REQUESTED in tags, collapsed)


def launch_status(client: Any, study: str, experiment_id: str, run: Any, headline: Headline | None = None,
                  now: float | None = None) -> LaunchStatus:
    """A launch run and its trials (the runs whose parent it is), from the store; ``headline``: the study's,
    read from the store when not given."""
    now = time.time() if now is None else now
    headline = study_headline(client, experiment_id) if headline is None else headline
    tags = run.data.tags
    beat = _float_tag(tags, TAG_HEARTBEAT)
    children = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run.info.run_id}'",
                                  run_view_type=ACTIVE_ONLY, max_results=5000)
    trials = [_trial_status(client, r, now) for r in children if r.data.tags.get(TAG_STAGE) in STAGES]
    order = {"running": 0, "planned": 1, "stopped": 2, "failed": 3, "finished": 4, "pruned": 5, "skipped": 6}
    trials.sort(key=lambda t: (order.get(t.state, 9), t.stage != "pretrain", t.name))
    counts = {k.split("/", 1)[1]: v for k, v in run.data.metrics.items() if k.startswith(LAUNCH_PREFIX)}
    return LaunchStatus(
        study=study, run_id=run.info.run_id, status=run.info.status, alive=launch_alive(run, now),
        driver=tags.get(TAG_DRIVER, "unknown"), started=(run.info.start_time or 0) / 1000,
        heartbeat_age_s=(now - beat) if beat is not None else None, stop_requested=TAG_STOP_REQUESTED in tags,
        counts=counts, headline=headline.one_line(), best_run_id=headline.best.run_id if headline.best else None,
        max_concurrent=int(finite_or_none(run.data.params.get("max_concurrent")) or 1), trials=trials,
        ended=run.info.end_time / 1000 if run.info.end_time else None)


@dataclass
class StudySummary:
    """A study's newest launch, for ``ablate status`` with nothing running: what to look at next."""

    study: str
    state: str  # running, finished, failed, killed, driver lost
    started: float
    ended: float | None
    best: str  # "best: NAME AP@0.5 0.370" from the launch's headline, "" before any result


def recent_studies(client: Any, limit: int = 10, now: float | None = None) -> list[StudySummary]:
    """Every study's newest launch, newest first (at most ``limit``)."""
    now = time.time() if now is None else now
    out = []
    for exp in client.search_experiments():
        if exp.name == "Default":
            continue
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = 'launch'",
                                  run_view_type=ACTIVE_ONLY, max_results=1,
                                  order_by=["attributes.start_time DESC"])
        if not runs:
            continue
        run = runs[0]
        state = run.info.status.lower()
        if run.info.status == "RUNNING" and not launch_alive(run, now):
            state = "driver lost"
        best = run.data.tags.get(TAG_HEADLINE, "").split("; ")[0]
        out.append(StudySummary(exp.name, state, (run.info.start_time or 0) / 1000,
                                run.info.end_time / 1000 if run.info.end_time else None,
                                best if best.startswith("best: ") else ""))
    out.sort(key=lambda s: -s.started)
    return out[:limit]


def collect(tracking_uri: str, study: str | None = None,
            recent: list[StudySummary] | None = None) -> list[LaunchStatus]:
    """The running launches of every study (``study`` None), or the newest launch of one study. With nothing
    running and no study asked for, ``recent`` (when given) is filled with every study's newest launch.

    Raises:
        StatusError: the store cannot be reached, or has no such study.
    """
    import difflib

    check_store(tracking_uri, StatusError)
    with store_errors(tracking_uri, "reading the launches", StatusError):
        client = read_client(tracking_uri)
        if study is not None:
            exp = client.get_experiment_by_name(study)
            if exp is None or exp.lifecycle_stage == "deleted":
                known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
                close = difflib.get_close_matches(study, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise StatusError(f"no study {study!r} in the tracking store {redact(tracking_uri)}; {hint}"
                                  f"studies here: {', '.join(known) or 'none'} (`ablate status` without a study "
                                  "lists the running launches)")
            experiments = [exp]
        else:
            experiments = [e for e in client.search_experiments() if e.name != "Default"]
        out = []
        for exp in experiments:
            flt = f"tags.`{TAG_STAGE}` = 'launch'" + ("" if study else " and attributes.status = 'RUNNING'")
            launches = client.search_runs([exp.experiment_id], filter_string=flt, run_view_type=ACTIVE_ONLY,
                                          max_results=50 if study is None else 1,
                                          order_by=["attributes.start_time DESC"])
            if study is None:
                launches = [r for r in launches if launch_alive(r)]
            if not launches:
                continue
            headline = study_headline(client, exp.experiment_id)
            out += [launch_status(client, exp.name, exp.experiment_id, r, headline) for r in launches]
        if not out and study is None and recent is not None:
            recent.extend(recent_studies(client))
        return out


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _when(unix_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix_s))


def render_recent(recent: Sequence[StudySummary], tracking_uri: str, now: float | None = None) -> str:
    """Nothing running: the studies in the store, newest first, and the two commands that look closer."""
    now = time.time() if now is None else now
    head = f"no running launch in the tracking store {redact(tracking_uri)}"
    if not recent:
        return head + "; no study yet (`ablate demo` runs one, `ablate launch SPACE.yaml` yours)"
    width = max(len(s.study) for s in recent)
    lines = [head + ". Recent studies (newest launch of each):"]
    for s in recent:
        when = (f"ended {_when(s.ended)} ({_duration(now - s.ended)} ago)" if s.ended is not None
                else f"started {_when(s.started)}")
        lines.append(f"  {s.study.ljust(width)}  {s.state:11}  {when}" + (f"  {s.best}" if s.best else ""))
    first = recent[0].study
    lines += ["look closer:", f"  ablate status {first}    # its last launch, trial by trial",
              f"  ablate report {first}    # the headline, Table 1 and one table per ablated axis"]
    return "\n".join(lines)


def render_table(launches: Sequence[LaunchStatus], tracking_uri: str, study: str | None = None,
                 recent: Sequence[StudySummary] = ()) -> str:
    """The terminal view: one block per launch, a row per trial (nothing running: the recent studies)."""
    if not launches:
        return render_recent(recent, tracking_uri)
    blocks = []
    for ls in launches:
        beat = f"heartbeat {_duration(ls.heartbeat_age_s)} ago" if ls.heartbeat_age_s is not None else "no heartbeat"
        if ls.status != "RUNNING" and ls.ended is not None:  # a finished launch has no heartbeat to speak of
            beat = f"ended {_when(ls.ended)}"
        if ls.status == "RUNNING":
            life = "running" if ls.alive else "driver lost (a new launch of the study takes its trials over)"
        else:
            life = ls.status.lower()
        lines = [f"study {ls.study}  launch run {ls.run_id[:8]}  {life}",
                 f"  driver {ls.driver}  started {_when(ls.started)}  {beat}"
                 + ("  STOP REQUESTED" if ls.stop_requested and ls.status == "RUNNING" else "")]
        states = [t.state for t in ls.trials]
        shown = "  ".join(f"{s} {states.count(s)}" for s in ("running", "planned", "finished", "pruned", "failed",
                                                               "stopped", "skipped") if states.count(s))
        eta = f"  ETA {_duration(ls.eta_s())}" if ls.status == "RUNNING" else ""
        lines.append(f"  trials {len(ls.trials)}: {shown or 'none'}{eta}")
        lines.append(f"  {ls.headline}")
        rows = [("stage", "state", "epoch", "key metric", "ETA", "trial")]
        for t in ls.trials:
            epoch = f"{t.epoch if t.epoch is not None else '-'}/{t.epochs if t.epochs is not None else '?'}"
            value = f"{t.metric.split('/')[-1]} {t.value:.4f}" if t.value is not None else "-"
            eta = _duration(t.eta_s) if t.state == "running" else "-"
            state = t.state + (" (stop requested)" if t.stop_requested and t.state in ("running", "planned") else "")
            state += " (collapsed)" if t.collapsed else ""
            rows.append((t.stage, state, epoch, value, eta, t.name))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) if i != 2 else c.rjust(w) for i, (c, w) in
                                         enumerate(zip(r[:5], widths))) + "  " + r[5])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_json(launches: Sequence[LaunchStatus], tracking_uri: str, recent: Sequence[StudySummary] = ()) -> str:
    """The same as the table, for scripts: ``{"tracking_uri", "now", "launches": [...], "recent": [...]}``."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    out = []
    for ls in launches:
        d = dataclasses.asdict(ls)
        d["host"] = ls.host
        d["eta_s"] = ls.eta_s()
        out.append(d)
    return json.dumps(clean({"tracking_uri": redact(tracking_uri), "now": time.time(), "launches": out,
                             "recent": [dataclasses.asdict(s) for s in recent]}), indent=2, ensure_ascii=False)


def status(tracking_uri: str, study: str | None = None, fmt: str = "table") -> str:
    """``ablate status [STUDY] [--format json]`` once."""
    recent: list[StudySummary] = []
    launches = collect(tracking_uri, study, recent)
    return (render_json(launches, tracking_uri, recent) if fmt == "json"
            else render_table(launches, tracking_uri, study, recent))


def watch(tracking_uri: str, study: str | None, every_s: float = WATCH_EVERY_S, out: TextIO = sys.stdout,
          rounds: int | None = None) -> int:
    """``ablate status --watch``: redraw the table in place every ``every_s`` seconds until Ctrl-C.

    It stops by itself once nothing it shows is running any more (after drawing that final state).
    ``rounds`` bounds the redraws (tests).
    """
    n = 0
    try:
        while True:
            recent: list[StudySummary] = []
            launches = collect(tracking_uri, study, recent)
            stamp = time.strftime("%H:%M:%S")
            out.write(f"{CLEAR}ablate status{' ' + study if study else ''}  ({stamp}, every {every_s:g} s; "
                      f"Ctrl-C to quit)\n\n{render_table(launches, tracking_uri, study, recent)}\n")
            out.flush()
            n += 1
            if not any(ls.status == "RUNNING" and ls.alive for ls in launches) or (rounds is not None and n >= rounds):
                return 0
            time.sleep(every_s)
    except KeyboardInterrupt:
        out.write("\n")
        return 0


def register(subparsers: Any, name: str, summary: str, common: Any) -> None:
    """``ablate status [STUDY] [--watch]`` (experiments/cli.py wires it)."""
    p = subparsers.add_parser(name, help=summary, parents=[common])
    p.add_argument("study", nargs="?", default=None,
                   help="study name: its newest launch, running or not (default: every running launch)")
    p.add_argument("--watch", action="store_true", help="redraw the table in place until Ctrl-C (or the launch ends)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between redraws with --watch (default 5)")
    p.add_argument("--format", default="table", choices=["table", "json"], help="table (terminal) or json (scripts)")
    p.set_defaults(run=run)


def run(args: Any) -> int:
    """``ablate status``: the table (or JSON) once, or redrawn with ``--watch``."""
    from experiments.store.tracking import uri_to_read

    if args.watch and args.format == "json":
        raise ValueError("--watch redraws a terminal table; for scripts, run `ablate status --format json` at each poll")
    if args.interval <= 0:
        raise ValueError(f"--interval {args.interval}: must be > 0 seconds")
    if args.watch:
        return watch(uri_to_read(args.tracking_uri), args.study, every_s=args.interval)
    print(status(uri_to_read(args.tracking_uri), args.study, fmt=args.format))
    return 0
