"""Expanding a validated study into unique pretraining runs and norm-paired fine-tuning trials.

:func:`expand` (with the pairing rule :data:`~experiments.spaces.schema.PAIRING`) and
:func:`resolve_data`, the real data paths a launch trains on. The highest module of the package
below its ``__init__``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any, Mapping

from experiments.spaces.naming import (_unique_names, finetune_hash, finetune_name, identity, pretrain_name,
                                       sample_folder)
from experiments.spaces.parse import _config_class, _default
from experiments.spaces.schema import (BACKBONE_SCRATCH, BACKBONE_SWAV, DATA_PATH_KEYS, KNN_PATH_FIELDS, PAIRING, Cell,
                                       FinetuneTrial, Plan, PretrainTrial, SpaceError, StudySpec)
from trainers.common.configs import config_from_dict, config_hash, config_to_dict
from trainers.common.validation import ConfigError, closest

def _build(path: Path, stage: str, cell: Cell, extra: Mapping[str, Any], pretrained: bool = False) -> dict[str, Any]:
    """Resolve a cell through the trainer's config class; map its ValueError to the key path.

    ``pretrained``: a fine-tuning cell for a pretrained backbone, validated before that backbone
    exists (as ``backbone: scratch``, the real folder is set at launch); the rule that only a
    scratch trunk has, no ``frozen_bn`` on random weights, is then not applied.
    """
    cls = _config_class(stage)
    values = {k: v for k, v in cell.values.items() if k != "backbone"}
    values.update(extra)
    frozen = pretrained and values.get("norm", _default(stage, "norm")) == "frozen_bn"
    if frozen:
        values["norm"] = "bn"  # the same pairing (a BN-pretrained backbone); put back below
    try:
        resolved = config_to_dict(config_from_dict(cls, values, where=stage))
        return {**resolved, "norm": "frozen_bn"} if frozen else resolved
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        if isinstance(exc, ConfigError):
            field_name: str | None = exc.top_field
        else:  # a missing field (TypeError) or an unknown key: the message leads with what it is about
            lead = re.match(r"[A-Za-z_][A-Za-z0-9_]*", msg)
            field_name = lead.group(0) if lead else None
        if field_name not in cell.origin:  # a default's error that names the field the cell set (norm x backbone)
            field_name = next((k for k in sorted(cell.origin, key=len, reverse=True)
                               if f"'{k}'" in msg or f" {k}=" in msg), None)
        where = cell.origin.get(field_name, stage) if field_name else stage
        raise SpaceError(f"{path}: {where}: {msg}") from exc


def resolve_data(spec: StudySpec, storage: Path) -> tuple[dict[str, str], str]:
    """Real data paths and the data fingerprint; a `sample` data set is generated (cached) under ``storage``.

    What ``ablate launch`` trains on, and what ``bench device`` trains on without the launch.
    """
    from trainers.data import data_fingerprint, generate_sample

    if spec.data.sample is not None:
        size, seed, kind, renderings = spec.data.sample
        sample = generate_sample(storage / "data" / sample_folder(size, seed, kind, renderings), seed=seed, size=size,
                                 kind=kind, renderings=renderings)
        paths = {k: str(getattr(sample, k)) for k in DATA_PATH_KEYS}
        monitor = sample.monitor()
        if monitor is not None:  # the digits set's own objects for the kNN monitor (keys: SwAVConfig's fields)
            paths.update(zip(("knn_train_images", "knn_train_annotations", "knn_val_images", "knn_val_annotations"),
                             map(str, monitor)))
    else:
        paths = {k: str(getattr(spec.data, k)) for k in DATA_PATH_KEYS}
        for key in DATA_PATH_KEYS:
            if not Path(paths[key]).exists():
                raise SpaceError(f"{spec.path}: data.{key}: {paths[key]} does not exist — fix the path, or use "
                                 "`data: {sample: {size: small}}` to run on the generated sample set")
    return paths, data_fingerprint(*(paths[k] for k in DATA_PATH_KEYS))


def _labels_fingerprint(path: Path, config: Mapping[str, Any], cell: Cell) -> str:
    """A supervised pretraining run's labels file, fingerprinted (a part of its identity, as the images); "" for
    SwAV. The file must exist when the launch plans."""
    if config.get("method") != "supervised":
        return ""
    from trainers.data.labels import FORMAT_HINT, LABELS_FILE

    file = Path(config.get("labels") or Path(config["data"]) / LABELS_FILE)
    if not file.is_file():
        where = cell.origin.get("labels", cell.origin.get("method", "pretrain"))
        raise SpaceError(f"{path}: {where}: method: supervised needs each image's class, and {file} does not exist — "
                         f"set pretrain.labels to {FORMAT_HINT} (the digits sample writes unlabeled/labels.json)")
    return hashlib.sha256(file.read_bytes()).hexdigest()[:16]


def expand(spec: StudySpec, data_fingerprint: str, data_paths: Mapping[str, str]) -> Plan:
    """Expand a study into unique pretraining runs and paired fine-tuning trials.

    Args:
        spec: the validated study.
        data_fingerprint: digest of the data set (part of every config hash).
        data_paths: the real data paths (a generated sample set's folder, or the spec's paths).
    """
    from trainers.detection.config import scratch_warnings

    paths = dict(data_paths)
    path = spec.path
    # The kNN monitor scores the sample set's own monitor objects when resolve_data found them (paths["knn_*"]),
    # else the labeled set.
    pre_extra = {"data": paths["unlabeled"],
                 **{field: paths.get(field, paths[key]) for field, key in KNN_PATH_FIELDS.items()}}
    ft_extra = {k: paths[k] for k in DATA_PATH_KEYS if k != "unlabeled"}

    pretrain: dict[str, PretrainTrial] = {}
    requested = 0
    for cell in spec.pretrain.cells:
        requested += 1
        base = _build(path, "pretrain", cell, pre_extra)
        data_id = data_fingerprint + _labels_fingerprint(path, base, cell)
        group = config_hash(identity({**base, "seed": None}, spec.pretrain.resources), data_id, "pretrain")
        # pretrain.seeds: one backbone per seed, grouped (the seeds of one backbone setting: one cell downstream)
        for seed in spec.pretrain.seeds or (None,):
            cfg = base if seed is None else {**base, "seed": seed}
            h = config_hash(identity(cfg, spec.pretrain.resources), data_id, "pretrain")
            name = pretrain_name(cfg) + ("" if seed is None else f"_s{seed}")
            pretrain.setdefault(h, PretrainTrial(cfg, h, name, group if seed is not None else ""))
    backbones = _unique_names(list(pretrain.values()))
    # a seed group's name: its backbones' (unique) name without the seed (res50_ep100_p3000_s1_q30 -> ..._p3000_q30)
    backbones = [dataclasses.replace(b, group_name=re.sub(rf"_s{b.config['seed']}(?=_|$)", "", b.name, count=1))
                 if b.group else b for b in backbones]

    finetune: list[FinetuneTrial] = []
    reserve: list[FinetuneTrial] = []  # adaptive seeds: the seeds after the initial ones
    excluded: list[str] = []
    warnings: list[str] = []
    seen: set[str] = set()
    names = {b.name for b in backbones}
    for cell in spec.finetune.cells:
        choice = cell.values.get("backbone", BACKBONE_SWAV)
        if choice not in (BACKBONE_SWAV, BACKBONE_SCRATCH) and choice not in names:
            where = cell.origin.get("backbone", "finetune")
            hint = closest(str(choice), names)
            raise SpaceError(f"{path}: {where}: backbone={choice!r} is invalid — use '{BACKBONE_SWAV}' (every pretrained "
                             f"backbone of this study), '{BACKBONE_SCRATCH}' (no pretraining) or one backbone's name"
                             + (f" (did you mean '{hint}'?)" if hint else f" ({', '.join(sorted(names))})"))
        norm = cell.values.get("norm", _default("finetune", "norm"))
        if choice == BACKBONE_SCRATCH:
            targets: list[PretrainTrial | None] = [None]
        else:
            targets = []
            for b in backbones:
                if choice != BACKBONE_SWAV and b.name != choice:
                    continue
                if PAIRING.get(norm) == b.config.get("norm"):
                    targets.append(b)
                else:
                    excluded.append(f"finetune norm={norm} x backbone {b.name} (norm={b.config.get('norm')}): "
                                    f"{norm} needs a {PAIRING.get(norm, '?')}-pretrained backbone")
            if not targets:
                where = cell.origin.get("norm", "finetune")
                raise SpaceError(f"{path}: {where}: norm={norm} has no backbone to pair with — it needs a "
                                 f"{PAIRING.get(norm, '?')}-pretrained backbone; add one to pretrain (norm: "
                                 f"{PAIRING.get(norm, '?')}) or use backbone: scratch")
        built: dict[str, dict[str, Any]] = {}  # arch -> resolved config: backbones of one arch share it
        for target in targets:
            extra = dict(ft_extra)
            if target is None:
                extra["backbone"] = BACKBONE_SCRATCH
                extra.setdefault("arch", cell.values.get("arch", "resnet50"))
            else:
                extra["backbone"] = BACKBONE_SCRATCH  # validated as scratch; the real path is set at launch
                if "arch" in cell.values and cell.values["arch"] != target.config["arch"]:
                    excluded.append(f"finetune arch={cell.values['arch']} x backbone {target.name}: architectures differ")
                    continue
                extra["arch"] = target.config["arch"]
            if extra["arch"] not in built:
                built[extra["arch"]] = _build(path, "finetune", cell, extra, pretrained=target is not None)
                built[extra["arch"]].pop("backbone", None)
            cfg = built[extra["arch"]]
            bname = target.name if target else f"scratch_{str(cfg.get('arch')).replace('resnet', 'res')}"
            if target is None:
                warnings += [f"{path}: {cell.origin.get('backbone', 'finetune')}: {w}"
                             for w in scratch_warnings(cfg["norm"], cfg["lr_scheme"])]
            for seed in spec.adaptive.all_seeds if spec.adaptive else spec.seeds:
                cfg_s = {**cfg, "seed": seed}
                h = finetune_hash(cfg_s, data_fingerprint, target.config_hash if target else None,
                                  spec.finetune.resources)
                if h in seen:
                    continue
                seen.add(h)
                (finetune if seed in spec.seeds else reserve).append(FinetuneTrial(
                    cfg_s, target.config_hash if target else None, seed, h, finetune_name(cfg_s, bname, seed), bname,
                    (target.group or None) if target else None, target.group_name if target else ""))
    unwritten = not spec.pretrain.fixed and all(not c.values for c in spec.pretrain.cells)
    if unwritten and finetune and all(t.upstream_hash is None for t in finetune):
        # no pretrain section and every fine-tuning cell from scratch: the default backbone would feed nothing
        warnings.append(f"{path}: finetune: every cell is backbone: scratch and the space has no pretrain section, "
                        "so no pretraining run is planned")
        backbones = []
    return Plan(spec, data_fingerprint, backbones, finetune, excluded, requested, list(dict.fromkeys(warnings)),
                reserve)
