"""Steering a running launch from anywhere: stop requests through the tracking store, and notifications.

The stop protocol (docs/ARCHITECTURE.md): ``ablate stop STUDY [--trial NAME]`` writes the tag
``ablate.stop_requested`` (``"<unix seconds> <host:pid>"``) on the running launch run, or on the
named trial's run. It needs nothing but the tracking store, so it works from any machine that
reaches the server. The driver reads the requests (:class:`StopRequests`) after every result a
trial reports, that is once per epoch: a trial asked to stop is stopped right after the epoch it
just checkpointed, marked ``ablate.state=stopped`` and ended KILLED with its ``ablate.checkpoint``
kept, so the same launch command resumes it. A whole-launch request stops each running trial the
same way, starts no further trial and ends the launch run KILLED.

:func:`notify` runs ``ablate launch --notify CMD`` with the event, the study and the headline in
environment variables. This module imports no Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Mapping

from experiments.store.redaction import redact
from experiments.store.checks import check_store, one_line, store_errors
from experiments.store.tracking import PARENT_TAG, Tracker, driver_id, launch_alive, uri_to_read
from trainers.vocabulary import TAG_DRIVER, TAG_NAME, TAG_STAGE, TAG_STATE, TAG_STOP_REQUESTED

STOP_POLL_S = 5.0  # the launch-wide request is read at most this often between results
NOTIFY_TIMEOUT_S = 120  # a notify command that hangs must not hold the launch's end
# launch_finished | launch_failed | launch_stopped | trial_failed
NOTIFY_EVENTS = ("launch_finished", "launch_failed", "launch_stopped", "trial_failed")
# What a secret on the command line looks like: a Slack webhook path, or a credential `redact` removes.
SECRET_MARKERS = ("hooks.slack.com/", "discord.com/api/webhooks/", "outlook.office.com/webhook")


class ControlError(ValueError):
    """``ablate stop`` or ``--notify`` cannot do what was asked (unknown study or trial, nothing running); exit 2."""


def request_text() -> str:
    """The value of an ``ablate.stop_requested`` tag: when and by whom."""
    return f"{time.time():.0f} {driver_id()}"


def running_launches(tracker: Tracker) -> list[Any]:
    """The study's launch runs whose driver is at work, newest first."""
    launches = tracker.find_runs(extra_filter=f"tags.`{TAG_STAGE}` = 'launch' and attributes.status = 'RUNNING'")
    return [r for r in launches if launch_alive(r)]


def trial_runs(tracker: Tracker, launch_run_id: str) -> list[Any]:
    """The trial runs of one launch (its children), newest first."""
    return [r for r in tracker.find_runs(extra_filter=f"tags.`{PARENT_TAG}` = '{launch_run_id}'")
            if r.data.tags.get(TAG_STAGE) in ("pretrain", "finetune")]


def request_stop(tracking_uri: str, study: str, trial: str | None = None) -> str:
    """Ask the driver of ``study``'s running launch to stop it, or one of its trials; returns what was asked.

    Args:
        tracking_uri: the tracking store the launch writes to.
        study: the study (MLflow experiment) name.
        trial: a trial's name (``ablate.name``, as ``ablate status`` lists it) or the start of its run id;
            None stops the whole launch.

    Raises:
        ControlError: no such study, no running launch, no such trial, or a trial that is not running or planned.
    """
    import difflib

    check_store(tracking_uri, ControlError)
    with store_errors(tracking_uri, f"asking study {study!r} to stop", ControlError):
        tracker = Tracker(tracking_uri, study, create=False)
        if tracker.experiment_id is None:
            known = sorted(e.name for e in tracker.client.search_experiments() if e.name != "Default")
            close = difflib.get_close_matches(study, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ControlError(f"no study {study!r} in the tracking store {redact(tracking_uri)}; {hint}"
                               f"`ablate status` lists the running launches (studies here: {', '.join(known) or 'none'})")
        launches = running_launches(tracker)
        if not launches:
            raise ControlError(f"study {study!r} has no running launch: nothing to stop (`ablate status {study}` "
                               "shows its last launch)")
        launch = launches[0]
        launch_id = launch.info.run_id
        driver = launch.data.tags.get(TAG_DRIVER, "unknown")
        if trial is None:
            tracker.set_tags(launch_id, {TAG_STOP_REQUESTED: request_text()})
            return (f"stop requested for launch run {launch_id[:8]} of study {study!r} (driver {driver}): each running "
                    "trial stops after its current epoch, checkpointed, and no further trial starts; run the same "
                    "`ablate launch` command to resume")
        runs = trial_runs(tracker, launch_id)
        names = {r.data.tags.get(TAG_NAME, r.info.run_name): r for r in runs}
        match = names.get(trial) or next((r for r in runs if len(trial) >= 6 and r.info.run_id.startswith(trial)), None)
        if match is None:
            close = difflib.get_close_matches(trial, list(names), n=1, cutoff=0.4)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ControlError(f"launch run {launch_id[:8]} of study {study!r} has no trial {trial!r}; {hint}"
                               f"`ablate status {study}` lists its trials by name")
        state = match.data.tags.get(TAG_STATE, "running" if match.info.status == "RUNNING" else "")
        if state not in ("planned", "running"):
            raise ControlError(f"trial {trial!r} of study {study!r} is {state or match.info.status.lower()}, not "
                               "running or planned: there is nothing to stop")
        tracker.set_tags(match.info.run_id, {TAG_STOP_REQUESTED: request_text()})
        when = "after its current epoch" if state == "running" else "after its first epoch once it starts"
        return (f"stop requested for trial {trial!r} (run {match.info.run_id[:8]}) of study {study!r}: the driver "
                f"({driver}) stops it {when}, checkpointed, and marks it stopped; run the same `ablate launch` "
                "command to resume it")


class StopRequests:
    """The driver's reader of stop requests for one launch run (see the module docstring).

    Args:
        tracker: the launch's tracker.
        launch_run_id: the launch run.
        poll_s: the launch-wide request is read at most this often, except when asked with ``fresh``.
    """

    def __init__(self, tracker: Tracker, launch_run_id: str, poll_s: float = STOP_POLL_S) -> None:
        self.tracker = tracker
        self.launch_run_id = launch_run_id
        self.poll_s = poll_s
        self._launch: str | None = None
        self._read_at = 0.0

    def launch_requested(self, fresh: bool = False) -> str | None:
        """The launch-wide request (tag value), if any; once seen it stays seen."""
        now = time.monotonic()
        if self._launch is None and (fresh or now - self._read_at >= self.poll_s):
            self._read_at = now
            self._launch = self.tracker.client.get_run(self.launch_run_id).data.tags.get(TAG_STOP_REQUESTED)
        return self._launch

    def trial_requested(self, run_id: str) -> str | None:
        """A request on one trial's run (read afresh: called once per reported epoch)."""
        return self.tracker.client.get_run(run_id).data.tags.get(TAG_STOP_REQUESTED)


# ---------------------------------------------------------------------------
# Notification
# ---------------------------------------------------------------------------


def check_notify_command(command: str) -> str:
    """Refuse a ``--notify`` command that carries a secret (a webhook URL, a password in a URL).

    Returns:
        The command, unchanged.

    Raises:
        ControlError: naming what looked secret and how to pass it instead.
    """
    if not command.strip():
        raise ControlError("--notify: the command is empty; give a shell command, e.g. "
                           "--notify 'mail -s \"ablate $ABLATE_STUDY: $ABLATE_EVENT\" me@example.org'")
    marker = next((m for m in SECRET_MARKERS if m in command), None)
    if marker is not None or redact(command) != command:
        what = f"a webhook URL ({marker}...)" if marker else "a credential"
        raise ControlError(f"--notify: the command holds {what}, and a command line is visible to every user of the "
                           "machine (ps) and kept in shell histories; put it in an environment variable and refer to "
                           "it in single quotes, e.g. --notify 'curl -fsS --data \"$ABLATE_SLACK_JSON\" "
                           "\"$SLACK_WEBHOOK_URL\"' (README: Notifications)")
    return command


@dataclass(frozen=True)
class Notice:
    """One event of a launch, as the notify command sees it."""

    event: str  # one of NOTIFY_EVENTS
    study: str
    headline: str
    launch_run_id: str = ""
    trial: str = ""  # the trial's name (trial_failed)
    detail: str = ""  # the error line, or the summary's counts
    tracking_uri: str = ""

    @property
    def message(self) -> str:
        """One line for a chat message or a mail subject."""
        what = {"launch_finished": "launch finished", "launch_failed": "launch FAILED",
                "launch_stopped": "launch stopped (resumable)", "trial_failed": f"trial FAILED: {self.trial}"}[self.event]
        parts = [f"ablate {self.study}: {what}", self.headline, self.detail]
        return one_line(" — ".join(p for p in parts if p))[:2000]

    def environment(self) -> dict[str, str]:
        """The ``ABLATE_*`` variables the notify command gets (nothing secret: the URI is redacted)."""
        return {"ABLATE_EVENT": self.event, "ABLATE_STUDY": self.study, "ABLATE_HEADLINE": self.headline,
                "ABLATE_LAUNCH_RUN_ID": self.launch_run_id, "ABLATE_TRIAL": self.trial,
                "ABLATE_DETAIL": one_line(self.detail)[:2000], "ABLATE_MESSAGE": self.message,
                "ABLATE_TRACKING_URI": redact(self.tracking_uri),
                # a Slack / Mattermost / Teams incoming-webhook body: curl --data "$ABLATE_SLACK_JSON" "$WEBHOOK"
                "ABLATE_SLACK_JSON": json.dumps({"text": self.message})}


def notify(command: str, notice: Notice, env: Mapping[str, str] | None = None,
           timeout_s: float = NOTIFY_TIMEOUT_S) -> str | None:
    """Run the notify command through the shell with the notice in ``ABLATE_*`` variables and the message on stdin.

    A notification never fails the launch: a command that fails, hangs past ``timeout_s`` or cannot start
    is reported in the returned line (None when it succeeded).
    """
    full_env = {**(env if env is not None else os.environ), **notice.environment()}
    try:
        proc = subprocess.run(command, shell=True, env=full_env, input=notice.message + "\n", text=True,  # noqa: S602
                              capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"notify: the command did not finish within {timeout_s:.0f} s ({notice.event}); it was stopped"
    except OSError as exc:
        return f"notify: the command could not start ({exc})"
    if proc.returncode != 0:
        err = one_line(proc.stderr or proc.stdout)[-300:]
        return f"notify: the command exited with {proc.returncode} ({notice.event}){': ' + redact(err) if err else ''}"
    return None


def register(subparsers: Any, name: str, summary: str, common: Any) -> None:
    """``ablate stop STUDY [--trial NAME]`` (experiments/cli.py wires it)."""
    p = subparsers.add_parser(name, help=summary, parents=[common])
    p.add_argument("study", help="study name")
    p.add_argument("--trial", default=None, metavar="NAME",
                   help="stop this trial only (its name as `ablate status` lists it, or the start of its run id)")
    p.set_defaults(run=lambda args: print(request_stop(uri_to_read(args.tracking_uri), args.study, args.trial)) or 0)
