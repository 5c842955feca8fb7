"""Pruning savings: the planted-collapse grid launched with collapse pruning on vs off.

The grid: two tiny SwAV pretraining trials that differ only in the swapped-prediction
temperature, 0.1 (the paper's, healthy) and 100 (the planted collapse: every prediction is
flattened to uniform, the loss sits at ln K from the first step and the encoder gets no signal),
each followed by one tiny fine-tuning trial. Launched twice with ``ablate launch`` in fresh
folders: ``pruning: {enabled: true}`` (the shipped defaults, as smoke.yaml) and
``pruning: {enabled: false}``. Counts come from the MLflow stores: epochs logged per run, the
``ablate.pruned`` tags and the parent run's ``launch/pruned_epochs_saved``,
``launch/pruned_epochs_budgeted`` and ``launch/finetune_skipped``.

Run: ``make bench`` or ``python -m bench pruning_saved``; this file alone:
``python -m bench.pruning_saved [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench.orchestration import LaunchRecord, TrialRecord, machine_line, run_launch, write_space
from experiments.testing.spaces import COLLAPSED, CONTROL_LR, HEALTHY, planted_collapse_space
from trainers.vocabulary import (
    LAUNCH_FINETUNE_SKIPPED,
    LAUNCH_PRUNED_EPOCHS_BUDGETED,
    LAUNCH_PRUNED_EPOCHS_SAVED,
    SWAV_LOSS_OVER_LN_K,
    TAG_PRUNED,
    TAG_STATE,
)

# HEALTHY, COLLAPSED (the two temperatures) and CONTROL_LR: experiments/testing/spaces.py, shared with the tests.
PAPER_EPOCHS = (100, 200)  # the paper's pretraining budgets, for the computed savings


@dataclass
class Outcome:
    """One launch's pruning bookkeeping."""

    launch: LaunchRecord
    healthy: TrialRecord
    collapsed: TrialRecord

    @property
    def epochs_run(self) -> int:
        return self.healthy.epochs + self.collapsed.epochs

    @staticmethod
    def pruned(t: TrialRecord) -> bool:
        return t.tags.get(TAG_PRUNED) == "true"

    @property
    def finetunes(self) -> int:
        """Fine-tuning trials that ran (the one on the pruned backbone is planned, then skipped)."""
        return sum(1 for t in self.launch.stage("finetune") if t.tags.get(TAG_STATE) != "skipped")

    def metric(self, key: str) -> float:
        return float(self.launch.parent_metrics.get(key, math.nan))

    @property
    def trial_phase_s(self) -> float:
        """First trial's start to the end of the stages."""
        return self.launch.finish_s - self.launch.ordered[0].start_s


def outcome(launch: LaunchRecord) -> Outcome:
    """Find the healthy and the collapsed pretraining run of a launch (by their temperature param)."""
    by_t = {float(t.params["pretrain.temperature"]): t for t in launch.stage("pretrain")}
    if set(by_t) != {HEALTHY, COLLAPSED}:
        raise RuntimeError(f"expected pretraining runs at temperatures {HEALTHY} and {COLLAPSED}, got {sorted(by_t)}")
    return Outcome(launch, by_t[HEALTHY], by_t[COLLAPSED])


def launch_pair(epochs: int, folder: Path) -> tuple[Outcome, Outcome]:
    """Launch the planted-collapse grid with pruning on, then off; return both outcomes."""
    out = []
    for enabled in (True, False):
        name = f"bench_prune_{'on' if enabled else 'off'}"
        space = planted_collapse_space(name, epochs, pruning=enabled)
        cwd = folder / name
        cwd.mkdir()
        out.append(outcome(run_launch(write_space(cwd, space), cwd, name)))
    return out[0], out[1]


def run(quick: bool = False) -> str:
    """Launch the grid with pruning on and off; return the markdown section.

    Args:
        quick: an 8-epoch budget instead of 16 (the default pruner stops a collapse at epoch 6 at the
            earliest, so a quick run saves little; it checks the machinery).
    """
    epochs = 8 if quick else 16
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        on, off = launch_pair(epochs, Path(tmp))
    saved = on.metric(LAUNCH_PRUNED_EPOCHS_SAVED)
    budget = on.metric(LAUNCH_PRUNED_EPOCHS_BUDGETED)
    fraction = saved / budget if budget else math.nan
    healthy_pruned = int(on.pruned(on.healthy)) + int(off.pruned(off.healthy))
    prune_epoch = on.collapsed.epochs if on.pruned(on.collapsed) else None
    verdict_saved = ("meets it" if fraction >= 0.60 else
                     f"misses it by {100 * (0.60 - fraction):.0f} points" if math.isfinite(fraction) else
                     "misses it: nothing was pruned")
    verdict_healthy = "meets it" if healthy_pruned == 0 else f"misses it: {healthy_pruned} healthy run(s) pruned"
    ratio = on.launch.wall_s / off.launch.wall_s

    def status(o: Outcome, t: TrialRecord) -> str:
        return "pruned" if o.pruned(t) else t.status.lower()

    def row(label: str, o: Outcome) -> str:
        return (f"| {label} | {o.healthy.epochs} ({status(o, o.healthy)}) | {o.collapsed.epochs} "
                f"({status(o, o.collapsed)}) | {o.epochs_run} | {o.finetunes} | {o.launch.wall_s:.0f} | "
                f"{o.trial_phase_s:.0f} |")

    paper = ", ".join(f"{(e - prune_epoch) / e:.0%} of {e}" for e in PAPER_EPOCHS) if prune_epoch else "-"
    lines = [
        "## Pruning savings (planted collapse, pruning on vs off)",
        "",
        f"Command: `make bench` / `python -m bench pruning_saved`{' (quick)' if quick else ''}. {machine_line()}.",
        f"Grid: two tiny SwAV pretraining trials (resnet18, 16 images of 32/16 px, {epochs} epochs each, "
        f"lr {CONTROL_LR['base_lr']}), "
        f"temperature {HEALTHY} (healthy) and {COLLAPSED:.0f} (planted collapse: loss pinned at ln K), each "
        "followed by one tiny fine-tuning trial; one `ablate launch` each with `pruning: {enabled: true}` "
        "(the shipped pruner defaults: warm-up 2 epochs, patience 4) and `{enabled: false}`. Epoch counts are "
        "exact (seeded runs, read back from the MLflow stores); the wall-clock figures are one launch each.",
        "",
        "| pruning | healthy: epochs | collapsed: epochs | pretraining epochs run | fine-tuning trials | "
        "launch s | trial phase s |",
        "|---|---|---|---|---|---|---|",
        row("on", on),
        row("off (baseline)", off),
        "",
        f"Saved: **{saved:.0f} of the collapsed trial's {budget:.0f} budgeted epochs ({fraction:.0%})** "
        f"(launch/pruned_epochs_saved / launch/pruned_epochs_budgeted; epochs run on vs off: "
        f"{on.epochs_run} vs {off.epochs_run}), goal >= 60 %: {verdict_saved}. Healthy trials pruned: "
        f"**{healthy_pruned}** (goal 0): {verdict_healthy}. Fine-tuning trials skipped because their backbone "
        f"was pruned: {on.metric(LAUNCH_FINETUNE_SKIPPED):.0f}. Launch time with pruning: {ratio:.2f}x the "
        "launch without.",
        f"The collapsed run's loss / ln K with pruning off: {off.collapsed.metrics.get(SWAV_LOSS_OVER_LN_K, math.nan):.4f} "
        f"at its last epoch (the healthy run's: {off.healthy.metrics.get(SWAV_LOSS_OVER_LN_K, math.nan):.4f}).",
        f"The saved fraction is (budget - prune epoch) / budget: the pruner stopped the collapse at epoch "
        f"{prune_epoch if prune_epoch else '-'} (warm-up + patience), whatever the budget. With the "
        f"{epochs}-epoch budget used here that is {fraction:.0%}; at the paper's budgets the same prune epoch "
        f"would save {paper} (computed, not measured).",
        f"The control runs at lr {CONTROL_LR['base_lr']} per batch of 256 (0.01 at its batch of 8) rather than the "
        "tiny test spaces' 1.6 (0.05 at batch 8): at 0.05, on "
        "16 images, the temperature-0.1 run itself collapses after about ten epochs (its embedding std fell "
        "from 0.16 to 0.023, under the pruner's floor of 0.025 for 16 dimensions, and its loss settled at "
        "1.004-1.006 ln K; measured while sizing this benchmark), and the pruner stopped it at epoch 15 "
        "- a correct prune, but no longer a healthy control.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table (``--quick`` for an 8-epoch budget)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 epochs instead of 16")
    args = parser.parse_args(argv)
    print(run(quick=args.quick))


if __name__ == "__main__":
    main()
