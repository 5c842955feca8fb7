"""The report's PNGs: SwAV loss per epoch, fine-tuning AP50 curves, and one bar chart per statistical table.

matplotlib is imported inside the functions (a Figure without pyplot), so importing this module stays cheap.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from pathlib import Path
from typing import Any, Sequence

from experiments.results.report.collect import StudyRuns, TrialRun
from experiments.results.report.tables import Stat, Table, _most_common, _value_key, build_tables
from experiments.store.checks import finite_or_none
from experiments.store.tracking import UPSTREAM_SCRATCH
from trainers.vocabulary import DET_AP50, METRIC_LABELS, SWAV_LOSS, TAG_UPSTREAM

CURVE_PANELS = ("norm", "head", "lr_scheme")  # fine-tuning curves grouped by these fields


def _figure(width: float, height: float) -> Any:
    # A Figure without pyplot: no global backend switch (PNG output goes through Agg), safe in threads.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def _prototypes(run: TrialRun) -> float | None:
    """K as the run recorded it: its ``pretrain.prototypes`` param (the one place K is read back)."""
    return finite_or_none(run.params.get("pretrain.prototypes"))


def plot_swav_loss(runs: StudyRuns, path: Path) -> Path | None:
    """SwAV loss per epoch for every pretraining run, with a dashed ln K line per K (the collapse level)."""
    from matplotlib.ticker import MaxNLocator

    pre = runs.stage("pretrain")
    curves = [(r, runs.history(r.run_id, SWAV_LOSS)) for r in pre]
    curves = [(r, h) for r, h in curves if h]
    if not curves:
        return None
    fig = _figure(9, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    for run, hist in curves:
        state = " (pruned)" if run.pruned else (" (failed)" if not run.usable else "")
        ax.plot([s for s, _ in hist], [v for _, v in hist], marker="o", markersize=3, linewidth=1.6,
                alpha=0.55 if state else 1.0, label=run.name + state)
    for k in sorted({k for r, _ in curves if (k := _prototypes(r))}):
        ax.axhline(math.log(k), linestyle="--", color="0.35", linewidth=1.0)
        ax.annotate(f"ln K = {math.log(k):.3f} (K = {k:g})", xy=(1.0, math.log(k)), xycoords=("axes fraction", "data"),
                    xytext=(-4, 3), textcoords="offset points", ha="right", va="bottom", fontsize=8, color="0.25")
    ax.set_title(f"{runs.study}: SwAV loss per epoch (dashed: ln K, the loss of a collapsed run)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(SWAV_LOSS)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _is_baseline(label: str) -> bool:
    """A row of the no-pretraining baseline: Table 1's ``scratch_<arch>`` or the backbone axis' ``scratch``."""
    return label == UPSTREAM_SCRATCH or label.startswith(f"{UPSTREAM_SCRATCH}_")


def plot_ap50_curves(runs: StudyRuns, path: Path) -> Path | None:
    """AP50 per evaluation epoch of the pretrained fine-tuning runs, one panel per norm / head / lr scheme that varies.

    Each panel groups the runs by its field with the other varying fields held at their most common
    value (named in the panel's title); the no-pretraining baseline is never mixed into a group but
    drawn on its own, dashed, in every panel.
    """
    from matplotlib.ticker import MaxNLocator

    ft = [r for r in runs.stage("finetune") if r.usable]
    pre = [r for r in ft if r.tags.get(TAG_UPSTREAM) != UPSTREAM_SCRATCH]
    base = [r for r in ft if r.tags.get(TAG_UPSTREAM) == UPSTREAM_SCRATCH]
    panels = [name for name in CURVE_PANELS if len({r.params.get(f"finetune.{name}") for r in pre}) > 1]
    histories = {r.run_id: runs.history(r.run_id, DET_AP50) for r in ft}
    if not panels or not any(histories.values()):
        return None
    modes = {name: _most_common((r.params.get(f"finetune.{name}", "?") for r in pre), f"finetune.{name}", None)[0]
             for name in panels}
    fig = _figure(5.2 * len(panels), 4.8)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]

    def mean_curve(group: Sequence[TrialRun]) -> tuple[list[int], list[float]]:
        per_step: dict[int, list[float]] = {}
        for r in group:
            for s, v in histories[r.run_id]:
                if math.isfinite(v):
                    per_step.setdefault(s, []).append(v)
        steps = sorted(per_step)
        return steps, [statistics.fmean(per_step[s]) for s in steps]

    for p, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        held = {o: modes[o] for o in panels if o != name}
        subset = [r for r in pre if all(r.params.get(f"finetune.{o}") == v for o, v in held.items())]
        groups: dict[str, list[TrialRun]] = {}
        for r in subset:
            groups.setdefault(r.params.get(f"finetune.{name}", "?"), []).append(r)
        for g, value in enumerate(sorted(groups, key=_value_key)):
            colour = colours[g % len(colours)]
            for r in groups[value]:
                hist = [(s, v) for s, v in histories[r.run_id] if math.isfinite(v)]
                if hist:
                    ax.plot([s for s, _ in hist], [v for _, v in hist], color=colour, alpha=0.25, linewidth=0.9)
            steps, means = mean_curve(groups[value])
            if steps:
                ax.plot(steps, means, color=colour, linewidth=2.2, marker="o", markersize=3,
                        label=f"{value} (mean of {len(groups[value])})")
        steps, means = mean_curve(base)
        if steps:
            ax.plot(steps, means, color="0.2", linestyle="--", linewidth=1.8, marker="s", markersize=3,
                    label=f"baseline: no pretraining (mean of {len(base)})")
        held_text = ", ".join(f"{o}={v}" for o, v in held.items())
        ax.set_title(f"by {name}" + (f"\n{textwrap.fill(f'(held: {held_text})', 55)}" if held_text else ""), fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{METRIC_LABELS[DET_AP50]} ({DET_AP50})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    wrap = max(50, int(11 * 5.2 * len(panels)))  # characters per title line at this figure width
    fig.suptitle(textwrap.fill(f"{runs.study}: fine-tuning {METRIC_LABELS[DET_AP50]} per evaluation epoch (thin: runs, "
                               "thick: mean over pretrained backbones and seeds, dashed: baseline)", wrap), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_bars(table: Table, path: Path, column: int = 0) -> Path | None:
    """Bar chart of one statistical column of a table: mean with ± std error bars, n above each bar.

    Drawn only when at least two rows have a value (one bar compares nothing); the no-pretraining
    baseline is grey and hatched, and what the other axes were held at goes in the title.
    """
    rows = [r for r in table.rows if isinstance(r.cells[column], Stat) and r.cells[column].n]
    if len(rows) < 2:
        return None
    means = [r.cells[column].mean for r in rows]
    stds = [r.cells[column].std if math.isfinite(r.cells[column].std) else 0.0 for r in rows]
    fig = _figure(max(5.0, 1.1 * len(rows) + 2.5), 4.8)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(rows)))
    baseline = [_is_baseline(r.label) for r in rows]
    bars = ax.bar(xs, means, yerr=stds, capsize=5, alpha=0.85, ecolor="0.2",
                  color=["0.6" if b else "tab:blue" for b in baseline], hatch=None)
    for bar, is_base in zip(bars, baseline):
        if is_base:
            bar.set_hatch("//")
    for bar, row, mean, std in zip(bars, rows, means, stds):
        ax.annotate(f"{mean:.3f}\nn={row.cells[column].n}", xy=(bar.get_x() + bar.get_width() / 2, mean + std),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    labels = [r.label + (" (baseline)" if b else "") + (f"\n({r.note})" if r.note else "") for r, b in zip(rows, baseline)]
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=20 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center", fontsize=8)
    ax.set_xlabel(table.row_header)
    ax.set_ylabel(table.columns[column])
    ax.set_ylim(0, max(m + s for m, s in zip(means, stds)) * 1.25 or 1.0)
    held = next((n.split(": ", 1)[1] for n in table.notes if n.startswith("other axes held at: ")), "")
    wrap = max(45, int(11 * fig.get_figwidth()))  # characters per title line at this figure width
    ax.set_title(textwrap.fill(f"{table.title.split(' — ')[0]}: {table.columns[column]} (mean ± std over seeds)", wrap)
                 + (f"\n{textwrap.fill('held: ' + held, wrap)}" if held else ""), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_plots(runs: StudyRuns, out_dir: str | Path) -> list[Path]:
    """Write the PNGs into ``out_dir``: ``swav_loss.png``, ``ap50_curves.png`` and ``bars_<table>.png`` per table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_swav_loss(runs, out / "swav_loss.png"), plot_ap50_curves(runs, out / "ap50_curves.png")]
    for table in build_tables(runs):
        if table.has_n:
            written.append(plot_bars(table, out / f"bars_{_safe_name(table.key.replace('axis:', ''))}.png"))
    return [p for p in written if p is not None]
