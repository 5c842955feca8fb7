"""Fidelity: does SwAV pretraining lift AP@0.5 over the fair scratch baseline here, and by how much?

The study's claim is that SwAV pretraining on unlabeled images lifts a Faster R-CNN fine-tuned on
a small labeled set (AP50 0.22 -> 0.444). This benchmark runs ``ablate launch
search_spaces/fidelity.yaml`` in a fresh folder (its own store, as a user would) on the `digits`
sample set: real handwritten digits on real photographs, ten categories, 25x more unlabeled scenes
than labeled ones. The space pretrains SwAV backbones, fine-tunes each with several seeds, and
trains the fair no-pretraining baseline (trainable BatchNorm, one learning rate, a 3x schedule:
He et al., "Rethinking ImageNet Pre-training") with the same seeds and the same detector
otherwise. A third arm is a control: the pretrained arm's detector exactly (FBN, the 3-5-7 rates
that all but freeze the trunk) on a *random* trunk. When a frozen random trunk with a trained FPN
and heads does as well as the SwAV trunk, a gain over the fair baseline comes from the detector
recipe, not from pretraining; the control makes that visible. From the store it reads, per group
(each backbone, the baseline, the control):

- mean +- std over seeds of the final ``det/AP50`` and ``det/AP``;
- the backbone's ``swav/knn_top1`` against ``swav/knn_top1_random`` (the kNN monitor);
- the fine-tuning curves: ``det/AP50`` against the optimizer steps (``det/iterations``), plotted
  to ``docs/fidelity_curves.png`` beside the backbones' kNN curves.

Goals: the best pretrained group >= 1.2x the fair baseline on mean AP50, with the gap larger than
the seeds' std; kNN top-1 at least 10 points above the random trunk.

Run: ``make bench`` or ``python -m bench fidelity``; ``--quick`` runs a cut-down space (the small
set, 2 seeds, a few epochs) that checks the pipeline, not the claim.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from bench.orchestration import ROOT, TrialRecord, run_launch

SPACE = ROOT / "search_spaces" / "fidelity.yaml"
PLOT = ROOT / "docs" / "fidelity_curves.png"
GOAL_AP50_RATIO = 1.2  # pretrained / scratch, mean AP50 over seeds
GOAL_KNN_POINTS = 0.10  # kNN top-1 above the random trunk's, in accuracy (10 points)
SCRATCH = "scratch"
BASELINE, CONTROL, PRETRAINED = "baseline", "control", "pretrained"


def scratch_role(norm: str, lr_scheme: str) -> str:
    """A scratch arm is the fair baseline when it trains its trunk the ordinary way (trainable BN or GN, one
    learning rate), else the random-trunk control."""
    return BASELINE if norm in ("bn", "gn") and lr_scheme == "uniform" else CONTROL


@dataclass
class Group:
    """The fine-tuning runs on one backbone (or on none: scratch), one per seed."""

    name: str
    role: str  # pretrained | baseline | control
    ap50: list[float] = field(default_factory=list)
    ap: list[float] = field(default_factory=list)
    curves: list[list[tuple[float, float]]] = field(default_factory=list)  # per seed: (steps, AP50)
    knn: float | None = None  # the backbone's last swav/knn_top1
    knn_random: float | None = None  # its random trunk's
    knn_curve: list[tuple[int, float]] = field(default_factory=list)  # (pretraining epoch, kNN top-1)
    pretrain_loss_over_ln_k: float | None = None

    @property
    def seeds(self) -> int:
        return len(self.ap50)

    @property
    def pretrained(self) -> bool:
        return self.role == PRETRAINED


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def groups_from(trials: Sequence[TrialRecord], history: dict[tuple[str, str], list[tuple[int, float]]]) -> list[Group]:
    """Group the launch's fine-tuning runs by backbone; attach the backbone's kNN figures.

    Args:
        trials: the launch's runs (``bench.orchestration.read_store``).
        history: ``(run id, metric) -> [(step, value), ...]`` for ``det/AP50``, ``det/iterations``
            (fine-tuning runs) and ``swav/knn_top1`` (pretraining runs).
    """
    from experiments.tracking import TAG_UPSTREAM, UPSTREAM_SCRATCH

    pretrain = {t.run_id: t for t in trials if t.stage == "pretrain"}
    groups: dict[str, Group] = {}
    for t in sorted((t for t in trials if t.stage == "finetune" and t.status == "FINISHED"), key=lambda t: t.name):
        upstream = t.tags.get(TAG_UPSTREAM, "")
        if "det/AP50" not in t.metrics:
            continue
        if upstream == UPSTREAM_SCRATCH:
            norm, scheme = t.params.get("finetune.norm", "?"), t.params.get("finetune.lr_scheme", "?")
            role, backbone = scratch_role(norm, scheme), None
            key = f"{SCRATCH}:{norm}:{scheme}"
            what = "fair baseline" if role == BASELINE else "control: random trunk, pretrained arm's detector"
            name = f"scratch {t.params.get('finetune.arch', '?').replace('resnet', 'res')} ({what}; {norm}, {scheme})"
        else:
            role, backbone, key = PRETRAINED, pretrain.get(upstream), upstream
            name = f"SwAV {backbone.name if backbone else upstream[:8]}"
        group = groups.setdefault(key, Group(name, role))
        group.ap50.append(t.metrics["det/AP50"])
        group.ap.append(t.metrics.get("det/AP", math.nan))
        steps = dict(history.get((t.run_id, "det/iterations"), []))
        group.curves.append([(steps.get(epoch, math.nan), ap) for epoch, ap in history.get((t.run_id, "det/AP50"), [])])
        if backbone is not None:
            group.knn = backbone.metrics.get("swav/knn_top1")
            group.knn_random = backbone.metrics.get("swav/knn_top1_random")
            group.knn_curve = list(history.get((backbone.run_id, "swav/knn_top1"), []))
            group.pretrain_loss_over_ln_k = backbone.metrics.get("swav/loss_over_ln_k")
    order = {PRETRAINED: 0, BASELINE: 1, CONTROL: 2}
    return sorted(groups.values(), key=lambda g: (order[g.role], g.name))


@dataclass(frozen=True)
class Verdict:
    """The goals, judged on the best pretrained group against the fair baseline (and the control beside it)."""

    best: Group | None
    scratch: Group | None  # the fair baseline
    control: Group | None  # the random-trunk control, when the space has one
    ratio: float  # best pretrained mean AP50 / the baseline's mean AP50
    gap: float  # their difference
    noise: float  # the larger of the two groups' std
    knn_points: float  # best group's kNN top-1 minus its random trunk's
    ap_goal: bool
    knn_goal: bool


def judge(groups: Sequence[Group]) -> Verdict:
    """Compare the best pretrained group (by mean AP50) with the fair scratch baseline."""
    scratch = next((g for g in groups if g.role == BASELINE), None)
    control = next((g for g in groups if g.role == CONTROL), None)
    pretrained = [g for g in groups if g.pretrained]
    best = max(pretrained, key=lambda g: mean_std(g.ap50)[0], default=None)
    if best is None or scratch is None:
        return Verdict(best, scratch, control, math.nan, math.nan, math.nan, math.nan, False, False)
    (b, b_std), (s, s_std) = mean_std(best.ap50), mean_std(scratch.ap50)
    ratio = b / s if s > 0 else math.inf if b > 0 else math.nan
    noise = max(b_std, s_std)
    knn_points = (best.knn - best.knn_random) if best.knn is not None and best.knn_random is not None else math.nan
    return Verdict(best, scratch, control, ratio, b - s, noise, knn_points,
                   ap_goal=ratio >= GOAL_AP50_RATIO and (b - s) > noise,
                   knn_goal=knn_points >= GOAL_KNN_POINTS)


def plot(groups: Sequence[Group], path: Path, title: str) -> None:
    """Fine-tuning curves (AP50 against steps, one line per seed, mean bold) and the backbones' kNN curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.6), gridspec_kw={"width_ratios": [1.6, 1]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(groups):
        colour = {BASELINE: "0.25", CONTROL: "0.6"}.get(g.role, colours[i % len(colours)])
        for curve in g.curves:
            left.plot([x for x, _ in curve], [y for _, y in curve], color=colour, alpha=0.35, lw=1)
        if g.curves and all(len(c) == len(g.curves[0]) for c in g.curves):
            xs = [statistics.fmean(c[k][0] for c in g.curves) for k in range(len(g.curves[0]))]
            ys = [statistics.fmean(c[k][1] for c in g.curves) for k in range(len(g.curves[0]))]
            m, s = mean_std(g.ap50)
            left.plot(xs, ys, color=colour, lw=2.2, ls="--" if not g.pretrained else "-",
                      label=f"{g.name}: {m:.3f} ± {s:.3f} ({g.seeds} seeds)")
        if g.pretrained and g.knn_curve:
            start = [(0, g.knn_random)] if g.knn_random is not None else []  # epoch 0: the random initial trunk
            curve = start + list(g.knn_curve)
            right.plot([e for e, _ in curve], [v for _, v in curve], color=colour, lw=2, marker="o", ms=3, label=g.name)
            if g.knn_random is not None:
                right.axhline(g.knn_random, color=colour, ls=":", lw=1.2)
    left.set_xlabel("fine-tuning steps (optimizer iterations)")
    left.set_ylabel("val AP@0.5")
    left.set_title("Fine-tuning: AP@0.5 against steps (thin: seeds; bold: mean)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.16), frameon=False)
    right.set_xlabel("pretraining epoch")
    right.set_ylabel("kNN top-1 on val objects")
    right.set_title("kNN monitor (dotted: random trunk)")
    right.grid(alpha=0.3)
    if right.lines:
        right.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.16), frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    # The plotted numbers beside the picture, so that it can be redrawn without rerunning the study.
    path.with_suffix(".json").write_text(json.dumps([dataclasses.asdict(g) for g in groups], indent=1) + "\n")


def histories(store: Path, trials: Sequence[TrialRecord]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """The per-step metrics the study's table and plot need, from the launch's sqlite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for t in trials:
        keys = ("det/AP50", "det/iterations") if t.stage == "finetune" else ("swav/knn_top1",) if t.stage == "pretrain" else ()
        for key in keys:
            points: dict[int, float] = {}
            for m in client.get_metric_history(t.run_id, key):
                points[int(m.step)] = float(m.value)
            out[(t.run_id, key)] = sorted(points.items())
    return out


def quick_space(path: Path) -> Path:
    """A cut-down copy of the fidelity space: the small digits set, 2 seeds, a few epochs (checks the pipeline)."""
    raw = yaml.safe_load(SPACE.read_text())
    raw["name"] = "fidelity_quick"
    raw["data"]["sample"]["size"] = "small"
    raw["seeds"] = raw["seeds"][:2]
    raw["pretrain"]["fixed"].update(epochs=2, max_images=32, batch_size=16)
    raw["pretrain"]["fixed"].pop("queue_length", None)
    raw["finetune"]["fixed"]["epochs"] = 1
    for case in raw["finetune"].get("cases", []):
        if "epochs" in case:
            case["epochs"] = 3
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def section(groups: Sequence[Group], verdict: Verdict, wall_s: float, space: Path, quick: bool,
            plot_path: Path | None) -> str:
    """The BENCHMARKS.md section."""
    spec = yaml.safe_load(space.read_text())
    ft, pre = spec["finetune"]["fixed"], spec["pretrain"]["fixed"]
    rows = []
    for g in groups:
        (m, s), (am, astd) = mean_std(g.ap50), mean_std(g.ap)
        knn = f"{g.knn:.3f} (random {g.knn_random:.3f})" if g.knn is not None and g.knn_random is not None else "-"
        rows.append(f"| {g.name} | {g.seeds} | {m:.3f} ± {s:.3f} | {am:.3f} ± {astd:.3f} | {knn} |")

    def yes(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    v = verdict
    if v.best is None or v.scratch is None:
        judged = "The launch produced no comparable pretrained and scratch groups; nothing to judge."
    else:
        judged = (f"Best pretrained ({v.best.name}) against the fair baseline: AP50 ratio **{v.ratio:.2f}x** (goal >= "
                  f"{GOAL_AP50_RATIO}x), gap {v.gap:+.3f} against a seed std of {v.noise:.3f} (the gap must exceed it): "
                  f"{yes(v.ap_goal)}. kNN top-1 {v.knn_points * 100:+.1f} points over the random trunk (goal >= "
                  f"+{GOAL_KNN_POINTS * 100:.0f}): {yes(v.knn_goal)}.")
        if v.control is not None:
            (b, _), (c, c_std) = mean_std(v.best.ap50), mean_std(v.control.ap50)
            own = ("above" if b - c > max(c_std, mean_std(v.best.ap50)[1]) else
                   "below" if b < c else "not clearly above")
            judged += (f" Against the control (the same detector on a random trunk: {c:.3f} ± {c_std:.3f}) the "
                       f"SwAV trunk is {own} it ({b - c:+.3f}): that difference is what pretraining itself adds.")
    lines = [
        "## Fidelity: SwAV pretraining against the fair scratch baseline (digits)",
        "",
        f"Command: `make bench` / `python -m bench fidelity`{' --quick (a pipeline check, not the claim)' if quick else ''}; "
        f"the space: `{space.relative_to(ROOT) if space.is_relative_to(ROOT) else space.name}` "
        f"(`ablate launch` in a fresh folder). Machine: {os.cpu_count()} CPUs ({platform.machine()}), "
        f"{wall_s / 60:.1f} min end to end.",
        f"Data: the `digits` sample ({spec['data']['sample'].get('size', 'small')}), real handwritten digits on real "
        f"photographs, 10 categories. Pretraining: SwAV {pre.get('arch')} for {pre.get('epochs')} epochs. "
        f"Fine-tuning: Faster R-CNN ({ft.get('head')} head) at {ft.get('min_size')} px, the pretrained trunk with "
        f"`norm: {ft.get('norm')}` and `lr_scheme: {ft.get('lr_scheme')}` for {ft.get('epochs')} epochs"
        + (f" of at most {ft['max_iters_per_epoch']} steps of {ft.get('batch_size')} images" if ft.get("max_iters_per_epoch") else "")
        + "; scratch with "
        "the fair baseline's trainable BN, one learning rate and the 3x schedule. Seeds: fine-tuning seeds; "
        "mean ± sample std over them.",
        "",
        "| group | seeds | AP50 | AP | backbone kNN top-1 |",
        "|---|---|---|---|---|",
        *rows,
        "",
        judged,
    ]
    if plot_path is not None:
        rel = plot_path.relative_to(ROOT) if plot_path.is_relative_to(ROOT) else plot_path
        lines += ["", f"![fine-tuning curves and kNN monitor]({rel})"]
    return "\n".join(lines) + "\n"


def run(quick: bool = False, plot_path: Path | None = None) -> str:
    """Launch the fidelity space in a fresh folder, read its store, plot, and return the section."""
    with tempfile.TemporaryDirectory(prefix="bench-fidelity-") as tmp:
        space = quick_space(Path(tmp) / "fidelity_quick.yaml") if quick else SPACE
        study = yaml.safe_load(space.read_text())["name"]
        work = Path(tmp) / "work"
        work.mkdir()
        started = time.time()
        record = run_launch(space, work, study, timeout=3600, threads=None)
        wall = time.time() - started
        groups = groups_from(record.trials, histories(work / "mlruns", record.trials))
        verdict = judge(groups)
        target = plot_path or (Path(tmp) / "fidelity_curves.png" if quick else PLOT)
        plot(groups, target, f"{study}: {'quick pipeline check' if quick else 'digits, SwAV vs fair scratch'}")
        text = section(groups, verdict, wall, space, quick, target if not quick or plot_path else None)
        shutil.rmtree(work, ignore_errors=True)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    """Print the section (``--quick`` for the cut-down space)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small set, 2 seeds, a few epochs")
    args = parser.parse_args(argv)
    print(run(quick=args.quick))


if __name__ == "__main__":
    main()


__all__: list[Any] = ["Group", "Verdict", "groups_from", "judge", "mean_std", "plot", "run", "section"]
