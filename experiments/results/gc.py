"""``ablate gc STUDY``: delete the training states that no launch of a study can resume from.

A launch keeps, per trial, only its newest training state (model + optimizer, for an exact
resume) while the trial runs, and deletes it when the trial finishes (its exported model is in
the artifact store). What a killed launch leaves, and what launches before that rule left, stays
on the Ray storage path until this command removes it:

- every ``checkpoint_*`` folder under the study's Ray experiment folders
  (``<storage>/<study>-<stage>-<launch id>/<trial>/``), except the one an unfinished trial run
  names in its ``ablate.checkpoint`` tag (the state ``ablate launch`` resumes from);
- an experiment folder left with no such state at all (its ``tuner.pkl``, trial logs);
- the launch's cache of downloaded backbones (``<storage>/backbones``), fetched again on demand.

A storage path on object storage (``s3://BUCKET/PREFIX``, read through pyarrow as Ray Tune writes it)
is walked and cleaned the same way, in the bucket; its entries are printed as ``s3://`` URIs.

It never touches the tracking store or its artifacts, so registered models, exported models
and metrics stay as they are. While a launch of the study is running it refuses (that launch
still writes its states).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.store.objectstore import filesystem, location_of
from experiments.store.redaction import redact
from experiments.store.checks import check_store, store_errors
from experiments.store.tracking import DEFAULT_STORE_DIR, Tracker, launch_alive, uri_to_read
from trainers.vocabulary import STAGES, TAG_CHECKPOINT, TAG_DRIVER, TAG_STAGE


class GcError(ValueError):
    """gc cannot run as asked (no such study, a launch still running)."""


@dataclass
class GcPlan:
    """What :func:`collect` found: folders to delete, states kept (with the run that needs each), storage skipped."""

    study: str
    remove: list[Path | str] = field(default_factory=list)  # local folders, or s3:// URIs
    keep: dict[Path | str, str] = field(default_factory=dict)  # checkpoint folder -> run id that resumes from it
    skipped: list[str] = field(default_factory=list)  # storage paths gc cannot reach, with why

    def size(self) -> int:
        """Bytes the removal frees."""
        return sum(_du(p) for p in self.remove)


def _du(path: Path | str) -> int:
    if isinstance(path, str):  # object storage
        from pyarrow.fs import FileSelector, FileType

        storage, inside = filesystem(path)
        return sum(i.size or 0 for i in storage.get_file_info(FileSelector(inside, recursive=True, allow_not_found=True))
                   if i.type == FileType.File)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def collect(tracking_uri: str, study: str, default_storage: Path | str) -> GcPlan:
    """The folders gc would delete for ``study`` (nothing is deleted here).

    Args:
        tracking_uri: the study's tracking store.
        study: the study (MLflow experiment) name.
        default_storage: the Ray storage path of launches that recorded none.

    Raises:
        GcError: no such study, or one of its launches is still running.
    """
    check_store(tracking_uri, GcError)
    with store_errors(tracking_uri, f"reading study {study!r}", GcError):
        tracker = Tracker(tracking_uri, study, create=False)
        if tracker.experiment_id is None:
            raise GcError(f"no study {study!r} in the tracking store; `ablate report` lists what is there")
        launches = tracker.find_runs(extra_filter=f"tags.`{TAG_STAGE}` = 'launch'")
        trials = [r for r in tracker.find_runs() if r.data.tags.get(TAG_STAGE) in STAGES]
    running = [r for r in launches if launch_alive(r)]
    if running:
        r = running[0]
        raise GcError(f"launch run {r.info.run_id} of study {study!r} is still running (driver "
                      f"{r.data.tags.get(TAG_DRIVER, 'unknown')}); run `ablate gc {study}` after it has ended")
    plan = GcPlan(study)
    for r in trials:
        ckpt = r.data.tags.get(TAG_CHECKPOINT)
        if ckpt and r.info.status != "FINISHED":
            plan.keep[ckpt if "://" in ckpt else Path(ckpt)] = r.info.run_id
    roots = {r.data.params.get("storage_path") or str(default_storage) for r in launches} or {str(default_storage)}
    for root in sorted(roots):
        if "://" in root:
            _collect_remote(plan, root)
            continue
        base = Path(root)
        for stage in STAGES:
            for exp_dir in sorted(base.glob(f"{_glob_escape(study)}-{stage}-*")):
                if not exp_dir.is_dir() or not is_launch_folder(exp_dir.name, study, stage):
                    continue
                kept = [k for k in plan.keep if isinstance(k, Path) and _inside(k, exp_dir)]
                if not kept:
                    plan.remove.append(exp_dir)
                    continue
                for ckpt in sorted(exp_dir.glob("*/checkpoint_*")):
                    if ckpt.is_dir() and ckpt.resolve() not in {k.resolve() for k in kept}:
                        plan.remove.append(ckpt)
        cache = base / "backbones"
        if cache.is_dir():
            plan.remove.append(cache)
    return plan


def _collect_remote(plan: GcPlan, root: str) -> None:
    """:func:`collect` for a storage path on object storage (the same rule, through pyarrow)."""
    from pyarrow.fs import FileSelector, FileType

    try:
        storage, base = filesystem(root)
        entries = storage.get_file_info(FileSelector(base, allow_not_found=True))
    except (OSError, ValueError) as e:
        plan.skipped.append(f"{redact(root)}: {redact(str(e)).splitlines()[0] if str(e) else type(e).__name__}")
        return

    def folders(path: str) -> list[str]:
        return sorted(i.path for i in storage.get_file_info(FileSelector(path, allow_not_found=True))
                      if i.type == FileType.Directory)

    kept = {k for k in plan.keep if isinstance(k, str)}
    for stage in STAGES:
        for exp in sorted(i.path for i in entries
                          if i.type == FileType.Directory and is_launch_folder(i.base_name, plan.study, stage)):
            exp_uri = location_of(storage, exp)
            if not any(k.startswith(exp_uri + "/") for k in kept):
                plan.remove.append(exp_uri)
                continue
            for trial in folders(exp):
                plan.remove += [u for ck in folders(trial) if ck.rsplit("/", 1)[-1].startswith("checkpoint_")
                                and (u := location_of(storage, ck)) not in kept]
    cache = f"{base.rstrip('/')}/backbones"
    if storage.get_file_info(cache).type == FileType.Directory:
        plan.remove.append(location_of(storage, cache))


# A launch's folder in Ray's storage: ``<study>-<stage>-<launch id>[-wave<N>]`` (experiments/launch/ray_stage.py), the
# launch id being ``YYYYmmdd-HHMMSS-<6 hex>`` (experiments/launch/launcher.py).
_LAUNCH_FOLDER_TAIL = r"-\d{8}-\d{6}-[0-9a-f]{6}(-wave\d+)?"


def is_launch_folder(name: str, study: str, stage: str) -> bool:
    """Whether ``name`` is a folder a launch of ``study`` wrote for ``stage``: not one of study ``x-pretrain``'s
    when ``study`` is ``x`` (study names may hold ``-``)."""
    return re.fullmatch(re.escape(f"{study}-{stage}") + _LAUNCH_FOLDER_TAIL, name) is not None


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def gc(tracking_uri: str, study: str, default_storage: Path | str, dry_run: bool = False) -> str:
    """Delete (or, ``dry_run``, list) what :func:`collect` finds; returns the report printed by the CLI."""
    plan = collect(tracking_uri, study, default_storage)
    verb = "would free" if dry_run else "freed"
    lines = []
    size = plan.size()
    for path in plan.remove:
        lines.append(f"  {'would delete' if dry_run else 'deleted'} {path}")
        if not dry_run and isinstance(path, str):
            storage, inside = filesystem(path)
            storage.delete_dir(inside)
        elif not dry_run:
            shutil.rmtree(path, ignore_errors=True)
    for path, run_id in sorted(plan.keep.items(), key=lambda kv: str(kv[0])):
        lines.append(f"  kept {path} (run {run_id[:8]} resumes from it)")
    for root in plan.skipped:
        lines.append(f"  skipped {root}; delete its checkpoint_* folders with the storage's own tools")
    head = (f"gc {study}: {verb} {_human(size)} in {len(plan.remove)} folder(s); registered models and the "
            "tracking store are untouched")
    if not plan.remove:
        head = f"gc {study}: nothing to delete; registered models and the tracking store are untouched"
    return "\n".join([head, *lines])


def register(subparsers: Any, name: str, summary: str, common: Any) -> None:
    """``ablate gc STUDY [--dry-run]`` (experiments/cli.py wires it)."""
    p = subparsers.add_parser(name, help=summary, parents=[common])
    p.add_argument("study", help="study name")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted and how much it frees")
    p.add_argument("--storage-path", default=None,
                   help="Ray storage of launches that recorded none (default: $ABLATE_STORAGE_PATH or mlruns/ray)")
    p.set_defaults(run=run)


def run(args: Any) -> int:
    """``ablate gc``: the storage path given, else the variable, else the local default."""
    storage = str(args.storage_path or os.environ.get("ABLATE_STORAGE_PATH") or DEFAULT_STORE_DIR / "ray")
    print(gc(uri_to_read(args.tracking_uri), args.study, storage if "://" in storage else Path(storage).resolve(),
             dry_run=args.dry_run))
    return 0
