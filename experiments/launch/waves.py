"""Adaptive seeds in a launch: the waves of fine-tuning seeds after the initial ones.

:class:`SeedWaves` asks :func:`experiments.launch.adaptive.next_wave` which cells get one more seed (from
the results in the tracking store, judged by the one judge), hands the launcher the next seed's
trials of those cells as one more fine-tuning stage, and repeats until every cell has stopped. At
the end every run of a cell carries ``ablate.cell_seeds`` (the seeds it got) and
``ablate.seeds_stop`` (why it got no more: ``decided``, ``max`` or ``budget``).

A wave is the same trials whenever it is computed from the same results (seeds are numbered, their
config hashes fixed by the plan), so a relaunch after ``kill -9`` walks the same waves: the
finished trials are reused, an interrupted one resumes from its checkpoint, none is duplicated.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

from experiments.launch.adaptive import next_wave
from experiments.results.headline import trials_from_runs
from experiments.launch.context import LaunchContext
from experiments.launch.ledger import trial_cell
from experiments.spaces import FinetuneTrial, Plan
from trainers.vocabulary import DET_AP50, STAGE_FINETUNE, TAG_AXES, TAG_CELL_SEEDS, TAG_SEEDS_STOP


class SeedWaves:
    """The waves of one launch.

    Args:
        ctx: the launch.
        plan: its plan (``plan.finetune``: the initial seeds, ``plan.reserve``: the others).
        runnable: the cells' trials whose backbone survived (or scratch): their cells take part.
        run_wave: trains a wave's fine-tuning trials (plans their runs, runs the stage) given its number.
        stop_requested: True once ``ablate stop`` asked the launch to stop (no further wave starts).
    """

    def __init__(self, ctx: LaunchContext, plan: Plan, runnable: Callable[[FinetuneTrial], bool],
                 run_wave: Callable[[list[FinetuneTrial], int], None], stop_requested: Callable[[], bool]) -> None:
        assert ctx.spec.adaptive is not None
        self.ctx, self.plan, self.seeds = ctx, plan, ctx.spec.adaptive
        self.run_wave, self.stop_requested = run_wave, stop_requested
        # cell -> its trials per fine-tuning seed, in seed order (with pretraining seeds, one per backbone seed)
        self.cells: dict[str, list[list[FinetuneTrial]]] = {}
        by_seed: dict[str, dict[int, list[FinetuneTrial]]] = {}
        for t in [*plan.finetune, *plan.reserve]:
            if runnable(t):
                by_seed.setdefault(self.cell_of(t), {}).setdefault(t.seed, []).append(t)
        self.cells = {c: [seeds[s] for s in sorted(seeds)] for c, seeds in by_seed.items()}
        self.attempted = {c: min(self.seeds.initial, len(ts)) for c, ts in self.cells.items()}
        self.stopped: dict[str, str] = {}

    def cell_of(self, t: FinetuneTrial) -> str:
        """The trial's ``ablate.cell`` (what the judge's results are keyed by)."""
        return trial_cell(self.ctx, t)

    def results(self) -> list[Any]:
        """The finished results of the seeds each cell has run so far, from the store (the headline's reading).

        Only those seeds: a relaunch finds later waves' trials finished too, and must judge each look as the
        first launch did, or it would walk other waves."""
        tracker = self.ctx.tracker
        hashes = {t.config_hash for c, seeds in self.cells.items() for ts in seeds[:self.attempted[c]] for t in ts}
        runs = [r for h, r in tracker.runs_by_hash(STAGE_FINETUNE).items() if h in hashes]
        return trials_from_runs(runs, self.axes, DET_AP50)

    @functools.cached_property
    def axes(self) -> list[str]:
        """The study's ablated params (the experiment's tag, written before the first stage: read once)."""
        tag = self.ctx.tracker.client.get_experiment(self.ctx.tracker.experiment_id).tags.get(TAG_AXES, "")
        return [a for a in tag.split(",") if a]

    def trials_run(self) -> int:
        """Fine-tuning trials of the seeds run so far (with pretraining seeds, several per cell and seed)."""
        return sum(len(ts) for c, seeds in self.cells.items() for ts in seeds[:self.attempted[c]])

    def run(self) -> None:
        """Waves until every cell stopped (or ``ablate stop``); then each cell's runs are tagged."""
        number = 1
        while not self.stop_requested():
            cost = {c: len(seeds[self.attempted[c]]) for c, seeds in self.cells.items() if self.attempted[c] < len(seeds)}
            wave = next_wave(self.results(), self.axes, self.attempted, self.seeds, self.trials_run(), DET_AP50, cost)
            self.stopped = wave.stopped
            if wave.done:
                break
            number += 1
            trials = [t for c in wave.extend for t in self.cells[c][self.attempted[c]]]
            reasons = ", ".join(f"{n} {r}" for r, n in _counts(wave.stopped.values()))
            self.ctx.say(f"adaptive seeds: wave {number}: {len(wave.extend)} cell(s) still in contention get one more "
                         "seed"
                         + (f"; stopped: {reasons}" if reasons else ""))
            for c in wave.extend:
                self.attempted[c] += 1
            self.run_wave(trials, number)
        self.tag_cells()

    def tag_cells(self) -> None:
        """``ablate.cell_seeds`` and ``ablate.seeds_stop`` on every run of every cell."""
        tracker = self.ctx.tracker
        runs = tracker.runs_by_hash(STAGE_FINETUNE)
        for cell, seeds in self.cells.items():
            reason = self.stopped.get(cell, "stopped")  # `ablate stop` ended the waves before the cell's verdict
            for t in (t for ts in seeds[:self.attempted[cell]] for t in ts):
                run = runs.get(t.config_hash)
                if run is not None:
                    tracker.set_tags(run.info.run_id, {TAG_CELL_SEEDS: str(self.attempted[cell]),
                                                       TAG_SEEDS_STOP: reason})
        counts = ", ".join(f"{n} {r}" for r, n in _counts(self.stopped.values()))
        self.ctx.say(f"adaptive seeds: {self.trials_run()} fine-tuning trials over {len(self.cells)} "
                     f"cells (at most {self.seeds.max} seeds each); why the cells stopped: {counts or 'stopped'}")


def _counts(values: Sequence[str] | Any) -> list[tuple[str, int]]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return sorted(out.items())
