"""Trial names and config hashes, the sample-set folder names, and the dry-run plan's text.

Imports only :mod:`experiments.spaces.schema` of this package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from experiments.spaces.schema import (BACKBONE_SCRATCH, DATA_PATH_KEYS, NON_RESULT_FIELDS, DataSpec, Plan,
                                       PretrainTrial, Resources, StudySpec)
from trainers.common.configs import config_hash

# ---------------------------------------------------------------------------
# Names and hashes
# ---------------------------------------------------------------------------


# Pretraining fields only SwAV reads (the supervised method ignores them: trainers/swav/supervised.py)
SWAV_ONLY_FIELDS = frozenset({"prototypes", "feat_dim", "hidden_dim", "temperature", "epsilon", "sinkhorn_iterations",
                              "queue_length", "queue_start_epoch", "freeze_prototypes_epochs", "crops_for_assign"})


def pretrain_name(cfg: Mapping[str, Any]) -> str:
    """``res50_ep200_p3000`` (+ ``_gn`` for GroupNorm) — the row name of the paper's Table 1; a supervised backbone is
    ``res50_ep200_supervised``."""
    arch = str(cfg.get("arch", "resnet50")).replace("resnet", "res")
    method = "supervised" if cfg.get("method") == "supervised" else f"p{cfg.get('prototypes')}"
    name = f"{arch}_ep{cfg.get('epochs')}_{method}"
    return name + ("_gn" if cfg.get("norm") == "gn" else "")


def finetune_name(cfg: Mapping[str, Any], backbone: str, seed: int) -> str:
    """What the MLflow UI shows: ``res50_ep200_p3000 · frozen_bn · mlp_ln · 357 · seed0``."""
    return f"{backbone} · {cfg.get('norm')} · {cfg.get('head')} · {cfg.get('lr_scheme')} · seed{seed}"


_ABBREV = {"queue_start_epoch": "q", "queue_length": "ql", "amp": "amp", "temperature": "t", "epsilon": "eps",
           "batch_size": "bs", "base_lr": "lr", "freeze_prototypes_epochs": "fp", "amp_dtype": "", "seed": "s", "optimizer": "",
           "weight_decay": "wd", "hidden_dim": "h", "feat_dim": "d", "sinkhorn_iterations": "it"}


def _suffix(key: str, value: Any) -> str:
    if key == "crops" and isinstance(value, list):
        return "crops" + "_".join(f"{g.get('min_scale'):g}-{g.get('max_scale'):g}" for g in value if isinstance(g, dict))
    if isinstance(value, (list, dict)):
        return key + hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:4]
    if isinstance(value, bool):
        return f"{_ABBREV.get(key, key)}{str(value).lower()}"
    return f"{_ABBREV.get(key, key)}{fmt_value(value)}"


def _comparable(value: Any) -> Any:
    """A hashable stand-in for a config value that tells 1, 1.0 and true apart (as their JSON does)."""
    if value is None or isinstance(value, (str, int)) or (isinstance(value, float) and value == value):
        return (type(value).__name__, value)  # the type keeps true, 1 and 1.0 apart (bool is an int)
    return json.dumps(value, sort_keys=True, default=str)  # lists, mappings and NaN (which != itself)


def _unique_names(trials: list[PretrainTrial]) -> list[PretrainTrial]:
    """Give pretraining runs that share a Table-1 name a suffix of what differs (``res50_ep100_p3000_q30``).

    Within a group of runs that share a name, the run that agrees with the group's most common value
    on every differing field keeps the plain name (the reference row); the others name only where they
    depart from it. On a tie, the value listed first in the space wins, so names do not depend on
    Python's per-process hash seed. Linear in the number of runs (grids reach 10,000).
    """
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(trials):
        groups.setdefault(t.name, []).append(i)
    out = list(trials)
    for name, idx in groups.items():
        if len(idx) < 2:
            continue
        fields = [k for k in trials[idx[0]].config if k not in NON_RESULT_FIELDS]
        column = {k: [_comparable(trials[i].config.get(k)) for i in idx] for k in fields}
        counts = {k: Counter(column[k]) for k in fields}
        keys = sorted(k for k in fields if len(counts[k]) > 1)
        # most_common keeps first-seen order among equal counts: a tie goes to the first-listed value
        common = {k: counts[k].most_common(1)[0][0] for k in keys}
        for j, i in enumerate(idx):
            diff = [k for k in keys if column[k][j] != common[k]]
            if diff:
                t = trials[i]
                out[i] = dataclasses.replace(t, name=f"{name}_" + "_".join(_suffix(k, t.config.get(k)) for k in diff))
    seen = Counter(t.name for t in out)  # still equal (two runs depart in the same way): the hash decides
    return [dataclasses.replace(t, name=f"{t.name}_{t.config_hash[:6]}") if seen[t.name] > 1 else t for t in out]


def identity(config: Mapping[str, Any], resources: Resources | None = None) -> dict[str, Any]:
    """What makes a run's result: its config fields minus the non-result ones, plus the DDP world size.

    The world size (``resources.processes``) changes the global batch, the Sinkhorn batch and the
    queue per process, so a run trained at another world size is another run. At 1 it is left
    out, so single-process runs keep the hashes they always had.
    """
    out = {k: v for k, v in config.items() if k not in NON_RESULT_FIELDS}
    if out.get("method") == "swav":  # the method before there were two: SwAV runs keep the hashes they had
        del out["method"]
    elif out.get("method") == "supervised":  # SwAV's own fields do not change a supervised run: one run for all
        out = {k: v for k, v in out.items() if k not in SWAV_ONLY_FIELDS}
    if resources is not None and resources.processes != 1:
        out["world_size"] = resources.processes
    if out.get("head") == "res5":  # the C4 detector; earlier versions named a stage 5 on FPN RoIs so
        out["head"] = "res5-c4"
    return out


def finetune_hash(config: Mapping[str, Any], data_fingerprint: str, upstream_hash: str | None,
                  resources: Resources | None = None) -> str:
    """The identity of a fine-tuning run: its resolved config, the data, and its backbone's identity."""
    return config_hash(identity(config, resources), data_fingerprint, upstream_hash or BACKBONE_SCRATCH, "finetune")


def fmt_value(v: Any) -> str:
    """Compact display of a config value for tables."""
    if isinstance(v, float):
        return f"{v:g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, separators=(",", ":"), default=str)
    return str(v)


# ---------------------------------------------------------------------------
# Sample sets
# ---------------------------------------------------------------------------


def sample_folder(size: str, seed: int, kind: str, renderings: int = 1) -> str:
    """The folder name a generated sample set gets under storage/data (shapes keep their old names)."""
    name = f"sample-{size}-{seed}" if kind == "shapes" else f"sample-{kind}-{size}-{seed}"
    return name + (f"-r{renderings}" if renderings > 1 else "")


def sample_layout(root: Path) -> tuple[Path, ...]:
    """The folder layout of `ablate data sample` (and of `data: {root: DIR}`), in :data:`DATA_PATH_KEYS` order."""
    from trainers.data import sample_paths  # the one definition of the layout

    paths = sample_paths(root)
    return tuple(getattr(paths, key) for key in DATA_PATH_KEYS)


def _describe_data(data: DataSpec) -> str:
    if data.sample is None:
        return str(data.train_annotations.parent.parent)
    size, seed, kind, renderings = data.sample
    views = f", {renderings} renderings per unlabeled image" if renderings > 1 else ""
    return f"sample {size}/{seed}" + ("" if kind == "shapes" else f" ({kind}{views})")


# ---------------------------------------------------------------------------
# The dry-run plan
# ---------------------------------------------------------------------------


def axes_of(spec: StudySpec) -> dict[str, list[str]]:
    """The fields each stage varies (grid axes, case keys and sampled axes) — the ablated axes."""
    out: dict[str, list[str]] = {}
    for stage, sec in (("pretrain", spec.pretrain), ("finetune", spec.finetune)):
        varied = set(sec.distributions)
        for field_name in {k for c in sec.cells for k in c.values}:
            vals = {json.dumps(c.values.get(field_name), sort_keys=True, default=str) for c in sec.cells}
            if len(vals) > 1:
                varied.add(field_name)
        out[stage] = sorted(varied)
    return out


def _trials(n: int) -> str:
    return f"{n} trial{'s' if n != 1 else ''}"


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def format_plan(plan: Plan, reused: Mapping[str, str] | None = None, pruned: Sequence[str] = ()) -> str:
    """The dry-run text: counts, reuse, pairing exclusions and the trial table."""
    reused = reused or {}
    spec = plan.spec
    naive = len(plan.finetune)
    scratch = len(plan.finetune_for(None))
    budget = (f", at most {spec.adaptive.budget_trials} fine-tuning trials"
              if spec.adaptive and spec.adaptive.budget_trials else "")
    lines = [
        f"study {spec.name}  ({spec.path})",
        f"  search: {spec.search['kind']}" + (f", {spec.search['num_samples']} samples" if spec.search["kind"] == "tpe" else ""),
        f"  data: {_describe_data(spec.data)}"
        f"  (fingerprint {plan.data_fingerprint})",
        f"  pretraining: {len(plan.pretrain)} unique runs from {plan.requested_pretrain} cells"
        f" ({len(reused)} reused from earlier launches, {len(plan.pretrain) - len(reused)} to train)",
        f"  fine-tuning: {_trials(len(plan.finetune))} ({_seeds(len(spec.seeds))}; {scratch} on scratch)"
        + (f"; adaptive seeds: up to {_trials(len(plan.finetune) + len(plan.reserve))} ({spec.adaptive.max} seeds "
           f"per cell{budget}), seeds added only where a verdict is still open" if spec.adaptive else ""),
        f"  a naive grid would pretrain once per fine-tuning trial: {naive - scratch} runs",
        f"  resources per trial: pretrain {spec.pretrain.resources}, finetune {spec.finetune.resources}; "
        f"max_concurrent {spec.max_concurrent}",
    ]
    if plan.warnings:
        lines.append(f"  warnings ({len(plan.warnings)}):")
        lines += [f"    - {w}" for w in plan.warnings]
    if plan.excluded:
        lines.append(f"  excluded pairings ({len(plan.excluded)}):")
        lines += [f"    - {e}" for e in sorted(set(plan.excluded))]
    lines.append("")
    lines.append("pretraining runs:")
    lines.append(f"  {'hash':16}  {'name':24}  {'status':10}  fine-tunes  config")
    # Computed once, not per row: per row they made the printout quadratic in the grid (1,600 runs: 40 s).
    axes = axes_of(spec)["pretrain"]
    pruned_set = set(pruned)
    fine_tunes = Counter(t.upstream_hash for t in plan.finetune)
    for t in plan.pretrain:
        status = "pruned" if t.config_hash in pruned_set else ("reused" if t.config_hash in reused else "to train")
        shown = ", ".join(f"{k}={fmt_value(t.config[k])}" for k in axes if k in t.config) or "-"
        lines.append(f"  {t.config_hash}  {t.name:24}  {status:10}  {fine_tunes[t.config_hash]:10}  {shown}")
    lines.append("")
    lines.append("fine-tuning trials:")
    for t in plan.finetune:
        lines.append(f"  {t.config_hash}  {t.name}")
    return "\n".join(lines)
