"""``python -m bench readonly``: how long the read-only commands take, and their peak memory.

A newcomer runs ``ablate status`` many times; each read-only command used to import torch and
torchvision through the trainers' packages (~4 s and ~1 GB of a 2-core machine). This benchmark
fabricates a study in a local sqlite store (one launch run, two pretraining runs and 48 fine-tuning
runs with metric histories, ``--quick``: 8), then runs each command in a fresh process, as a user
does, and reports its wall time and peak RSS (the child's ``ru_maxrss``) against ``python -c "import
experiments"`` measured the same way in the same run. Median of the repeats. Each command runs twice: as
shipped (a local sqlite store read through ``experiments/store/sqlite_reader.py``, no MLflow import) and through
MLflow's own client (``ABLATE_READ_WITH_MLFLOW=1``), the way every command read the store before.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from experiments.store.sqlite_reader import MLFLOW_CLIENT_ENV
from trainers.vocabulary import DET_AP, DET_AP50, DET_LOSS, SWAV_LOSS, SWAV_LOSS_OVER_LN_K

STUDY = "readonly_bench"
GOAL_S, GOAL_REPORT_S, GOAL_MB = 1.5, 2.5, 400


def fabricate(uri: str, finetunes: int) -> None:
    """A finished study: a launch run, two backbones, ``finetunes`` fine-tuning runs over two axes and seeds."""
    from experiments.store.tracking import Tracker
    from trainers.vocabulary import TAG_CELL, TAG_HASH, TAG_NAME, TAG_PRUNED, TAG_SEED, TAG_STAGE, TAG_UPSTREAM
    from trainers.vocabulary import TAG_AXES

    tracker = Tracker(uri, STUDY)
    tracker.set_experiment_tags({TAG_AXES: "finetune.backbone,finetune.norm"})
    parent = tracker.create_run("launch", {TAG_STAGE: "launch"})
    backbones = {}
    for k in (30, 100):
        name = f"res18_ep2_p{k}"
        run = tracker.create_run(name, {TAG_STAGE: "pretrain", TAG_NAME: name, TAG_HASH: f"pre{k}", TAG_PRUNED: "false"},
                                 parent_run_id=parent)
        tracker.log_params_tags(run, params={"pretrain.prototypes": str(k), "pretrain.epochs": "2"})
        for epoch in (1, 2):
            tracker.log_metrics(run, {SWAV_LOSS: 3.0 / epoch, SWAV_LOSS_OVER_LN_K: 0.9 / epoch}, step=epoch)
        tracker.finish(run)
        backbones[name] = run
    for i in range(finetunes):
        backbone = list(backbones)[i % 2]
        norm, seed = ("bn", "frozen_bn")[(i // 2) % 2], i // 4
        name = f"{backbone} · {norm} · mlp · 357 · seed{seed}"
        run = tracker.create_run(name, {TAG_STAGE: "finetune", TAG_NAME: name, TAG_HASH: f"ft{i}", TAG_SEED: str(seed),
                                        TAG_UPSTREAM: backbones[backbone], TAG_PRUNED: "false",
                                        TAG_CELL: f"{backbone} · {norm} · mlp · 357"}, parent_run_id=parent)
        tracker.log_params_tags(run, params={"finetune.backbone": backbone, "finetune.norm": norm,
                                             "finetune.seed": str(seed), "finetune.epochs": "2"})
        for epoch in (1, 2):
            value = 0.2 + 0.05 * (norm == "frozen_bn") + 0.01 * (seed % 3) + 0.02 * epoch
            tracker.log_metrics(run, {DET_AP50: value, DET_AP: value / 2, DET_LOSS: 1.0 / epoch}, step=epoch)
        tracker.finish(run)
    tracker.finish(parent)


def measure(args: Sequence[str], cwd: Path, repeats: int, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(median wall s, peak RSS MB of the largest run, exit code) of ``python args`` in fresh processes (``env``:
    added to the environment)."""
    walls, peaks, code = [], [], 0
    for _ in range(repeats):
        code_text = ("import resource, subprocess, sys, time\n"
                     "t = time.perf_counter(); c = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
                     "w = time.perf_counter() - t\n"
                     "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, c)")
        out = subprocess.run([sys.executable, "-c", code_text, sys.executable, *args], cwd=cwd, capture_output=True,
                             text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
        wall, rss, code = out.stdout.split()
        walls.append(float(wall))
        peaks.append(int(rss) / 1024)
        code = int(code)

    return statistics.median(walls), max(peaks), code


def run(quick: bool = False) -> str:
    repeats = 2 if quick else 5
    finetunes = 8 if quick else 48
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ablate-readonly-bench-") as tmp:
        folder = Path(tmp)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        fabricate(uri, finetunes)
        space = Path(__file__).resolve().parent.parent / "search_spaces" / "smoke.yaml"
        cli = ["-m", "experiments.cli"]
        commands = {
            'python -c "import experiments"': ["-c", "import experiments"],
            "ablate status": [*cli, "status", "--tracking-uri", uri],
            f"ablate status {STUDY}": [*cli, "status", STUDY, "--tracking-uri", uri],
            f"ablate report {STUDY}": [*cli, "report", STUDY, "--tracking-uri", uri],
            "ablate models": [*cli, "models", "--tracking-uri", uri],
            "ablate launch smoke.yaml --dry-run": [*cli, "launch", str(space), "--dry-run", "--tracking-uri", uri],
        }
        measure(commands["ablate launch smoke.yaml --dry-run"], folder, 1)  # generates the sample set once, untimed
        results = {name: measure(args, folder, repeats) for name, args in commands.items()}
        # the same commands through MLflow's own client (how they read the store before sqlite_reader.py)
        before = {name: measure(args, folder, repeats, {MLFLOW_CLIENT_ENV: "1"})
                  for name, args in commands.items() if name.startswith("ablate")}
    base_wall, base_rss, _ = results['python -c "import experiments"']
    rows = []
    for name, (wall, rss, code) in results.items():
        goal = GOAL_REPORT_S if name.startswith("ablate report") else GOAL_S
        verdict = "-" if name.startswith("python") else ("met" if wall <= goal and rss <= GOAL_MB else "not met")
        old = (f"{before[name][0]:.2f} s, {before[name][1]:.0f} MB" if name in before else "-")
        rows.append(f"| `{name}` | {wall:.2f} | {wall / base_wall:.1f}x | {rss:.0f} | {code} | {verdict} | {old} |")
    return "\n".join([
        "## Read-only commands: wall time and peak memory",
        "",
        f"Command: `python -m bench readonly`{' --quick' if quick else ''}. A local sqlite store with one fabricated "
        f"study (a launch, 2 backbones, {finetunes} fine-tuning runs with metric histories); each command in a fresh "
        f"process, median of {repeats}; peak RSS of the process. Goals: <= {GOAL_S} s and <= {GOAL_MB} MB "
        f"(report: <= {GOAL_REPORT_S} s) on an idle machine. `models` has no registered model here.",
        "",
        "| command | wall s | vs `import experiments` | peak RSS MB | exit | goal | through MLflow's client |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "None of them imports torch or MLflow (tests/experiments/results/report/test_report.py checks it): on a local "
        "sqlite store they read MLflow's tables through `experiments/store/sqlite_reader.py`. The last column is the same command "
        f"reading through `MlflowClient` (`{MLFLOW_CLIENT_ENV}=1`), as they all did before: `import mlflow` and its "
        "store's start-up.",
        f"({time.time() - started:.0f} s.)",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    from bench import run_alone

    run_alone("readonly", __doc__, run, argv)


if __name__ == "__main__":
    main()
