"""Reading and validating a search-space file into a :class:`~experiments.spaces.schema.StudySpec`.

:func:`load_space` and its section parsers, and the one rule for study names. Imports
:mod:`experiments.spaces.schema` and :mod:`experiments.spaces.naming` of this package.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import yaml

from experiments.spaces.naming import sample_folder, sample_layout
from experiments.spaces.schema import (ADAPTIVE_KEYS, DATA_KEYS, DATA_PATH_KEYS, DISTRIBUTIONS, KNN_PATH_FIELDS, RESOURCE_KEYS,
                                       SEARCH_KEYS, SECTION_KEYS, STUDY_NAME_MAX, STUDY_NAME_RE, STUDY_NAME_RULE,
                                       TOP_KEYS, AdaptiveSeeds, Cell, DataSpec, Distribution, Resources, SpaceError, StageSpec,
                                       StudySpec, _check_keys, _err, _mapping)
from trainers.stages import TRAINERS
from trainers.common.configs import DuplicateKeyError, load_yaml
from trainers.common.validation import closest, unknown_key_message
from trainers.vocabulary import DET_AP50

# ---------------------------------------------------------------------------
# The trainers' config fields
# ---------------------------------------------------------------------------


def _trainer_fields(stage: str) -> dict[str, dataclasses.Field]:
    cls = _config_class(stage)
    return {f.name: f for f in dataclasses.fields(cls)}


def _config_class(stage: str) -> type:
    return TRAINERS[stage].config_class()


def _default(stage: str, name: str) -> Any:
    f = _trainer_fields(stage)[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def suggest_field(stage: str, name: str) -> str | None:
    """Closest trainer field name (used by CLI --set errors)."""
    return closest(name, _trainer_fields(stage))


def is_distribution_value(v: Any) -> bool:
    """True for a `{loguniform: [...]}`-style mapping (used by the report to skip sampled axes)."""
    return isinstance(v, Mapping) and len(v) == 1 and next(iter(v)) in DISTRIBUTIONS


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def _parse_distribution(path: Path, where: str, value: Mapping[str, Any]) -> Distribution:
    if len(value) != 1:
        raise _err(path, where, f"a distribution has exactly one of {', '.join(DISTRIBUTIONS)}", "e.g. {loguniform: [1e-4, 1e-1]}")
    kind, args = next(iter(value.items()))
    if kind not in DISTRIBUTIONS:
        raise SpaceError(f"{path}: {unknown_key_message(str(kind), DISTRIBUTIONS, where)}")
    if not isinstance(args, list) or not args:
        raise _err(path, f"{where}.{kind}", "expected a non-empty list", "e.g. [low, high]")
    if kind != "choice":
        if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args):
            raise _err(path, f"{where}.{kind}", f"expected [low, high] numbers, got {args!r}")
        lo, hi = args
        if lo >= hi:
            raise _err(path, f"{where}.{kind}", f"low {lo} must be below high {hi}")
        if kind == "loguniform" and lo <= 0:
            raise _err(path, f"{where}.{kind}", f"loguniform needs low > 0, got {lo}")
    return Distribution(kind, tuple(args))


def _parse_section(path: Path, stage: str, raw: Any, search_kind: str) -> StageSpec:
    sec = _mapping(path, stage, raw)
    _check_keys(path, stage, sec, SECTION_KEYS)
    fields = _trainer_fields(stage)
    allowed = set(fields) | ({"backbone"} if stage == "finetune" else set())
    fixed = _mapping(path, f"{stage}.fixed", sec.get("fixed"))
    for key in fixed:
        if key not in allowed:
            raise SpaceError(f"{path}: {unknown_key_message(key, allowed, f'{stage}.fixed')}")
    reserved = {"data", *KNN_PATH_FIELDS} if stage == "pretrain" else set(DATA_PATH_KEYS) - {"unlabeled"}
    for key in reserved & set(fixed):
        raise _err(path, f"{stage}.fixed.{key}", "data paths come from the top-level `data` section", "remove it here")

    grid = _mapping(path, f"{stage}.grid", sec.get("grid"))
    axes: dict[str, list[Any]] = {}
    dists: dict[str, Distribution] = {}
    for key, values in grid.items():
        where = f"{stage}.grid.{key}"
        if key not in allowed:
            raise SpaceError(f"{path}: {unknown_key_message(key, allowed, f'{stage}.grid')}")
        if isinstance(values, Mapping):
            if search_kind != "tpe":
                raise _err(path, where, "distributions need `search: {kind: tpe}`", "use a list of values for a grid")
            if stage != "finetune":
                raise _err(path, where, "pretraining axes must be explicit lists (each backbone is trained once and reused)",
                           "list the values, e.g. [1000, 3000]")
            dists[key] = _parse_distribution(path, where, values)
            continue
        if not isinstance(values, list) or not values:
            raise _err(path, where, f"a grid axis is a non-empty list of values, got {values!r}", f"e.g. {key}: [a, b]")
        axes[key] = values

    cases_raw = sec.get("cases") or [{}]
    if not isinstance(cases_raw, list):
        raise _err(path, f"{stage}.cases", "expected a list of mappings", "e.g. cases: [{arch: resnet18, epochs: 70}]")
    cells: list[Cell] = []
    names = list(axes)
    for i, case in enumerate(cases_raw):
        case = _mapping(path, f"{stage}.cases[{i}]", case)
        for key in case:
            if key not in allowed:
                raise SpaceError(f"{path}: {unknown_key_message(key, allowed, f'{stage}.cases[{i}]')}")
            if key in axes:
                raise _err(path, f"{stage}.cases[{i}].{key}", f"'{key}' is also a grid axis", "set it in one place only")
        for combo in itertools.product(*(range(len(axes[n])) for n in names)):
            values = dict(fixed)
            origin = {k: f"{stage}.fixed.{k}" for k in fixed}
            for k, v in case.items():
                values[k], origin[k] = v, f"{stage}.cases[{i}].{k}"
            for n, j in zip(names, combo):
                values[n], origin[n] = axes[n][j], f"{stage}.grid.{n}[{j}]"
            cells.append(Cell(values, origin))

    seeds = _parse_stage_seeds(path, stage, sec.get("seeds"), cells)
    res = _mapping(path, f"{stage}.resources", sec.get("resources"))
    _check_keys(path, f"{stage}.resources", res, RESOURCE_KEYS)
    for key in ("cpu", "gpu"):
        v = res.get(key, 1.0 if key == "cpu" else 0.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise _err(path, f"{stage}.resources.{key}", f"expected a number >= 0 (fractions allowed), got {v!r}")
    key = "processes"
    if "workers" in res:  # the old name, easy to confuse with the DataLoader's `workers` in `fixed`
        if "processes" in res:
            raise _err(path, f"{stage}.resources", "both processes and workers are given",
                       "keep processes (the DDP world size) and delete workers")
        key = "workers"
        warnings.warn(f"{path}: {stage}.resources.workers is now {stage}.resources.processes (the DDP processes "
                      f"of a trial; `workers` in {stage}.fixed is the DataLoader's); the old key is read for now",
                      FutureWarning, stacklevel=2)
    processes = res.get(key, 1)
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise _err(path, f"{stage}.resources.{key}", f"expected an integer >= 1, got {processes!r}")
    if res.get("cpu", 1.0) == 0 and res.get("gpu", 0.0) == 0:
        raise _err(path, f"{stage}.resources", "a trial needs some cpu or gpu", "set cpu: 1")
    resources = Resources(float(res.get("cpu", 1.0)), float(res.get("gpu", 0.0)), processes)
    return StageSpec(fixed, tuple(cells), resources, dists, seeds)


def _parse_stage_seeds(path: Path, stage: str, raw: Any, cells: list[Cell]) -> tuple[int, ...]:
    """``pretrain: {seeds: [0, 1]}``: each backbone pretrained once per seed (its variance then enters the verdicts
    of the pretraining axes). Fine-tuning seeds are the top-level ``seeds:``."""
    if raw is None:
        return ()
    where = f"{stage}.seeds"
    if stage != "pretrain":
        raise _err(path, where, "fine-tuning seeds are the top-level `seeds:`", "move them there, e.g. seeds: [0, 1, 2]")
    if not isinstance(raw, list) or not raw or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
        raise _err(path, where, f"expected a list of integers, got {raw!r}", "e.g. seeds: [0, 1]")
    if len(set(raw)) != len(raw):
        raise _err(path, where, f"duplicate seeds in {raw}", "list each seed once")
    for cell in cells:
        if "seed" in cell.values:
            raise _err(path, cell.origin["seed"], "the pretraining seed is also set by pretrain.seeds",
                       "set it in one place only")
    return tuple(raw)


def _parse_data(path: Path, raw: Any) -> DataSpec:
    data = _mapping(path, "data", raw)
    if not data:
        raise _err(path, "data", "missing", "add `data: {sample: {size: small}}` or `data: {root: DIR}`")
    _check_keys(path, "data", data, DATA_KEYS)
    if "sample" in data:
        if len(data) > 1:
            raise _err(path, "data", "`sample` generates the data set; it cannot be combined with paths", "keep one of them")
        sample = _mapping(path, "data.sample", data["sample"])
        _check_keys(path, "data.sample", sample, ("size", "seed", "kind", "renderings"))
        size, seed, kind = sample.get("size", "small"), sample.get("seed", 0), sample.get("kind", "shapes")
        if kind not in ("shapes", "digits"):
            raise _err(path, "data.sample.kind", f"{kind!r} is not a sample kind", "use shapes or digits")
        from trainers.data import sample_sizes

        sizes = sample_sizes(kind)
        if size not in sizes:
            raise _err(path, "data.sample.size", f"{size!r} is not a sample size of the {kind} set",
                       f"use {', '.join(sizes[:-1])} or {sizes[-1]}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise _err(path, "data.sample.seed", f"expected an integer, got {seed!r}")
        renderings = sample.get("renderings", 1)
        if not isinstance(renderings, int) or isinstance(renderings, bool) or not 1 <= renderings <= 8:
            raise _err(path, "data.sample.renderings", f"expected an integer from 1 to 8, got {renderings!r}",
                       "use 2 to give each SwAV view of an unlabeled image its own background, or leave it out")
        if renderings > 1 and kind != "digits":
            raise _err(path, "data.sample.renderings", "renderings are a property of the digits set",
                       "use kind: digits, or leave renderings out")
        # Placeholders: the launcher generates the set under its storage folder and swaps the real paths in.
        root = Path(f"<{sample_folder(size, seed, kind, renderings)}>")
        return DataSpec(*sample_layout(root), sample=(size, seed, kind, renderings))
    if "root" in data:
        extra = set(data) - {"root"}
        if extra:
            raise _err(path, f"data.{sorted(extra)[0]}", "`root` already implies every path", "use either root or the five paths")
        return DataSpec(*sample_layout(Path(str(data["root"])).expanduser()))
    missing = [k for k in DATA_PATH_KEYS if k not in data]
    if missing:
        raise _err(path, f"data.{missing[0]}", "missing", f"give all of {', '.join(DATA_PATH_KEYS)}, or `root: DIR`")
    return DataSpec(*(Path(str(data[k])).expanduser() for k in DATA_PATH_KEYS))


# ---------------------------------------------------------------------------
# Study names
# ---------------------------------------------------------------------------


def study_name_problem(name: str) -> str | None:
    """What makes ``name`` unusable as a study name (see :data:`STUDY_NAME_RULE`), or None when it is fine."""
    if not name:
        return "the name is empty"
    if len(name) > STUDY_NAME_MAX:
        return f"{name[:40]!r}... is {len(name)} characters long"
    if STUDY_NAME_RE.fullmatch(name):
        return None
    bad = sorted({c for c in name if not re.fullmatch(r"[A-Za-z0-9_.\-]", c)})
    if bad:
        return f"{name!r} may not contain {', '.join(map(repr, bad))}"
    return f"{name!r} may not start with {name[0]!r}"


def suggest_study_name(name: str) -> str:
    """A valid study name close to ``name``: other characters become '_', the length is capped."""
    fixed = re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).lstrip("_.-")[:STUDY_NAME_MAX].rstrip("_.-")
    return fixed or "my_study"


def validate_study_name(name: str, error: type[ValueError] = SpaceError) -> str:
    """Return ``name`` if it can name a study (the MLflow experiment and its registered models), else raise.

    The one rule for study names: ``load_space`` applies it to a space's ``name`` and to ``--name``;
    the registry applies it before deriving ``<name>-detector``, so whatever launches can be pulled.

    Raises:
        error: naming the value, the allowed characters and length, and a suggested name.
    """
    problem = study_name_problem(name) if isinstance(name, str) else f"{name!r} is not a string"
    if problem:
        raise error(f"study name {problem}: {STUDY_NAME_RULE} — e.g. {suggest_study_name(str(name))}")
    return name


# ---------------------------------------------------------------------------
# The whole file
# ---------------------------------------------------------------------------


def _description(path: Path, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _err(path, "description", f"expected text, got {value!r}", "e.g. description: what this study compares")
    return value.strip()


def _parse_adaptive(path: Path, raw: dict[str, Any]) -> AdaptiveSeeds:
    """``seeds: {initial: 2, max: 8, budget_trials: 40}``."""
    _check_keys(path, "seeds", raw, ADAPTIVE_KEYS)
    values = {}
    for key in ADAPTIVE_KEYS:
        value = raw.get(key)
        if value is None and key != "budget_trials":
            raise _err(path, f"seeds.{key}", "missing", "e.g. seeds: {initial: 2, max: 8}")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise _err(path, f"seeds.{key}", f"expected an integer >= 1, got {value!r}", "e.g. seeds: {initial: 2, max: 8}")
        values[key] = value
    if values["max"] < values["initial"]:
        raise _err(path, "seeds.max", f"{values['max']} is below seeds.initial ({values['initial']})",
                   f"set max to at least {values['initial']}")
    return AdaptiveSeeds(values["initial"], values["max"], values["budget_trials"])


def load_space(path: str | Path, name: str | None = None) -> StudySpec:
    """Read and validate a search-space file. Raises :class:`SpaceError` naming file, key path and fix."""
    from experiments.pruning.settings import validate_pruning_settings

    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: search space file not found")
    text = path.read_text()
    try:
        raw = load_yaml(text, path)  # a key written twice is an error, not "the later one wins"
    except DuplicateKeyError as exc:
        raise SpaceError(f"{path}: {exc.describe()}") from exc
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from exc
    raw = _mapping(path, "<top level>", raw)
    _check_keys(path, "<top level>", raw, TOP_KEYS)

    study = name or raw.get("name")
    where = "name (given by --name)" if name else "name"
    if not isinstance(study, str) or not study.strip():
        raise _err(path, where, "missing or not a string", "add `name: my_study` (the MLflow experiment name)")
    problem = study_name_problem(study)
    if problem:
        raise _err(path, where, f"{problem}: {STUDY_NAME_RULE}", f"e.g. {suggest_study_name(study)}")

    seeds = raw.get("seeds", [0])
    adaptive = None
    if isinstance(seeds, dict):
        adaptive = _parse_adaptive(path, seeds)
        seeds = list(adaptive.initial_seeds)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise _err(path, "seeds", f"expected a list of integers, got {seeds!r}", "e.g. seeds: [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise _err(path, "seeds", f"duplicate seeds in {seeds}", "list each seed once")

    search = _mapping(path, "search", raw.get("search") or {"kind": "grid"})
    _check_keys(path, "search", search, SEARCH_KEYS)
    kind = search.get("kind", "grid")
    if kind not in ("grid", "tpe"):
        raise _err(path, "search.kind", f"{kind!r} is not a search kind", "use grid or tpe")
    search = {"kind": kind, "num_samples": search.get("num_samples", 1), "metric": search.get("metric", DET_AP50),
              "mode": search.get("mode", "max")}
    if not isinstance(search["num_samples"], int) or search["num_samples"] < 1:
        raise _err(path, "search.num_samples", f"expected an integer >= 1, got {search['num_samples']!r}")
    if search["mode"] not in ("max", "min"):
        raise _err(path, "search.mode", f"{search['mode']!r}", "use max or min")

    max_conc = raw.get("max_concurrent", 1)
    if not isinstance(max_conc, int) or isinstance(max_conc, bool) or max_conc < 1:
        raise _err(path, "max_concurrent", f"expected an integer >= 1, got {max_conc!r}")

    storage_path = raw.get("storage_path")
    if storage_path is not None and (not isinstance(storage_path, str) or not storage_path.strip()):
        raise _err(path, "storage_path", f"expected a folder or an s3:// URI, got {storage_path!r}",
                   "e.g. storage_path: s3://team-bucket/ray (keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    if isinstance(storage_path, str) and "://" in storage_path:
        scheme = storage_path.split("://", 1)[0].lower()
        netloc = storage_path.split("://", 1)[1].split("/", 1)[0]
        if scheme != "s3" or not netloc:
            raise _err(path, "storage_path", f"{storage_path!r} is not a storage this service supports",
                       "use a folder, or s3://BUCKET/PREFIX")
        if "@" in netloc:
            raise _err(path, "storage_path", "credentials do not belong in the space file",
                       "write s3://BUCKET/PREFIX and set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")

    try:
        pruning = validate_pruning_settings(_mapping(path, "pruning", raw.get("pruning")))
    except ValueError as exc:
        raise SpaceError(f"{path}: {exc}" if str(exc).startswith("pruning") else f"{path}: pruning: {exc}") from exc
    if kind == "tpe" and "pruning" in raw and "finetune" not in (raw.get("pruning") or {}):
        pruning = validate_pruning_settings({**(raw.get("pruning") or {}), "finetune": {"kind": "median"}})
    elif kind == "tpe" and "pruning" not in raw:
        pruning = validate_pruning_settings({"finetune": {"kind": "median"}})

    spec = StudySpec(
        name=study, path=path, data=_parse_data(path, raw.get("data")), seeds=tuple(seeds), search=search,
        pretrain=_parse_section(path, "pretrain", raw.get("pretrain"), kind),
        finetune=_parse_section(path, "finetune", raw.get("finetune"), kind),
        max_concurrent=max_conc, pruning=pruning, text=text, description=_description(path, raw.get("description")),
        storage_path=storage_path, adaptive=adaptive,
    )
    if adaptive is not None and kind == "tpe":
        raise _err(path, "seeds", "adaptive seeds need a grid search (tpe samples its own trials)",
                   "use a list, e.g. seeds: [0, 1, 2], or search: {kind: grid}")
    if kind == "tpe" and not spec.finetune.distributions and len(spec.finetune.cells) < 2:
        raise _err(path, "finetune.grid", "tpe search has nothing to sample",
                   "add distributions, e.g. base_lr: {loguniform: [1, 100]}, or use search: {kind: grid}")
    return spec
