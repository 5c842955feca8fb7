"""``python -m bench adaptive_seeds``: adaptive seeds against the fixed grid, on simulated studies with known truth.

Each simulated study is a full factorial grid of fine-tuning cells whose true mean AP50 is known;
a run's AP50 is its cell's true mean plus seed noise N(0, sigma). sigma = 0.010 is the seed std of
this project's own fidelity study (AP50 seed stds 0.007-0.013, BENCHMARKS.md "Fidelity"). The
arms, repeated many times with fresh noise:

* **fixed max**: every cell runs ``max`` seeds (what a space's ``seeds: [0..max-1]`` does);
* **fixed initial x2**: every cell runs twice the initial seeds (about the adaptive arm's cost);
* **adaptive**: ``seeds: {initial, max}``: the initial seeds, then waves chosen by
  :func:`experiments.launch.adaptive.next_wave` (the launch's own policy, the launch's own judge).

Every arm is judged by the one judge (:func:`experiments.results.headline.compute_headline`). Per axis:
**right** (the leader is the true best and it beats the runner-up decidedly), **open** (nothing
wrong decided, the runner-up comparison not decided), **false win** (a comparison decided for a
value that is not truly better: on a null axis, any decided comparison). Holm bounds the false wins
of each axis at 5 %.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

from experiments.launch.adaptive import AdaptiveSeeds, next_wave
from experiments.results.headline import Headline, TrialResult, compute_headline
from experiments.results.verdict import sequential_alpha
from trainers.vocabulary import DET_AP50

SIGMA = 0.010  # AP50 seed std measured in this project's fidelity study (0.007-0.013)
BASE = 0.30
METRIC = DET_AP50


@dataclass(frozen=True)
class Scenario:
    """A factorial grid: axis -> value -> its true effect on AP50 (added to BASE)."""

    name: str
    effects: Mapping[str, Mapping[str, float]]

    @property
    def axes(self) -> list[str]:
        return list(self.effects)

    def cells(self) -> dict[str, dict[str, str]]:
        names = self.axes
        return {" · ".join(combo): dict(zip(names, combo))
                for combo in itertools.product(*(list(self.effects[a]) for a in names))}

    def true_mean(self, values: Mapping[str, str]) -> float:
        return BASE + sum(self.effects[a][v] for a, v in values.items())


SCENARIOS = (
    Scenario("one clear axis, one close, one null", {
        "finetune.head": {"mlp": 0.0, "linear": -0.03, "res5": -0.05},  # clear: 3 and 5 sigma
        "finetune.norm": {"frozen_bn": 0.01, "bn": 0.0},  # close: 1 sigma
        "finetune.lr_scheme": {"357": 0.0, "uniform": 0.0},  # null
    }),
    Scenario("every axis clear", {
        "finetune.head": {"mlp": 0.0, "linear": -0.03, "res5": -0.05},
        "finetune.norm": {"frozen_bn": 0.03, "bn": 0.0},
    }),
    Scenario("every axis null", {
        "finetune.head": {"mlp": 0.0, "linear": 0.0, "res5": 0.0},
        "finetune.norm": {"frozen_bn": 0.0, "bn": 0.0},
    }),
)


def _trial(cell: str, values: Mapping[str, str], seed: int, value: float) -> TrialResult:
    return TrialResult(f"{cell} · seed{seed}", f"{cell}-{seed}", cell, "scratch", dict(values), value)


def fixed(scenario: Scenario, seeds: int, rng: random.Random) -> tuple[list[TrialResult], int]:
    trials = [_trial(c, v, s, rng.gauss(scenario.true_mean(v), SIGMA))
              for c, v in scenario.cells().items() for s in range(seeds)]
    return trials, len(trials)


def adaptive(scenario: Scenario, plan: AdaptiveSeeds, rng: random.Random) -> tuple[list[TrialResult], int]:
    cells = scenario.cells()
    trials = [_trial(c, v, s, rng.gauss(scenario.true_mean(v), SIGMA)) for c, v in cells.items()
              for s in plan.initial_seeds]
    attempted = dict.fromkeys(cells, plan.initial)
    while True:
        wave = next_wave(trials, scenario.axes, attempted, plan, len(trials), METRIC)
        if wave.done:
            return trials, len(trials)
        for c in wave.extend:
            trials.append(_trial(c, cells[c], attempted[c], rng.gauss(scenario.true_mean(cells[c]), SIGMA)))
            attempted[c] += 1


def score(scenario: Scenario, headline: Headline) -> dict[str, str]:
    """Per axis: right, open or false win (see the module docstring)."""
    out = {}
    for axis in scenario.axes:
        effects = scenario.effects[axis]
        verdict = next((a for a in headline.axes if a.axis == axis), None)
        if verdict is None:
            out[axis] = "open"
            continue
        false = any(c.state == "decided" and effects[c.winner] <= effects[c.loser] for c in verdict.comparisons)
        best = max(effects.values())
        right = (effects[verdict.leader] == best and verdict.runner_up is not None
                 and verdict.runner_up.state == "decided" and best > max(v for k, v in effects.items()
                                                                        if k != verdict.leader))
        out[axis] = "false win" if false else "right" if right else "open"
    return out


def simulate(scenario: Scenario, plan: AdaptiveSeeds, reps: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per arm: mean trials, and the share of (rep, axis) that were right / open / false wins."""
    arms = {f"fixed {plan.max} seeds": lambda rng: fixed(scenario, plan.max, rng),
            f"fixed {2 * plan.initial} seeds": lambda rng: fixed(scenario, 2 * plan.initial, rng),
            f"adaptive {plan.initial}->{plan.max}": lambda rng: adaptive(scenario, plan, rng)}
    real = [a for a in scenario.axes if len(set(scenario.effects[a].values())) > 1]
    null = [a for a in scenario.axes if a not in real]
    results = {}
    for name, arm in arms.items():
        rng = random.Random(seed)
        counts, outcomes = [], []
        for _ in range(reps):
            trials, n = arm(rng)
            counts.append(n)
            alpha = sequential_alpha(plan.looks) if name.startswith("adaptive") else 0.05  # the level each arm's own headline uses
            outcomes.append(score(scenario, compute_headline(trials, scenario.axes, METRIC, alpha=alpha)))
        share = lambda axes, what: (statistics.fmean(o[a] == what for o in outcomes for a in axes)  # noqa: E731
                                    if axes else float("nan"))
        results[name] = {"trials": statistics.fmean(counts), "right": share(real, "right"),
                         "open": share(real, "open"), "false_real": share(real, "false win"),
                         "false_null": share(null, "false win")}
    return results


def real_launch(quick: bool) -> list[str]:
    """One real CPU launch with adaptive seeds (smoke-sized: scratch ResNet-18 on the small sample set, 2 x 2 cells,
    seeds {initial: 2, max: 4}) against the fixed grid it may grow to: its trial count and its headline."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import yaml

    cells = {"norm": ["bn", "gn"], "head": ["mlp", "res5"]}
    plan = AdaptiveSeeds(initial=2, max=4)
    space = {"name": "adaptive_bench", "data": {"sample": {"size": "small", "seed": 0}},
             "seeds": {"initial": plan.initial, "max": plan.max}, "max_concurrent": 2, "pruning": {"enabled": False},
             "finetune": {"fixed": {"arch": "resnet18", "backbone": "scratch", "lr_scheme": "uniform", "epochs": 1,
                                    "batch_size": 2, "max_iters_per_epoch": 4 if quick else 12, "min_size": 128,
                                    "max_size": 128, "workers": 0, "figure_images": 0},
                          "grid": cells, "resources": {"cpu": 1}}}
    with tempfile.TemporaryDirectory(prefix="ablate-adaptive-bench-") as tmp:
        path = Path(tmp) / "adaptive_bench.yaml"
        path.write_text(yaml.safe_dump(space, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "experiments.cli", "launch", str(path), "--no-register"],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=3600)
        wall = time.time() - started
    if proc.returncode != 0:
        return [f"The real launch failed (exit {proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}"]
    out = proc.stdout
    done = next((ln.split("adaptive seeds: ", 1)[1].strip() for ln in out.splitlines()
                 if "adaptive seeds: " in ln and "fine-tuning trials over" in ln), "(no summary line)")
    head = out[out.index("headline ("):].strip().splitlines() if "headline (" in out else []
    n_cells = len(cells["norm"]) * len(cells["head"])
    return ["**A real CPU launch** (smoke-sized: scratch ResNet-18 on the small sample set, "
            f"{' x '.join(f'{k} {v}' for k, v in cells.items())}, `seeds: {{initial: {plan.initial}, max: {plan.max}}}`; "
            f"{wall:.0f} s): {done}; the fixed grid at the maximum would run "
            f"{n_cells * plan.max}. Its headline:", "", "```", *head, "```",
            "At this size every AP50 sits near the detector's floor (no pretraining, a dozen iterations), so "
            "what the launch shows is the mechanism at work on real runs, not an effect."]


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f} %"


def run(quick: bool = False) -> str:
    reps = 40 if quick else 300
    plan = AdaptiveSeeds(initial=2, max=8)
    started = time.time()
    lines = [
        "## Adaptive seeds vs the fixed grid (simulated studies)",
        "",
        f"Command: `python -m bench adaptive_seeds`{' --quick' if quick else ''}. Each study is a factorial grid of "
        f"fine-tuning cells; a run's AP50 is its cell's true mean + N(0, {SIGMA}) (the seed std of this project's "
        f"fidelity study). {reps} repetitions per arm, every arm judged by `experiments/results/verdict.py` through the "
        "headline; the adaptive arm is the launch's own policy (`experiments/launch/adaptive.py`). Per axis with a real "
        "effect: **right** = the true best leads and beats the runner-up decidedly; **open** = undecided; "
        "**false win** = a comparison decided for a value that is not truly better (on a null axis: any decided "
        "comparison; Holm bounds it at 5 % per axis).",
        "",
    ]
    summary = []
    for scenario in SCENARIOS:
        res = simulate(scenario, plan, reps)
        cells = len(scenario.cells())
        effects = "; ".join(f"{a.split('.', 1)[1]}: " + ", ".join(f"{v} {e:+.2f}" for v, e in vals.items())
                            for a, vals in scenario.effects.items())
        lines += [f"**{scenario.name}** ({cells} cells; true effects on AP50: {effects})", "",
                  "| arm | trials (mean) | vs fixed max | right | open | false wins (real axes) | "
                  "false wins (null axes) |", "|---|---|---|---|---|---|---|"]
        full = res[f"fixed {plan.max} seeds"]["trials"]
        for name, r in res.items():
            lines.append(f"| {name} | {r['trials']:.1f} | {r['trials'] / full:.2f}x | {_pct(r['right'])} | "
                         f"{_pct(r['open'])} | {_pct(r['false_real'])} | {_pct(r['false_null'])} |")
        lines.append("")
        a, f = res[f"adaptive {plan.initial}->{plan.max}"], res[f"fixed {plan.max} seeds"]
        met = a["trials"] <= 0.6 * full and (a["right"] != a["right"] or a["right"] >= f["right"])
        summary.append(f"- {scenario.name}: adaptive {a['trials'] / full:.2f}x the trials, right "
                       f"{_pct(a['right'])} against {_pct(f['right'])}; false wins {_pct(a['false_null'])} on null "
                       f"axes: goal (<= 0.60x, accuracy at least the fixed grid's) **{'met' if met else 'not met'}**")
    lines += ["Against the goal:", *summary, "",
              "Why a close call costs accuracy: a cell that lost decidedly on another axis gets no more seeds (racing), "
              "so the close axis's comparison gains seeds only under the leader's settings while its other settings "
              "keep their initial seeds; the fixed grid at the maximum has every setting at the maximum. Every "
              "look is judged at Pocock's level, which keeps the null axes' false wins under 5 %.", "",
              f"(simulation: {time.time() - started:.0f} s.)"]
    lines += ["", *real_launch(quick)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from bench import run_alone

    run_alone("adaptive_seeds", __doc__, run, argv)


if __name__ == "__main__":
    main()
