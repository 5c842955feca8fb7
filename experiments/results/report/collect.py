"""Reading a study's trial runs back from MLflow: :func:`collect` into :class:`StudyRuns` of :class:`TrialRun`.

Also the ablated axes (the newest launch's ``axes.*`` params, or :func:`varying_axes`), the collapse
label of a pretraining run, and :class:`ReportError`, raised by every part of the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from experiments.store.redaction import redact
from experiments.spaces import NON_RESULT_FIELDS
from experiments.store.sqlite_reader import ACTIVE_ONLY, read_client
from experiments.store.checks import check_store, finite_or_none, store_errors
from experiments.store.tracking import PARENT_TAG, UPSTREAM_SCRATCH, launch_alive, usable_run
from trainers.swav.collapse import collapse_label
from trainers.vocabulary import (
    DET_AP50,
    STAGES,
    STAGE_FINETUNE,
    TAG_ERROR,
    TAG_HASH,
    TAG_NAME,
    TAG_PRUNED,
    TAG_PRUNE_REASON,
    TAG_SEED,
    TAG_STAGE,
    TAG_STATE,
    TAG_UPSTREAM,
)


class ReportError(ValueError):
    """A report that cannot be made (unknown or empty study, bad format); one line, names the study."""


@dataclass
class TrialRun:
    """One trial's MLflow run: what the tables need, without the metric histories."""

    run_id: str
    stage: str
    name: str
    status: str
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # final values (the last step's)
    interrupted: bool = False  # left RUNNING by a launch whose driver is gone


    @property
    def pruned(self) -> bool:
        return self.tags.get(TAG_PRUNED) == "true"

    @property
    def usable(self) -> bool:
        """FINISHED, not pruned, no error, and (fine-tuning) a finite final det/AP50 (:func:`usable_run`)."""
        return usable_run(self.status, self.tags, self.metrics, self.stage)

    @property
    def reason(self) -> str:
        """Why the run is not in the tables (empty when it is)."""
        if self.pruned:
            return "pruned: " + (self.tags.get(TAG_PRUNE_REASON) or "no reason recorded")
        if TAG_ERROR in self.tags or self.status == "FAILED":
            lines = [ln.strip() for ln in self.tags.get(TAG_ERROR, "").strip().splitlines() if ln.strip()]
            return "failed: " + (lines[-1][:300] if lines else "no error recorded")
        if self.interrupted:
            return "interrupted: its launch ended without finishing it; run the launch command again to resume it"
        why = {"skipped": "skipped: its backbone did not survive the launch",
               "stopped": "stopped: run the launch command again to resume it",
               "planned": "planned: its launch has not started it yet"}.get(self.tags.get(TAG_STATE, ""))
        if self.status != "FINISHED" and why:
            return why
        if self.status != "FINISHED":
            return f"unfinished (status {self.status})"
        if self.stage == STAGE_FINETUNE and finite_or_none(self.metrics.get(DET_AP50)) is None:
            return f"no finite {DET_AP50} recorded"
        return ""

    @property
    def seed(self) -> str:
        return self.tags.get(TAG_SEED, self.params.get(f"{self.stage}.seed", "?"))


@dataclass
class StudyRuns:
    """Every trial run of a study, plus the ablated axes; metric histories are fetched on demand."""

    study: str
    tracking_uri: str
    experiment_id: str
    runs: list[TrialRun]
    axes: dict[str, list[str]]  # "pretrain" / "finetune" -> field names
    axes_source: str  # "launch" (the parent run's axes.* params) or "varying params"
    parent_run_id: str | None  # the newest launch's parent run
    client: Any = field(default=None, repr=False)
    _histories: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict, repr=False)

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of a metric, by step; fetched once per run and key."""
        cache_key = (run_id, key)
        if cache_key not in self._histories:
            points = self.client.get_metric_history(run_id, key) if self.client is not None else []
            by_step = {m.step: m.value for m in sorted(points, key=lambda m: (m.step, m.timestamp))}
            self._histories[cache_key] = sorted(by_step.items())
        return self._histories[cache_key]

    def stage(self, stage: str) -> list[TrialRun]:
        """One run per config hash of a stage: the newest usable one if any, else the newest."""
        best: dict[str, TrialRun] = {}
        for run in sorted((r for r in self.runs if r.stage == stage), key=lambda r: r.start_time):
            key = run.tags.get(TAG_HASH) or run.run_id
            current = best.get(key)
            if current is None or run.usable or not current.usable:
                best[key] = run
        return sorted(best.values(), key=lambda r: (r.name, r.start_time))

    def superseded(self) -> int:
        """Runs replaced by a later run of the same config (counted, not listed)."""
        return len(self.runs) - sum(len(self.stage(s)) for s in STAGES)

    def backbone_name(self, run: TrialRun) -> str:
        """The Table 1 row of a fine-tuning run: its pretraining run's name, or ``scratch_<arch>``."""
        upstream = run.tags.get(TAG_UPSTREAM, "")
        if upstream and upstream != UPSTREAM_SCRATCH:
            for pre in self.runs:
                if pre.run_id == upstream:  # a collapsed backbone is never shown without the word
                    return pre.name + (" (collapsed)" if _collapse(pre) else "")
        if " · " in run.name:
            return run.name.split(" · ")[0]
        if upstream == UPSTREAM_SCRATCH:
            return f"{UPSTREAM_SCRATCH}_" + run.params.get("finetune.arch", "?").replace("resnet", "res")
        return upstream[:8] or "unknown backbone"


def _search_all(client: Any, experiment_id: str, filter_string: str = "") -> list[Any]:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, run_view_type=ACTIVE_ONLY,
                                  max_results=1000, order_by=["attributes.start_time DESC"], page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _split_axes(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


def collect(tracking_uri: str, study: str) -> StudyRuns:
    """All trial runs of ``study`` with params, tags and final metrics.

    Raises:
        ReportError: the store cannot be reached, the study does not exist or has no trial runs.
    """
    check_store(tracking_uri, ReportError)
    client = read_client(tracking_uri)
    with store_errors(tracking_uri, f"reading study {study!r}", ReportError):
        experiment = client.get_experiment_by_name(study)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
            raise ReportError(f"no study {study!r} in {redact(tracking_uri)}; studies: {', '.join(names) or 'none'}")
        found = _search_all(client, experiment.experiment_id)
    trials, launches = [], []
    alive = {r.info.run_id for r in found if r.data.tags.get(TAG_STAGE) == "launch" and launch_alive(r)}
    for r in found:
        stage = r.data.tags.get(TAG_STAGE, "")
        if stage == "launch":
            launches.append(r)
        elif stage in STAGES:
            trials.append(TrialRun(
                run_id=r.info.run_id, stage=stage, name=r.data.tags.get(TAG_NAME) or r.info.run_name or r.info.run_id,
                status=r.info.status, start_time=r.info.start_time or 0, params=dict(r.data.params),
                tags=dict(r.data.tags), metrics=dict(r.data.metrics),
                interrupted=r.info.status == "RUNNING" and r.data.tags.get(PARENT_TAG) not in alive))
    if not trials:
        raise ReportError(f"study {study!r} has no trial runs yet (nothing to report); run `ablate launch SPACE.yaml`")
    parent = launches[0] if launches else None  # newest first
    axes: dict[str, list[str]] = {}
    source = "varying params"
    with_axes = [r for r in launches if any(f"axes.{s}" in r.data.params for s in STAGES)]
    if with_axes:
        params = with_axes[0].data.params
        axes = {s: _split_axes(params.get(f"axes.{s}", "")) for s in STAGES}
        source = "launch"
    runs = StudyRuns(study, tracking_uri, experiment.experiment_id, trials, axes, source,
                     parent.info.run_id if parent else None, client)
    if not with_axes:
        runs.axes = varying_axes(runs)
    return runs


def varying_axes(runs: StudyRuns) -> dict[str, list[str]]:
    """Fields whose params differ across the usable fine-tuning runs (seed and non-result fields excluded)."""
    ft = [r for r in runs.stage("finetune") if r.usable]
    out: dict[str, list[str]] = {s: [] for s in STAGES}
    keys = sorted({k for r in ft for k in r.params})
    for key in keys:
        stage, _, name = key.partition(".")
        if stage not in STAGES or name in NON_RESULT_FIELDS or name == "seed" or (stage == "finetune" and name == "arch"):
            continue
        if len({r.params.get(key) for r in ft if key in r.params}) > 1:
            out[stage].append(name)
    if len({r.tags.get(TAG_UPSTREAM) == UPSTREAM_SCRATCH for r in ft}) > 1:
        out["finetune"].append("backbone")
    return out


def _collapse(run: TrialRun) -> str | None:
    """``"collapsed: <reasons>"`` for a pretraining run whose last epoch reported ``swav/collapsed``, else None."""
    feat_dim = finite_or_none(run.params.get("pretrain.feat_dim"))
    return collapse_label(run.metrics, int(feat_dim) if feat_dim else None)
