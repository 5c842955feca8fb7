"""The texts a running launch prints: the status line, the summary, a failed trial's error.

The Tune callback that prints them is :class:`experiments.launch.callbacks.DriverCallback`; this module
imports no Ray.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from experiments.launch.trial import key_metric
from trainers.vocabulary import (
    LAUNCH_FINETUNE_SKIPPED,
    LAUNCH_PRUNED_EPOCHS_BUDGETED,
    LAUNCH_PRUNED_EPOCHS_SAVED,
    LAUNCH_PRUNED_FRACTION_SAVED,
    LAUNCH_TRIALS_FAILED,
    LAUNCH_TRIALS_PLANNED,
    LAUNCH_TRIALS_PRUNED,
    LAUNCH_TRIALS_REUSED,
    LAUNCH_TRIALS_RUN,
    LAUNCH_TRIALS_STOPPED,
    METRIC_LABELS,
    STAGE_PRETRAIN,
    SWAV_KNN_TOP1,
)

if TYPE_CHECKING:  # type hints only
    from experiments.launch.context import TrialOutcome

STATES = ("running", "done", "pruned", "failed", "stopped")


def status_line(stage: str, states: Iterable[str], total: int, remaining_epochs: int, per_epoch_s: float,
                max_concurrent: int) -> str:
    """``pretrain status  running 1  pending 2  done 3  pruned 0  failed 0  of 6  ETA 1.5 min``.

    Args:
        stage: the stage.
        states: the state of every trial seen so far (running, done, pruned, failed).
        total: the stage's number of trials; those not seen yet are pending.
        remaining_epochs: epochs the running and pending trials still have to train.
        per_epoch_s: mean seconds per epoch so far (NaN before the first: ETA ``?``).
        max_concurrent: trials run at once.
    """
    states = list(states)
    counts = {s: states.count(s) for s in STATES}
    pending = total - sum(counts.values())
    conc = max(1, min(max_concurrent, counts["running"] + pending))
    eta = remaining_epochs * per_epoch_s / conc
    eta_s = f"{eta / 60:.1f} min" if math.isfinite(eta) else "?"
    stopped = f"  stopped {counts['stopped']}" if counts["stopped"] else ""
    return (f"{stage:8} status  running {counts['running']}  pending {pending}  done {counts['done']}"
            f"  pruned {counts['pruned']}  failed {counts['failed']}{stopped}  of {total}  ETA {eta_s}")


def format_summary(outcomes: Sequence[TrialOutcome], counts: Mapping[str, float], warnings: Sequence[str] = (),
                   feat_dims: Mapping[str, int] | None = None) -> str:
    """The table printed at the end of a launch (with the plan's warnings, which the results carry).

    A pretraining run whose last epoch reported ``swav/collapsed`` is marked "collapsed" with its reasons
    (``feat_dims``: config hash -> the run's feat_dim, which the reasons' thresholds scale with), and its
    kNN figure is shown beside its references (random-init spread, raw pixels).
    """
    from trainers.swav.collapse import collapse_label
    from trainers.swav.references import monitor_text

    lines = ["", "summary", f"  {'stage':8}  {'status':8}  {'epochs':>7}  {'key metric':>18}  name / reason"]
    order = {"done": 0, "reused": 1, "pruned": 2, "failed": 3, "skipped": 4}
    for o in sorted(outcomes, key=lambda o: (o.stage != STAGE_PRETRAIN, order.get(o.status, 9), o.name)):
        key = key_metric(o.stage, o.metrics)
        val = o.metrics.get(key)
        label = METRIC_LABELS.get(key, key.split("/")[-1])  # one label per metric, as in the report
        shown = f"{label} {val:.4f}" if isinstance(val, float) and math.isfinite(val) else "-"
        epochs = f"{o.epochs_run}/{o.epochs_budget}" if o.epochs_budget else "-"
        reason = f"  ({o.reason})" if o.reason and o.status != "done" else ""
        if o.stage == STAGE_PRETRAIN:
            collapsed = collapse_label(o.metrics, (feat_dims or {}).get(o.config_hash))
            reason += f"  {collapsed.replace('collapsed', 'COLLAPSED', 1)}" if collapsed else ""
            reason += f"  kNN {monitor_text(o.metrics)}" if SWAV_KNN_TOP1 in o.metrics else ""
        lines.append(f"  {o.stage:8}  {o.status:8}  {epochs:>7}  {shown:>18}  {o.name}{reason}")
    lines.append("")
    lines.append(f"  trials planned {counts[LAUNCH_TRIALS_PLANNED]:.0f}, run {counts[LAUNCH_TRIALS_RUN]:.0f}, reused "
                 f"{counts[LAUNCH_TRIALS_REUSED]:.0f}, pruned {counts[LAUNCH_TRIALS_PRUNED]:.0f}, failed "
                 f"{counts[LAUNCH_TRIALS_FAILED]:.0f}, fine-tunes skipped {counts[LAUNCH_FINETUNE_SKIPPED]:.0f}"
                 + (", stopped {:.0f} (the same launch command resumes them)".format(counts[LAUNCH_TRIALS_STOPPED])
                    if counts.get(LAUNCH_TRIALS_STOPPED) else ""))
    if counts.get(LAUNCH_PRUNED_EPOCHS_BUDGETED):
        lines.append("  pruning saved {saved:.0f} of {budget:.0f} budgeted epochs ({frac:.0%}) and {skip:.0f} fine-tuning "
                     "trials".format(saved=counts[LAUNCH_PRUNED_EPOCHS_SAVED],
                                     budget=counts[LAUNCH_PRUNED_EPOCHS_BUDGETED],
                                     frac=counts[LAUNCH_PRUNED_FRACTION_SAVED], skip=counts[LAUNCH_FINETUNE_SKIPPED]))
    lines += [f"  warning: {w}" for w in warnings]
    return "\n".join(lines)


def trial_error(trial: Any) -> str:
    """A failed Ray trial's error text: its message, else its error file, else a line saying there is none."""
    for attr in ("error_msg",):
        msg = getattr(trial, attr, None)
        if msg:
            return str(msg)
    path = getattr(trial, "error_file", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return "trial failed (no error text recorded by Ray)"
