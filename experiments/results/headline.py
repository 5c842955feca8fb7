"""The headline of a study: which choice won, by how much, over how many seeds.

:func:`compute_headline` is the one place it is computed; the launch summary, the launch run's
``summary.txt`` and description, ``ablate report``'s first lines and the registered model
version's description all print the :class:`Headline` it returns. Its input is a list of
:class:`TrialResult` (one finished fine-tuning trial each), which :func:`trials_from_runs` builds
from MLflow runs (``mlflow.entities.Run``) or from the report's ``TrialRun`` records.

What it says:

* the best trial (highest final metric, ``det/AP50`` by default);
* the best pretrained cell against the best no-pretraining (scratch) cell, cells being the
  trials of one configuration over seeds (``ablate.cell``);
* for each ablated axis, its leader (highest mean) against every other value, counting only runs
  that differ in that axis alone (the other axes equal, each setting of them a stratum; for a
  pretraining axis, any pretrained backbone). An axis that never varies alone (smoke's
  ``lr_scheme``, set only on the scratch baseline) is named as not comparable.

Every comparison is judged by :mod:`experiments.results.verdict` (the project's one judge): the difference
of means with its 95 % Welch interval, Holm-corrected within an axis (over every pair of its values:
the leader is picked after looking) and over the pretrained cells compared with the baseline, and
an adaptive-seeds study at its sequential level; and a state: ``decided``,
``undecided`` (with the seeds per cell that would decide it), ``no spread`` (one seed) or ``tie``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from experiments.results.verdict import ALPHA, AxisVerdict, Verdict, judge_axis, judge_family, mean_of, sequential_alpha
from trainers.vocabulary import BACKBONE_PARAM, DET_AP50, METRIC_LABELS, NONE_VALUE

SCRATCH = "scratch"  # finetune.backbone of a run without pretraining (trainers.pairing.SCRATCH)
PRETRAINED = "pretrained"  # the name of the pretrained side of the baseline comparison


@dataclass(frozen=True)
class TrialResult:
    """One finished fine-tuning trial, as the headline needs it.

    Attributes:
        name: the run's name (``res18_ep2_p30 · bn · mlp · 357 · seed0``).
        run_id: the MLflow run id.
        cell: the configuration without the seed (the ``ablate.cell`` tag): seeds of a cell are averaged.
        backbone: the ``finetune.backbone`` param: a pretraining run's name, or ``scratch``.
        axes: ablated param -> value (``finetune.norm`` -> ``bn``; ``none`` where a scratch run has no such field).
        value: the final value of the metric.
    """

    name: str
    run_id: str
    cell: str
    backbone: str
    axes: Mapping[str, str]
    value: float

    @property
    def pretrained(self) -> bool:
        return self.backbone != SCRATCH


@dataclass(frozen=True)
class Headline:
    """What a study found, for the metric it ranks by. Empty (``best`` None) when no trial finished."""

    metric: str
    best: TrialResult | None
    best_cell_mean: float = math.nan
    best_cell_n: int = 0
    baseline: Verdict | None = None  # best pretrained cell vs best scratch cell (either may be the winner)
    axes: list[AxisVerdict] = field(default_factory=list)
    not_comparable: list[str] = field(default_factory=list)  # axes that never vary alone
    baseline_cells: tuple[str, str] = ("", "")  # the cells (ablate.cell) of the baseline comparison: pretrained, scratch

    @property
    def pretrained_wins(self) -> bool:
        return self.baseline is not None and self.baseline.winner.startswith(PRETRAINED)

    @property
    def label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)

    def lines(self) -> list[str]:
        """The headline as plain lines (the launch summary and the report begin with them)."""
        if self.best is None:
            return [f"headline: no finished fine-tuning trial with a finite {self.metric} yet"]
        m = self.label
        out = [f"best trial: {self.best.name}  {m} {self.best.value:.3f}"
               + (f" (its cell: {self.best_cell_mean:.3f} mean of {self.best_cell_n} seeds)" if self.best_cell_n > 1 else "")]
        b = self.baseline
        if b is not None:
            out.append(f"best pretrained vs baseline: {b.text(m)}")
        for a in self.axes:
            out += [f"{_short(a.axis, self.axes)}: {c.text(m)}" for c in a.comparisons]
        for axis in self.not_comparable:
            out.append(f"{axis}: not compared (no two runs differ in it alone)")
        return out

    def text(self) -> str:
        """``headline (det/AP50, means over seeds):`` and the lines, indented."""
        return "\n".join([f"headline ({self.metric}, means over seeds):", *(f"  {ln}" for ln in self.lines())])

    def markdown(self) -> str:
        """The headline as a Markdown list (the launch run's and the model version's description)."""
        return "\n".join([f"**Headline** ({self.metric}, means over seeds)", "", *(f"- {ln}" for ln in self.lines())])

    def one_line(self) -> str:
        """The shortest form: ``best: NAME AP@0.5 0.369; best SwAV 0.266 vs scratch 0.369 (-0.103); prototypes 30 > 100; ...``."""
        if self.best is None:
            return self.lines()[0]
        parts = [f"best: {self.best.name} {self.label} {self.best.value:.3f}"]
        b = self.baseline
        if b is not None:
            pre, scr = (b.winner_mean, b.loser_mean) if self.pretrained_wins else (b.loser_mean, b.winner_mean)
            parts.append(f"best SwAV {pre:.3f} vs scratch {scr:.3f} ({pre - scr:+.3f}, {b.state})")
        for a in self.axes:
            c = a.runner_up
            relation = "=" if c.state == "tie" else ">"
            parts.append(f"{_short(a.axis, self.axes)} {c.winner} {relation} {c.loser}"
                         + ("" if c.state == "tie" else f" ({a.state})"))
        return "; ".join(parts)


def _short(axis: str, comparisons: Sequence[AxisVerdict]) -> str:
    """``finetune.norm`` -> ``norm`` unless another compared axis has the same field name."""
    name = axis.split(".", 1)[-1]
    clash = sum(1 for c in comparisons if c.axis.split(".", 1)[-1] == name) > 1
    return axis if clash else name


def _cells(trials: Sequence[TrialResult]) -> dict[str, list[TrialResult]]:
    out: dict[str, list[TrialResult]] = {}
    for t in trials:
        out.setdefault(t.cell, []).append(t)
    return out


def _value_order(value: str) -> tuple[int, float, str]:
    try:
        number = float(value)
        return (0, number, "") if math.isfinite(number) else (1, 0.0, value)
    except ValueError:
        return (1, 0.0, value)


def axis_strata(trials: Sequence[TrialResult], axis: str,
                axes: Sequence[str]) -> dict[str, dict[tuple, list[TrialResult]]]:
    """Value -> {setting of the other axes -> its trials}, over the settings where the axis varies alone
    (the other axes equal; for a pretraining axis any pretrained backbone, never scratch against pretrained)."""
    others = [a for a in axes if a != axis]
    groups: dict[tuple[str, ...], dict[str, list[TrialResult]]] = {}
    for t in trials:
        value = t.axes.get(axis)
        if value is None or value == NONE_VALUE:
            continue
        key = tuple((("pretrained" if t.pretrained else SCRATCH) if a == BACKBONE_PARAM and axis.startswith("pretrain.")
                     else t.axes.get(a, "")) for a in others)
        groups.setdefault(key, {}).setdefault(value, []).append(t)
    paired: dict[str, dict[tuple, list[TrialResult]]] = {}
    for key, by_value in groups.items():
        if len(by_value) > 1:
            for value, values in by_value.items():
                paired.setdefault(value, {})[key] = values
    return paired


def _axis_verdict(trials: Sequence[TrialResult], axis: str, axes: Sequence[str],
                  max_seeds: int | None, alpha: float) -> AxisVerdict | None:
    """The axis judged among runs that differ in it alone; None when it never does."""
    paired = {v: {k: [t.value for t in ts] for k, ts in strata.items()}
              for v, strata in axis_strata(trials, axis, axes).items()}
    if len(paired) < 2:
        return None
    # equal means: the smaller value first, so a tie reads the same every time
    ordered = dict(sorted(paired.items(), key=lambda kv: (-mean_of(kv[1]), _value_order(kv[0]))))
    return judge_axis(axis, ordered, max_seeds=max_seeds, alpha=alpha)


def compute_headline(trials: Sequence[TrialResult], axes: Sequence[str], metric: str = DET_AP50,
                     max_seeds: int | None = None, alpha: float = ALPHA) -> Headline:
    """The headline of a study from its finished fine-tuning trials.

    Args:
        trials: one per finished, unpruned fine-tuning run with a finite ``metric`` (others are the
            caller's to leave out; :func:`trials_from_runs` does).
        axes: the ablated params (``finetune.backbone``, ``finetune.norm``, ``pretrain.prototypes``),
            e.g. the experiment's ``ablate.axes`` tag or the report's axes.
        metric: the metric the trials' ``value`` holds (higher is better); it names the headline.
        max_seeds: the most seeds per cell the study may run (a space's ``seeds: {max: N}``): undecided
            verdicts give their minimum detectable difference at that count too.
        alpha: the error rate of each family of comparisons (0.05; an adaptive-seeds study judges at its
            sequential level, :func:`experiments.launch.adaptive.sequential_alpha`, every time it looks).

    Returns:
        The :class:`Headline`; ``best`` is None when ``trials`` is empty.
    """
    trials = [t for t in trials if math.isfinite(t.value)]
    if not trials:
        return Headline(metric, None)
    best = max(trials, key=lambda t: (t.value, t.name))
    cells = _cells(trials)
    cell_means = {c: statistics.fmean(t.value for t in runs) for c, runs in cells.items()}
    baseline, baseline_cells = None, ("", "")
    pre = [c for c, runs in cells.items() if runs[0].pretrained]
    scr = [c for c, runs in cells.items() if not runs[0].pretrained]
    if pre and scr:
        bs = max(scr, key=lambda c: cell_means[c])
        base = f"baseline {_cell_name(cells[bs])}"
        # every pretrained cell against the best baseline, Holm over them: the best of many noisy pretrained means
        # is no win unless it survives the correction
        rivals = {f"{PRETRAINED} {_cell_name(cells[c])}": [t.value for t in cells[c]] for c in pre}
        verdicts = judge_family(base, [t.value for t in cells[bs]], rivals, max_seeds=max_seeds, alpha=alpha)
        bp = max(pre, key=lambda c: cell_means[c])
        baseline, baseline_cells = verdicts[pre.index(bp)], (bp, bs)
    comparisons, not_comparable = [], []
    for axis in axes:
        if axis == BACKBONE_PARAM:
            continue  # the backbone is the line above (scratch vs pretrained) and the pretraining axes
        values = {t.axes.get(axis) for t in trials} - {None, NONE_VALUE}
        if len(values) < 2:
            continue
        c = _axis_verdict(trials, axis, axes, max_seeds, alpha)
        if c is None:
            not_comparable.append(axis)
        else:
            comparisons.append(c)
    return Headline(metric, best, cell_means[best.cell], len(cells[best.cell]), baseline, comparisons, not_comparable,
                    baseline_cells)


def _cell_name(runs: Sequence[TrialResult]) -> str:
    """A cell's name: its runs' name without the seed (``res18_ep2_p30 · bn · mlp · 357``)."""
    name = runs[0].name
    head, sep, tail = name.rpartition(" · ")
    return head if sep and tail.startswith("seed") else name


def trials_from_runs(runs: Iterable[Any], axes: Sequence[str], metric: str = DET_AP50) -> list[TrialResult]:
    """Headline inputs from fine-tuning runs: MLflow ``Run`` objects or ``experiments.results.report.TrialRun`` records.

    Runs that are not finished, pruned, failed, or without a finite ``metric`` are left out
    (:func:`experiments.store.tracking.usable_run`). Runs launched before ``finetune.backbone`` and
    ``ablate.cell`` were recorded get them from the upstream tag and from their params without the seed.
    """
    from experiments.store.tracking import UPSTREAM_SCRATCH, usable_run
    from trainers.vocabulary import TAG_CELL, TAG_NAME, TAG_STAGE, TAG_UPSTREAM
    from experiments.spaces import NON_RESULT_FIELDS
    from trainers.vocabulary import STAGE_FINETUNE

    NOT_A_CELL = {*NON_RESULT_FIELDS, "seed"}
    out = []
    for run in runs:
        if hasattr(run, "data"):  # mlflow.entities.Run
            run_id, status, name = run.info.run_id, run.info.status, run.info.run_name
            params, tags, metrics = dict(run.data.params), dict(run.data.tags), dict(run.data.metrics)
        else:  # experiments.results.report.TrialRun
            run_id, status, name = run.run_id, run.status, run.name
            params, tags, metrics = run.params, run.tags, run.metrics
        if tags.get(TAG_STAGE) != STAGE_FINETUNE or not usable_run(status, tags, metrics, STAGE_FINETUNE, metric):
            continue
        name = tags.get(TAG_NAME) or name or run_id
        upstream = tags.get(TAG_UPSTREAM, "")
        backbone = params.get(BACKBONE_PARAM) or (SCRATCH if upstream == UPSTREAM_SCRATCH else name.split(" · ")[0])
        values = {a: params.get(a, NONE_VALUE if a.startswith("pretrain.") and backbone == SCRATCH else None)
                  for a in axes}
        values[BACKBONE_PARAM] = backbone
        # runs from before ablate.cell: the fine-tuning params that make a result (no seed, data paths, workers)
        cell = tags.get(TAG_CELL) or "|".join([backbone, *(f"{k}={v}" for k, v in sorted(params.items())
                                                             if k.startswith("finetune.")
                                                             and k.split(".", 1)[1] not in NOT_A_CELL)])
        out.append(TrialResult(name, run_id, cell, backbone, {a: v for a, v in values.items() if v is not None},
                               float(metrics[metric])))
    return out


def study_headline(client: Any, experiment_id: str, axes: Sequence[str] | None = None, metric: str = DET_AP50,
                   runs: Iterable[Any] | None = None) -> Headline:
    """The headline of a study: its fine-tuning runs through :func:`compute_headline`.

    The one entry point: the launch (its summary and live ``ablate.headline``), ``ablate status``,
    ``ablate report`` and the registry's version descriptions all call it.

    Args:
        client: an ``MlflowClient`` or ``SqliteReader`` of the study's store.
        experiment_id: the study's experiment.
        axes: the ablated params; default: the experiment's ``ablate.axes`` tag (written by ``ablate launch``).
        metric: the ranking metric.
        runs: the study's fine-tuning runs when the caller has read them already (``ablate report``);
            default: read from the store.
    """
    from experiments.store.sqlite_reader import ACTIVE_ONLY
    from experiments.spaces import AdaptiveSeeds
    from trainers.vocabulary import TAG_STAGE
    from trainers.vocabulary import TAG_AXES, TAG_SEEDS

    tags = client.get_experiment(experiment_id).tags
    if axes is None:
        axes = [a for a in tags.get(TAG_AXES, "").split(",") if a]
    # an adaptive-seeds study looked at its results after every wave: it is judged at its sequential level
    adaptive = AdaptiveSeeds.parse(tags.get(TAG_SEEDS))
    judged = {"max_seeds": adaptive.max, "alpha": sequential_alpha(adaptive.looks)} if adaptive else {}
    if runs is not None:
        return compute_headline(trials_from_runs(runs, axes, metric), axes, metric, **judged)
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_STAGE}` = 'finetune'",
                                  run_view_type=ACTIVE_ONLY, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return compute_headline(trials_from_runs(runs, axes, metric), axes, metric, **judged)
