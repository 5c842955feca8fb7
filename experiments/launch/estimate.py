"""How long a plan will take, from what the store measured: the dry run's estimate.

A trial's seconds per epoch are taken from finished runs of any study in the store that trained the
same stage with the same architecture and input size (pretraining: the crops; fine-tuning: the
resized image sides) and the same images per epoch cap: the median of (end - start) / epochs over
them. A stage's time is its trials' epochs x that rate, divided by the trials that run at once. A
trial without such a run has no estimate, and the line says how many of them there are.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable, Mapping

from experiments.spaces import Plan
from trainers.vocabulary import STAGE_FINETUNE, STAGE_PRETRAIN

# The params that decide a trial's time per epoch besides its device: architecture, input size, images per epoch.
SHAPE = {STAGE_PRETRAIN: ("arch", "crops", "batch_size", "max_images"),
         STAGE_FINETUNE: ("arch", "min_size", "max_size", "batch_size", "max_iters_per_epoch")}


def _key(stage: str, values: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(values.get(f"{stage}.{k}", values.get(k, ""))) for k in SHAPE[stage])


def measured_rates(client: Any, max_results: int = 2000) -> dict[tuple[str, tuple[str, ...]], float]:
    """(stage, shape) -> the median seconds per epoch of the store's finished, unpruned trial runs."""
    from experiments.store.sqlite_reader import ACTIVE_ONLY
    from trainers.vocabulary import TAG_PRUNED, TAG_STAGE

    rates: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return {}
    for stage in (STAGE_PRETRAIN, STAGE_FINETUNE):
        runs = client.search_runs(experiments, filter_string=f"tags.`{TAG_STAGE}` = '{stage}' and "
                                  "attributes.status = 'FINISHED'", run_view_type=ACTIVE_ONLY,
                                  max_results=max_results)
        for run in runs:
            epochs = run.data.params.get(f"{stage}.epochs")
            if run.data.tags.get(TAG_PRUNED) == "true" or not epochs or not run.info.end_time:
                continue
            seconds = (run.info.end_time - run.info.start_time) / 1000
            if seconds > 0 and float(epochs) > 0:
                rates.setdefault((stage, _key(stage, run.data.params)), []).append(seconds / float(epochs))
    return {k: statistics.median(v) for k, v in rates.items()}


def estimate_lines(plan: Plan, to_train: Iterable[str], rates: Mapping[tuple[str, tuple[str, ...]], float],
                   max_concurrent: int) -> list[str]:
    """``estimate: ~12 min (pretraining ~8 min, fine-tuning ~4 min) from ...`` or ``estimate: no estimate yet ...``."""
    from experiments.store.tracking import flatten_params

    todo = set(to_train)
    if not todo:
        return ["estimate: nothing to train (every trial of the plan finished in an earlier launch)"]
    total, parts, missing, known = 0.0, [], 0, 0
    for stage, trials in ((STAGE_PRETRAIN, plan.pretrain), (STAGE_FINETUNE, plan.finetune)):
        seconds = 0.0
        for t in trials:
            if t.config_hash not in todo:
                continue
            rate = rates.get((stage, _key(stage, flatten_params(stage, t.config))))
            if rate is None:
                missing += 1
                continue
            known += 1
            seconds += rate * float(t.config.get("epochs", 1))
        if seconds:
            name = "pretraining" if stage == STAGE_PRETRAIN else "fine-tuning"
            parts.append(f"{name} ~{_minutes(seconds / max_concurrent)}")
            total += seconds / max_concurrent
    if not known:
        return ["estimate: no estimate yet (no finished run in this store trained the same architecture and input "
                "size; the first launch measures it)"]
    line = (f"estimate: ~{_minutes(total)} ({', '.join(parts)}), from the seconds per epoch of finished runs in "
            "this store")
    if missing:
        line += f"; {missing} trial(s) have no such run and are not counted"
    return [line]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
