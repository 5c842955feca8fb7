"""Fidelity: does SwAV pretraining lift AP@0.5 over the fair scratch baseline here, and by how much?

The study's claim is that SwAV pretraining on unlabeled images lifts a Faster R-CNN fine-tuned on
a small labeled set (AP50 0.22 -> 0.444). This benchmark runs ``ablate launch
search_spaces/fidelity.yaml`` in a fresh folder (its own store, as a user would) on the `digits`
sample set: real handwritten digits, ten categories, labeled 256 px scenes, and object-centric
unlabeled images whose views share their digit (``view_overlap`` measures it for the space's
crops). The space pretrains a SwAV backbone and fine-tunes it with several seeds in two recipes
(the paper's FBN + 3-5-7 rates, and BN + one rate), and trains the fair no-pretraining baseline
(trainable BatchNorm, one learning rate, a 3x schedule: He et al., "Rethinking ImageNet
Pre-training") with the same seeds and the same detector otherwise. A further arm is a control:
the pretrained arm's detector exactly (FBN, the 3-5-7 rates that all but freeze the trunk) on a
*random* trunk; what the SwAV arm gains over it is what pretraining itself adds. From the store
it reads, per group:

- mean +- std over seeds of the final ``det/AP50`` and ``det/AP``;
- the backbone's monitor (``trainers/swav/knn.py``): kNN top-1 and linear probe on the monitor's
  objects, each against the spread over random initialisations (mean +- std) and the raw-pixel
  line, the trunk's effective rank against the random trunks', and the collapse label with its
  reasons (``trainers/swav/collapse.py``);
- the curves: ``det/AP50`` against the optimizer steps, the monitor per pretraining epoch, and the
  collapse signals per epoch, plotted to ``docs/fidelity_curves.png``.

Goals: the best pretrained group >= 1.2x the fair baseline on mean AP50, with the gap larger than
the seeds' std; its backbone's kNN top-1 at least 10 points above the random initialisations' mean
(and more than two of their std).

Run: ``python -m bench fidelity`` (the CPU profile, ``search_spaces/fidelity.yaml``); ``--space
search_spaces/fidelity_gpu.yaml`` runs the GPU profile on a machine with a GPU; ``--quick`` runs a
cut-down space (the small set, 2 seeds, a few epochs) that checks the pipeline, not the claim.
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
from trainers.swav.collapse import collapse_label
from trainers.swav.knn import LEARNED_POINTS, learned, monitor_text
from trainers.vocabulary import (
    DET_AP,
    DET_AP50,
    DET_ITERATIONS,
    MONITOR_METRICS,
    MONITOR_REFERENCES,
    PIXELS,
    RANDOM_MEAN,
    RANDOM_STD,
    SWAV_COLLAPSED,
    SWAV_EMBEDDING_STD,
    SWAV_EPOCHS_AT_LN_K,
    SWAV_KNN_TOP1,
    SWAV_KNN_TOP1_RANDOM,
    SWAV_KNN_TOP1_RANDOM_STD,
    SWAV_KNN_Z_TOP1,
    SWAV_LOSS_OVER_LN_K,
    SWAV_LOSS_OVER_LN_K_MIN,
    SWAV_PROBE_TOP1,
    SWAV_PROTOTYPE_SPAN,
    SWAV_SCORE_STD,
    SWAV_TRUNK_RANK,
    SWAV_TRUNK_RANK_RANDOM,
    reference_key,
)

SPACE = ROOT / "search_spaces" / "fidelity.yaml"
GPU_SPACE = ROOT / "search_spaces" / "fidelity_gpu.yaml"
PLOT = ROOT / "docs" / "fidelity_curves.png"
GOAL_AP50_RATIO = 1.2  # pretrained / scratch, mean AP50 over seeds
GOAL_KNN_POINTS = LEARNED_POINTS  # kNN top-1 above the random initialisations' mean (10 points, and > 2 std)
GOAL_VIEW_OVERLAP = 0.5  # share of code-view / other-view pairs that hold the same digit legibly
SCRATCH = "scratch"
BASELINE, CONTROL, PRETRAINED, POSITIVE = "baseline", "control", "pretrained", "positive"
GOAL_POSITIVE_RATIO = 1.5  # the supervised trunk (positive control) / the fair baseline, decided: the assay sees help
# The backbone's figures the study reads (its pretraining run's last value of each).
MONITOR_KEYS = tuple(reference_key(key, ref) for key in MONITOR_METRICS for ref in ("", *MONITOR_REFERENCES)) + (
    SWAV_COLLAPSED, SWAV_LOSS_OVER_LN_K, SWAV_LOSS_OVER_LN_K_MIN, SWAV_EPOCHS_AT_LN_K, SWAV_EMBEDDING_STD,
    SWAV_SCORE_STD, SWAV_PROTOTYPE_SPAN)
# Per-epoch curves of the backbone: the monitor and the collapse signals.
CURVE_KEYS = (SWAV_KNN_TOP1, SWAV_KNN_Z_TOP1, SWAV_PROBE_TOP1, SWAV_TRUNK_RANK, SWAV_LOSS_OVER_LN_K, SWAV_PROTOTYPE_SPAN,
              SWAV_SCORE_STD, SWAV_EMBEDDING_STD)


def scratch_role(norm: str, lr_scheme: str) -> str:
    """A scratch arm is the fair baseline when it trains its trunk the ordinary way (trainable BN or GN, one
    learning rate), else the random-trunk control."""
    return BASELINE if norm in ("bn", "gn") and lr_scheme == "uniform" else CONTROL


def arm(backbone: str | None, arch: str, norm: str, lr_scheme: str, method: str = "swav") -> tuple[str, str]:
    """The (name, role) of a fine-tuning arm: a pretrained backbone's name (``method`` swav or supervised, the
    positive control), or None for a scratch trunk of ``arch``."""
    if backbone is not None and method == "supervised":
        return f"supervised {backbone} (positive control; {norm}, {lr_scheme})", POSITIVE
    if backbone is not None:
        return f"SwAV {backbone} ({norm}, {lr_scheme})", PRETRAINED
    role = scratch_role(norm, lr_scheme)
    what = "fair baseline" if role == BASELINE else "control: random trunk, pretrained arm's detector"
    return f"scratch {arch.replace('resnet', 'res')} ({what}; {norm}, {lr_scheme})", role


@dataclass
class Group:
    """The fine-tuning runs of one arm (a backbone and a detector recipe, or scratch), one per seed."""

    name: str
    role: str  # pretrained | baseline | control
    ap50: list[float] = field(default_factory=list)
    ap: list[float] = field(default_factory=list)
    curves: list[list[tuple[float, float]]] = field(default_factory=list)  # per seed: (steps, AP50)
    backbone: str = ""  # the pretraining run's name (pretrained arms)
    monitor: dict[str, float] = field(default_factory=dict)  # the backbone's MONITOR_KEYS
    feat_dim: int | None = None
    signals: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # CURVE_KEYS -> (epoch, value)

    @property
    def seeds(self) -> int:
        return len(self.ap50)

    @property
    def pretrained(self) -> bool:
        return self.role == PRETRAINED

    @property
    def knn(self) -> float | None:
        return self.monitor.get(SWAV_KNN_TOP1)

    @property
    def collapsed(self) -> str | None:
        """``"collapsed: <reasons>"`` when the backbone's last epoch was labelled collapsed."""
        return collapse_label(self.monitor, self.feat_dim)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def groups_from(trials: Sequence[TrialRecord], history: dict[tuple[str, str], list[tuple[int, float]]]) -> list[Group]:
    """Group the launch's fine-tuning runs by arm; attach the backbone's monitor figures and curves.

    Args:
        trials: the launch's runs (``bench.orchestration.read_store``).
        history: ``(run id, metric) -> [(step, value), ...]`` for ``det/AP50``, ``det/iterations``
            (fine-tuning runs) and :data:`CURVE_KEYS` (pretraining runs).
    """
    from experiments.store.tracking import UPSTREAM_SCRATCH
    from trainers.vocabulary import TAG_UPSTREAM

    pretrain = {t.run_id: t for t in trials if t.stage == "pretrain"}
    groups: dict[str, Group] = {}
    for t in sorted((t for t in trials if t.stage == "finetune" and t.status == "FINISHED"), key=lambda t: t.name):
        upstream = t.tags.get(TAG_UPSTREAM, "")
        if DET_AP50 not in t.metrics:
            continue
        norm, scheme = t.params.get("finetune.norm", "?"), t.params.get("finetune.lr_scheme", "?")
        key = f"{upstream}:{norm}:{scheme}"
        backbone = None if upstream == UPSTREAM_SCRATCH else pretrain.get(upstream)
        name, role = arm(None if upstream == UPSTREAM_SCRATCH else backbone.name if backbone else upstream[:8],
                         t.params.get("finetune.arch", "?"), norm, scheme,
                         backbone.params.get("pretrain.method", "swav") if backbone else "swav")
        group = groups.setdefault(key, Group(name, role))
        group.ap50.append(t.metrics[DET_AP50])
        group.ap.append(t.metrics.get(DET_AP, math.nan))
        steps = dict(history.get((t.run_id, DET_ITERATIONS), []))
        group.curves.append([(steps.get(epoch, math.nan), ap) for epoch, ap in history.get((t.run_id, DET_AP50), [])])
        if backbone is not None:
            group.backbone = backbone.name
            group.monitor = {k: backbone.metrics[k] for k in MONITOR_KEYS if k in backbone.metrics}
            feat_dim = backbone.params.get("pretrain.feat_dim")
            group.feat_dim = int(float(feat_dim)) if feat_dim not in (None, "", "none") else None
            group.signals = {k: list(history.get((backbone.run_id, k), [])) for k in CURVE_KEYS}
    order = {PRETRAINED: 0, POSITIVE: 1, BASELINE: 2, CONTROL: 3}
    return sorted(groups.values(), key=lambda g: (order[g.role], g.name))


@dataclass(frozen=True)
class Verdict:
    """The goals, judged on the best pretrained group against the fair baseline (and the control beside it).

    ``ap``/``control_ap`` are the project's one judge (:func:`experiments.results.verdict.compare`) on the AP50 of the
    arms' seeds: the AP goal is met when the ratio reaches the goal *and* the pretrained arm's win is decided.
    """

    best: Group | None
    scratch: Group | None  # the fair baseline
    control: Group | None  # the random-trunk control, when the space has one
    positive: Group | None  # the supervised trunk (positive control), when the space has one
    ratio: float  # best pretrained mean AP50 / the baseline's mean AP50
    gap: float  # their difference
    ap: Any  # experiments.results.verdict.Verdict of best vs the baseline (None when either is missing)
    control_ap: Any  # the same for best vs the control
    knn_points: float  # best group's kNN top-1 minus the random initialisations' mean
    ap_goal: bool
    knn_goal: bool
    positive_ratio: float = math.nan  # the positive control's mean AP50 / the baseline's
    positive_ap: Any = None  # experiments.results.verdict.Verdict of the positive control vs the baseline
    control_vs_baseline: Any = None  # ... of the random-trunk control vs the baseline
    positive_goal: bool = False  # >= GOAL_POSITIVE_RATIO and decided: the assay can see help
    control_goal: bool = False  # the random-trunk control does not decidedly beat the baseline


def judge(groups: Sequence[Group]) -> Verdict:
    """Compare the best pretrained group (by mean AP50) with the fair scratch baseline, through the one judge."""
    from experiments.results.verdict import compare

    scratch = next((g for g in groups if g.role == BASELINE), None)
    control = next((g for g in groups if g.role == CONTROL), None)
    positive = next((g for g in groups if g.role == POSITIVE), None)
    controls: dict[str, Any] = {}
    if scratch is not None and scratch.ap50:
        s = mean_std(scratch.ap50)[0]
        if positive is not None and positive.ap50:
            p = mean_std(positive.ap50)[0]
            controls["positive_ratio"] = p / s if s > 0 else math.inf if p > 0 else math.nan
            controls["positive_ap"] = compare(positive.name, positive.ap50, scratch.name, scratch.ap50)
            controls["positive_goal"] = (controls["positive_ratio"] >= GOAL_POSITIVE_RATIO
                                         and controls["positive_ap"].decided
                                         and controls["positive_ap"].winner == positive.name)
        if control is not None and control.ap50:
            controls["control_vs_baseline"] = c = compare(control.name, control.ap50, scratch.name, scratch.ap50)
            controls["control_goal"] = not (c.decided and c.winner == control.name)
    pretrained = [g for g in groups if g.pretrained]
    best = max(pretrained, key=lambda g: mean_std(g.ap50)[0], default=None)
    if best is None or scratch is None or not best.ap50 or not scratch.ap50:
        return Verdict(best, scratch, control, positive, math.nan, math.nan, None, None, math.nan, False, False,
                       **controls)
    b, s = mean_std(best.ap50)[0], mean_std(scratch.ap50)[0]
    ratio = b / s if s > 0 else math.inf if b > 0 else math.nan
    ap = compare(best.name, best.ap50, scratch.name, scratch.ap50)
    control_ap = compare(best.name, best.ap50, control.name, control.ap50) if control and control.ap50 else None
    random_mean = best.monitor.get(SWAV_KNN_TOP1_RANDOM)
    knn_points = best.knn - random_mean if best.knn is not None and random_mean is not None else math.nan
    return Verdict(best, scratch, control, positive, ratio, b - s, ap, control_ap, knn_points,
                   ap_goal=ratio >= GOAL_AP50_RATIO and ap.decided and ap.winner == best.name,
                   knn_goal=bool(learned(best.monitor, GOAL_KNN_POINTS)), **controls)


def view_overlap(space: Path, sample_root: Path | None = None, images: int = 400, seed: int = 0) -> dict[str, float]:
    """How often the space's SwAV views hold a digit, and how often two views share one (measured, not assumed).

    The digits set's unlabeled images are regenerated from their seed (the generator returns each
    image's digit boxes); every crop group of the space's pretraining draws its views as the trainer
    does (``random_resized_crop_boxes``). A view *holds* a digit when half of its box is inside and
    the digit is at least 6 px tall after resizing (``trainers.data.digits.legible``); a pair (an
    assignment view and any other view of the same image) *shares* one when both hold the same digit.

    With ``data.sample.renderings`` > 1 the views of an image come from different renderings (the same digits on
    other backgrounds): ``background_differs`` is then the share of background pixels (outside every digit's box)
    whose colour differs between renderings 0 and 1 by more than 24/255 in some channel; 0 without renderings.

    Returns:
        ``{"views_holding": share of views, "pairs_sharing": share of pairs, "background_differs": share}``.
    """
    import numpy as np

    import torch

    from trainers.data import digits
    from trainers.swav.augment import random_resized_crop_boxes
    from trainers.swav.config import as_crop_group

    spec = yaml.safe_load(space.read_text())
    fixed = spec["pretrain"]["fixed"]
    groups = [as_crop_group(g, i) for i, g in enumerate(fixed["crops"])]
    assign = tuple(fixed.get("crops_for_assign", (0, 1)))
    data_seed = int(spec["data"]["sample"].get("seed", 0))
    pool = digits.digit_pools(data_seed)["unlabeled"]
    boxes = [[box for _, box in digits.object_image(data_seed, "unlabeled", i, pool)[1]] for i in range(images)]
    side = torch.full((images,), digits.OBJECT_SIDE)
    generator = torch.Generator().manual_seed(seed)
    holds: list[list[set[int]]] = []  # per view, per image: the digits it holds
    for group in groups:
        for _ in range(group.count):
            views = random_resized_crop_boxes(side, side, (group.min_scale, group.max_scale), generator).tolist()
            holds.append([{j for j, box in enumerate(boxes[i]) if digits.legible(box, tuple(views[i]), group.size)}
                          for i in range(images)])
    views_holding = statistics.fmean(bool(h) for view in holds for h in view)
    pairs = [bool(holds[c][i] & holds[v][i]) for c in assign for v in range(len(holds)) if v != c
             for i in range(images)]
    differs = []
    if int(spec["data"]["sample"].get("renderings", 1)) > 1:
        for i in range(min(images, 100)):
            first, objects = digits.object_image(data_seed, "unlabeled", i, pool)
            other = digits.rendering(data_seed, "unlabeled", i, pool, 1)
            background = np.ones(first.shape[:2], dtype=bool)
            for _, (x, y, w, h) in objects:
                background[max(0, y):max(0, y + h), max(0, x):max(0, x + w)] = False
            changed = (np.abs(first.astype(int) - other.astype(int)).max(axis=2) > 24)[background]
            differs.append(float(changed.mean()))
    return {"views_holding": views_holding, "pairs_sharing": statistics.fmean(pairs),
            "background_differs": statistics.fmean(differs) if differs else 0.0}


def plot(groups: Sequence[Group], path: Path, title: str, meta: dict[str, Any] | None = None) -> None:
    """Three panels: fine-tuning curves (AP50 against steps; thin: seeds, bold: mean), the backbone's monitor per
    pretraining epoch against its references, and the collapse signals per epoch with their thresholds.

    Writes ``path`` and, beside it, the plotted numbers as JSON (``{"groups": [...], **meta}``), which
    :func:`redraw` turns back into the picture and the section without rerunning the study.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainers.swav.collapse import LN_K_BAND, RANK_FLOOR, SPAN_FLOOR

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5.6), gridspec_kw={"width_ratios": [1.5, 1, 1]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v"
    backbones: list[str] = []
    for i, g in enumerate(groups):
        colour = {BASELINE: "0.25", CONTROL: "0.6"}.get(g.role, colours[i % len(colours)])
        for curve in g.curves:
            left.plot([x for x, _ in curve], [y for _, y in curve], color=colour, alpha=0.35, lw=1)
        if g.curves and all(len(c) == len(g.curves[0]) for c in g.curves):
            xs = [statistics.fmean(c[k][0] for c in g.curves) for k in range(len(g.curves[0]))]
            ys = [statistics.fmean(c[k][1] for c in g.curves) for k in range(len(g.curves[0]))]
            m, s = mean_std(g.ap50)
            label = f"{g.name}{' [COLLAPSED]' if g.collapsed else ''}: {m:.3f} ± {s:.3f} ({g.seeds} seeds)"
            left.plot(xs, ys, color=colour, lw=2.2, ls="--" if not g.backbone else "-", label=label)
        if not g.backbone or g.backbone in backbones:
            continue
        backbones.append(g.backbone)
        marker = markers[(len(backbones) - 1) % len(markers)]
        # The monitor: one colour per figure (kNN, probe), the backbone by its marker.
        for key, mc, what in ((SWAV_KNN_TOP1, "tab:blue", "kNN"), (SWAV_KNN_Z_TOP1, "tab:cyan", "kNN (standardised)"),
                              (SWAV_PROBE_TOP1, "tab:orange", "linear probe")):
            curve = g.signals.get(key, [])
            mean, std = g.monitor.get(reference_key(key, RANDOM_MEAN)), g.monitor.get(reference_key(key, RANDOM_STD))
            if mean is not None:  # epoch 0: the random initialisations
                curve = [(0, mean), *curve]
            if curve:
                middle.plot([e for e, _ in curve], [v for _, v in curve], color=mc, marker=marker, ms=3.5,
                            label=f"{g.backbone}: {what}")
            if mean is not None and std is not None and len(backbones) == 1:
                middle.axhspan(mean - std, mean + std, color=mc, alpha=0.15, label=f"{what}: random inits mean ± std")
            if (pixels := g.monitor.get(reference_key(key, PIXELS))) is not None and len(backbones) == 1:
                middle.axhline(pixels, color=mc, ls=":", lw=1.3, label=f"{what}: raw pixels")
        for key, mc, what in ((SWAV_LOSS_OVER_LN_K, "tab:red", "loss / ln K"), (SWAV_PROTOTYPE_SPAN, "tab:green",
                                                                                 "prototype span")):
            curve = g.signals.get(key, [])
            if curve:
                right.plot([e for e, _ in curve], [v for _, v in curve], color=mc, marker=marker, ms=3,
                           label=f"{g.backbone}: {what}")
        rank, random_rank = g.signals.get(SWAV_TRUNK_RANK, []), g.monitor.get(SWAV_TRUNK_RANK_RANDOM)
        if rank and random_rank:
            right.plot([e for e, _ in rank], [v / random_rank for _, v in rank], color="tab:purple", marker=marker,
                       ms=3, label=f"{g.backbone}: trunk rank / random trunks'")
    if backbones:
        right.axhspan(1 - LN_K_BAND, 1 + LN_K_BAND, color="tab:red", alpha=0.2, label="ln K band (3 epochs: collapsed)")
        right.axhline(SPAN_FLOOR, color="tab:green", ls=":", lw=1.2, label=f"span floor {SPAN_FLOOR}")
        right.axhline(RANK_FLOOR, color="tab:purple", ls=":", lw=1.2, label=f"rank floor {RANK_FLOOR}x")
    left.set_xlabel("fine-tuning steps (optimizer iterations)")
    left.set_ylabel("val AP@0.5")
    left.set_title("Fine-tuning: AP@0.5 against steps (thin: seeds; bold: mean)")
    middle.set_xlabel("pretraining epoch (0: random initialisations)")
    middle.set_ylabel("top-1 on the monitor's val objects")
    middle.set_title("Monitor against random inits (bands) and raw pixels (dotted)")
    right.set_xlabel("pretraining epoch")
    right.set_title("Collapse signals and their thresholds")
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(0.0, -0.16), frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps({**(meta or {}), "title": title,
                                                     "groups": [dataclasses.asdict(g) for g in groups]}, indent=1) + "\n")


def redraw(data: Path, plot_path: Path | None = None) -> str:
    """The picture and the section again from a run's JSON (written by :func:`plot`), without rerunning the study."""
    raw = json.loads(data.read_text())
    groups = [Group(**{**g, "curves": [[tuple(p) for p in c] for c in g["curves"]],
                       "signals": {k: [tuple(p) for p in v] for k, v in g["signals"].items()}}) for g in raw["groups"]]
    target = plot_path or data.with_suffix(".png")
    plot(groups, target, raw["title"], {k: v for k, v in raw.items() if k not in ("groups", "title")})
    space = ROOT / raw["space"]
    return section(groups, judge(groups), raw["wall_s"], space, raw.get("quick", False), target, raw.get("overlap"))


def histories(store: Path, trials: Sequence[TrialRecord]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """The per-step metrics the study's table and plot need, from the launch's sqlite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for t in trials:
        keys = (DET_AP50, DET_ITERATIONS) if t.stage == "finetune" else CURVE_KEYS if t.stage == "pretrain" else ()
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
    raw["pretrain"]["fixed"].update(epochs=2, max_images=64, batch_size=32, knn_max_objects=60, queue_length=0,
                                    freeze_prototypes_epochs=1)
    raw["finetune"]["fixed"]["epochs"] = 1
    for case in raw["finetune"].get("cases", []):
        if "epochs" in case:
            case["epochs"] = 3
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _monitor_cell(g: Group, what: str) -> str:
    return monitor_text(g.monitor, what) if g.backbone else "-"


def _rank_cell(g: Group) -> str:
    rank, mean = g.monitor.get(SWAV_TRUNK_RANK), g.monitor.get(SWAV_TRUNK_RANK_RANDOM)
    if not g.backbone or rank is None:
        return "-"
    return f"{rank:.1f} (random {mean:.1f})" if mean is not None else f"{rank:.1f}"


def table(groups: Sequence[Group]) -> list[str]:
    """The arms' table: AP50 and AP as mean ± std over seeds, the backbone's monitor against its references."""
    rows = []
    for g in groups:
        (m, s), (am, astd) = mean_std(g.ap50), mean_std(g.ap)
        state = ("**collapsed**" if g.collapsed else "learning" if learned(g.monitor) else "not above random") \
            if g.backbone and g.monitor else "-"
        rows.append(f"| {g.name} | {g.seeds} | {m:.3f} ± {s:.3f} | {am:.3f} ± {astd:.3f} | {_monitor_cell(g, SWAV_KNN_TOP1)} "
                    f"| {_monitor_cell(g, SWAV_KNN_Z_TOP1)} | {_monitor_cell(g, SWAV_PROBE_TOP1)} | {_rank_cell(g)} | {state} |")
    return [
        "| group | seeds | AP50 | AP | backbone kNN top-1 (cosine) | kNN top-1 (standardised) | linear probe "
        "| trunk rank | backbone |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "kNN and linear probe on the monitor's objects (`trainers/swav/knn.py`), each with the mean ± std over 5 "
        "random initialisations and the raw pixels' figure; the standardised kNN z-scores each feature dimension on "
        "the bank first, so a few high-variance directions cannot decide the neighbours; trunk rank: RankMe of the "
        "pooled features against the random trunks'. Collapse: `trainers/swav/collapse.py`.",
    ]


def judgement(v: Verdict) -> str:
    """The verdict in words: the best pretrained arm against the fair baseline and the control, with their intervals."""

    def yes(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    instrument = ""
    if v.positive is not None and v.positive_ap is not None:
        instrument += (f"The instrument: the positive control ({v.positive.name}) against the fair baseline: AP50 ratio "
                       f"**{v.positive_ratio:.2f}x** (goal >= {GOAL_POSITIVE_RATIO}x, and the difference decided): "
                       f"{v.positive_ap.text('AP50')}: {yes(v.positive_goal)}. ")
    if v.control is not None and v.control_vs_baseline is not None:
        instrument += (f"The random-trunk control against the fair baseline (goal: not decidedly above it): "
                       f"{v.control_vs_baseline.text('AP50')}: {yes(v.control_goal)}. ")
    if v.best is None or v.scratch is None:
        judged = "The study produced no comparable SwAV and scratch groups; nothing to judge."
    else:
        spread = v.best.monitor.get(SWAV_KNN_TOP1_RANDOM_STD)
        judged = (f"Best pretrained ({v.best.name}) against the fair baseline: AP50 ratio **{v.ratio:.2f}x** (goal >= "
                  f"{GOAL_AP50_RATIO}x, and the difference decided): {v.ap.text('AP50')}: {yes(v.ap_goal)}. "
                  f"kNN top-1 {v.knn_points * 100:+.1f} points over the random initialisations' mean"
                  + (f" (their std {spread * 100:.1f} points)" if spread is not None else "")
                  + f" (goal >= +{GOAL_KNN_POINTS * 100:.0f} and more than two std): {yes(v.knn_goal)}.")
        if v.best.collapsed:
            judged += f" Its backbone is **{v.best.collapsed}**."
        if v.control is not None and v.control_ap is not None:
            c, c_std = mean_std(v.control.ap50)
            c_ap = v.control_ap
            own = ("above" if c_ap.decided and c_ap.winner == v.best.name else
                   "below" if c_ap.decided else "not decidedly different from")
            judged += (f" Against the control (the same detector on a random trunk: {c:.3f} ± {c_std:.3f}) the "
                       f"SwAV trunk is {own} it ({c_ap.text('AP50')}): that difference is what pretraining itself "
                       "adds.")
    return instrument + judged


def section(groups: Sequence[Group], verdict: Verdict, wall_s: float, space: Path, quick: bool,
            plot_path: Path | None, overlap: dict[str, float] | None = None) -> str:
    """The BENCHMARKS.md section."""
    spec = yaml.safe_load(space.read_text())
    ft, pre = spec["finetune"]["fixed"], spec["pretrain"]["fixed"]
    judged = judgement(verdict)
    crops = " + ".join(f"{g['count']}x{g['size']} px at {g['min_scale']}-{g['max_scale']}" for g in pre["crops"])
    lines = [
        "## Fidelity: SwAV pretraining against the fair scratch baseline (digits)",
        "",
        f"Command: `python -m bench fidelity`{' --quick (a pipeline check, not the claim)' if quick else ''}; "
        f"the space: `{space.relative_to(ROOT) if space.is_relative_to(ROOT) else space.name}` "
        f"(`ablate launch` in a fresh folder). Machine: {os.cpu_count()} CPUs ({platform.machine()}), "
        f"{wall_s / 60:.1f} min end to end.",
        f"Data: the `digits` sample ({spec['data']['sample'].get('size', 'small')}): labeled 256 px scenes of real "
        "handwritten digits, 10 categories; object-centric 64 px unlabeled images on fresh backgrounds. "
        f"Pretraining: SwAV {pre.get('arch')}, K={pre.get('prototypes')} for feat_dim {pre.get('feat_dim')}, "
        f"{pre.get('epochs')} epochs at batch {pre.get('batch_size')}, crops {crops}"
        + ("; the positive control: the same trunk, crops and schedule trained with the unlabeled images' digit "
           "classes (`method: supervised`). " if any(g.role == POSITIVE for g in groups) else ". ") +
        f"Fine-tuning: Faster R-CNN ({ft.get('head')} head) at {ft.get('min_size')} px for {ft.get('epochs')} epochs; "
        "scratch with the fair baseline's trainable BN, one learning rate and the 3x schedule. Seeds: fine-tuning "
        "seeds; mean ± sample std over them.",
    ]
    if overlap is not None:
        lines.append(f"Views: {overlap['views_holding']:.0%} of this space's SwAV views hold a digit legibly (half "
                     f"its box inside, >= 6 px tall) and {overlap['pairs_sharing']:.0%} of assignment-view / other-view "
                     f"pairs share one (goal >= {GOAL_VIEW_OVERLAP:.0%}; `bench.fidelity.view_overlap`); "
                     + (f"each view comes from its own rendering, and {overlap.get('background_differs', 0):.0%} of "
                        "the background pixels differ between two renderings (a property of the digits set: "
                        "`data.sample.renderings`)." if overlap.get("background_differs") else
                        "the views of an image share its background."))
    lines += ["", *table(groups), "", judged]
    collapsed = sorted({f"{g.backbone}: {g.collapsed}" for g in groups if g.pretrained and g.collapsed})
    lines += [f"- backbone {text}" for text in collapsed]
    if plot_path is not None:
        rel = plot_path.relative_to(ROOT) if plot_path.is_relative_to(ROOT) else plot_path
        lines += ["", f"![fine-tuning curves, monitor and collapse signals]({rel})"]
    return "\n".join(lines) + "\n"


def run(quick: bool = False, plot_path: Path | None = None, space: Path | None = None) -> str:
    """Launch the fidelity space in a fresh folder, read its store, plot, and return the section."""
    with tempfile.TemporaryDirectory(prefix="bench-fidelity-") as tmp:
        space = quick_space(Path(tmp) / "fidelity_quick.yaml") if quick else (space or SPACE)
        study = yaml.safe_load(space.read_text())["name"]
        overlap = view_overlap(space, images=100 if quick else 400)
        work = Path(tmp) / "work"
        work.mkdir()
        started = time.time()
        record = run_launch(space, work, study, timeout=3600, threads=None)
        wall = time.time() - started
        groups = groups_from(record.trials, histories(work / "mlruns", record.trials))
        verdict = judge(groups)
        target = plot_path or (Path(tmp) / "fidelity_curves.png" if quick else PLOT)
        where = space.relative_to(ROOT) if space.is_relative_to(ROOT) else space
        plot(groups, target, f"{study}: {'quick pipeline check' if quick else 'digits, SwAV vs fair scratch'}",
             {"wall_s": wall, "space": str(where), "quick": quick, "overlap": overlap})
        text = section(groups, verdict, wall, space, quick, target if not quick or plot_path else None, overlap)
        shutil.rmtree(work, ignore_errors=True)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    """Print the section (``--quick`` for the cut-down space, ``--space`` for another profile)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small set, 2 seeds, a few epochs")
    parser.add_argument("--space", type=Path, default=None,
                        help=f"the space to run (default {SPACE.relative_to(ROOT)}; {GPU_SPACE.relative_to(ROOT)} on a GPU)")
    parser.add_argument("--redraw", type=Path, default=None, metavar="JSON",
                        help="redraw the picture and print the section from a run's JSON (docs/fidelity_curves.json)")
    args = parser.parse_args(argv)
    print(redraw(args.redraw) if args.redraw else run(quick=args.quick, space=args.space))


if __name__ == "__main__":
    main()


__all__: list[Any] = ["Group", "Verdict", "arm", "groups_from", "judge", "judgement", "mean_std", "plot", "redraw",
                      "run", "section", "table", "view_overlap"]
