"""``ablate pull``: a registered model version as a verified folder, ready to load, with its model card.

``pull`` downloads a version's files into a folder that ``trainers.detection.load_detector``
(or, for a backbone, ``DetectionConfig(backbone=DEST)`` and ``trainers.swav.load_backbone``)
reads directly, checks the weights' sha256 against the one recorded at registration, and
writes a ``MODEL_CARD.md``. It downloads into a temporary folder beside ``dest`` and moves it
into place only when everything checked out, so a failed pull leaves nothing behind. It
replaces an existing folder only with ``overwrite`` and only when that folder holds an earlier
pull and nothing else; the current, home and root folders, and any folder containing the working
directory or the local tracking store, are never replaced.

Errors the user can act on raise :class:`~experiments.results.registry.RegistryError` (one line).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from experiments.store.redaction import redact
from experiments.results.registry import (
    BACKBONE,
    CHAMPION,
    CONFIG_JSON,
    CONFIG_YAML,
    DEFAULT_METRIC,
    DETECTOR,
    DOWNSTREAM_PREFIX,
    KINDS,
    TAG_DOWNSTREAM_RUN,
    ModelKind,
    RegistryError,
    fmt_score,
    model_versions,
    open_registry,
)
from experiments.store.checks import is_missing, one_line, store_errors
from experiments.store.tracking import UPSTREAM_SCRATCH, artifact_root_for, uri_to_read
from trainers.vocabulary import (
    DET_PREFIX,
    SWAV_PREFIX,
    TAG_GIT,
    TAG_HASH,
    TAG_KIND,
    TAG_NAME,
    TAG_RUN,
    TAG_SEED,
    TAG_STUDY,
    TAG_UPSTREAM,
    TAG_WEIGHTS_SHA,
)

MODEL_CARD = "MODEL_CARD.md"
SPEC_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>\d+))?$")


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION`` -> (name, alias, version); a bare name means ``@champion``."""
    match = SPEC_RE.match(spec.strip())
    if not match:
        raise RegistryError(f"model spec {spec!r} is invalid: use NAME, NAME@ALIAS or NAME/VERSION, "
                            "e.g. norm_type-detector@champion or norm_type-detector/3")
    name, alias, version = match.group("name"), match.group("alias"), match.group("version")
    if alias is None and version is None:
        alias = CHAMPION
    return name, alias, version


def safe_relpath(path: str) -> PurePosixPath:
    """An artifact path checked to stay inside its folder: no ``..``, not absolute, no drive or backslash.

    Raises:
        RegistryError: the path could escape the destination folder.
    """
    bad = (not path or "\x00" in path or "\\" in path or path.startswith("/") or re.match(r"^[A-Za-z]:", path)
           or any(part in ("..", "") for part in path.split("/")))
    if bad:
        raise RegistryError(f"refusing artifact path {path!r}: it could write outside the destination folder "
                            "(absolute, '..' or a drive); the model's artifacts look tampered with")
    return PurePosixPath(path)


def _resolve_version(client: Any, name: str, alias: str | None, version: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if not is_missing(exc):
            raise
        known = sorted(m.name for m in client.search_registered_models(max_results=1000))
        raise RegistryError(f"no registered model {name!r}; registered: {', '.join(known) or 'none'} "
                            "(`ablate models` lists them)") from exc
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if not (is_missing(exc) or exc.error_code == "INVALID_PARAMETER_VALUE"):
            raise
        if alias is not None:
            have = ", ".join(f"{a} -> v{v}" for a, v in sorted((model.aliases or {}).items())) or "none"
            raise RegistryError(f"{name} has no alias {alias!r}; aliases: {have}") from exc
        have = ", ".join(str(v.version) for v in model_versions(client, name)) or "none"
        raise RegistryError(f"{name} has no version {version}; versions: {have}") from exc


def _list_files(repo: Any, path: str | None = None) -> list[PurePosixPath]:
    """Every file below ``path`` in an artifact repository; each listed path is checked with :func:`safe_relpath`."""
    out: list[PurePosixPath] = []
    for info in repo.list_artifacts(path):
        rel = safe_relpath(info.path)
        if info.is_dir:
            out.extend(_list_files(repo, str(rel)))
        else:
            out.append(rel)
    return out


def _local_root(uri: str) -> Path | None:
    """The folder behind a local artifact URI (``file://`` or a plain path); None for remote stores."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    if uri.startswith("file:") or "://" not in uri:
        return Path(local_file_uri_to_path(uri))
    return None


def _inside(path: Path, root: Path) -> bool:
    return path.resolve() == root.resolve() or root.resolve() in path.resolve().parents


def _download_version(client: Any, tracking_uri: str, name: str, version: Any, staging: Path) -> str:
    """Download the version's ``artifacts/<kind>/`` files into ``staging`` (flat); returns the kind."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    uri = client.get_model_version_download_uri(name, version.version)
    repo = get_artifact_repository(uri, tracking_uri=tracking_uri, registry_uri=tracking_uri)
    files = _list_files(repo)
    kind = version.tags.get(TAG_KIND)
    if kind not in KINDS:
        kinds = [k for k in KINDS if any(f.parts[:2] == ("artifacts", k) for f in files)]
        if len(kinds) != 1:
            raise RegistryError(f"{name} v{version.version} is not an ablate detector or backbone (no artifacts/detector/ "
                                "or artifacts/backbone/ folder)")
        kind = kinds[0]
    wanted = [f for f in files if f.parts[:2] == ("artifacts", kind) and len(f.parts) > 2]
    root = _local_root(uri)
    (staging / "_raw").mkdir()
    for rel in wanted:
        if root is not None:
            source = root / rel
            if source.is_symlink() and not _inside(source, root):
                raise RegistryError(f"refusing artifact {rel}: it is a symlink pointing outside the model's artifacts "
                                    f"({os.readlink(source)})")
        local = Path(repo.download_artifacts(str(rel), dst_path=str(staging / "_raw")))
        if not _inside(local, staging) or local.is_symlink():
            raise RegistryError(f"refusing artifact {rel}: it was written outside the destination or as a symlink")
        target = staging.joinpath(*rel.parts[2:])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(local), str(target))
    shutil.rmtree(staging / "_raw", ignore_errors=True)
    for path in staging.rglob("*"):
        if path.is_symlink() and not _inside(path, staging):
            raise RegistryError(f"refusing {path.name}: a symlink pointing outside the destination")
    spec = KINDS[kind]
    for needed in (spec.weights, spec.config):
        if not (staging / needed).is_file():
            raise RegistryError(f"{name} v{version.version} lacks artifacts/{kind}/{needed}; re-register it "
                                f"(`ablate register STUDY`)")
    return kind


def _verify(staging: Path, spec: ModelKind, name: str, version: Any) -> None:
    """The weights' sha256 equals the one recorded at registration, and the JSON is a valid export."""
    from trainers.checkpoints import CheckpointError, read_backbone_config, sha256_file
    from trainers.detection import read_detector_config

    digest = sha256_file(staging / spec.weights)
    expected = version.tags.get(TAG_WEIGHTS_SHA)
    if not expected:
        raise RegistryError(f"{name} v{version.version} has no {TAG_WEIGHTS_SHA} tag: it was not registered by ablate, "
                            "so its weights cannot be verified")
    if digest != expected:
        raise RegistryError(f"{name} v{version.version}: {spec.weights} has sha256 {digest[:12]}..., registration "
                            f"recorded {expected[:12]}... (corrupted or replaced in the artifact store); nothing written")
    try:
        record = read_detector_config(staging) if spec.kind == DETECTOR else read_backbone_config(staging)
    except CheckpointError as exc:
        raise RegistryError(one_line(f"{name} v{version.version}: {exc}")) from exc
    if record.get("sha256") and record["sha256"] != digest:
        raise RegistryError(f"{name} v{version.version}: {spec.config} records a different sha256 than its weights")


def model_card(name: str, version: Any, aliases: Sequence[str], kind: str, dest: Path, tracking_uri: str) -> str:
    """The MODEL_CARD.md text: metrics, lineage and how to load the pulled folder."""
    tags = version.tags
    prefix = DOWNSTREAM_PREFIX if kind == BACKBONE else ""
    metric_keys = sorted(k for k in tags if k.startswith((DET_PREFIX, SWAV_PREFIX, DOWNSTREAM_PREFIX + DET_PREFIX)))
    lines = [f"# {name} v{version.version}" + (f" ({', '.join(aliases)})" if aliases else ""), ""]
    lines.append(f"{kind.capitalize()} registered from study `{tags.get(TAG_STUDY, '?')}` "
                 f"({redact(tracking_uri)}); trial `{tags.get(TAG_NAME, '?')}`.")
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {fmt_score(tags[k])} |" for k in metric_keys] or ["| - | - |"]
    if kind == BACKBONE:
        lines += ["", f"`{DOWNSTREAM_PREFIX}*`: the best detector fine-tuned on this backbone "
                  f"(run `{tags.get(TAG_DOWNSTREAM_RUN, '?')}`); {prefix}{DEFAULT_METRIC} ranks backbones."]
    upstream = tags.get(TAG_UPSTREAM, "")
    lines += ["", "## Lineage", "",
              f"- {'fine-tuning' if kind == DETECTOR else 'pretraining'} run: `{version.run_id or tags.get(TAG_RUN, '?')}`",
              f"- config hash: `{tags.get(TAG_HASH, '?')}` (resolved config: `{CONFIG_JSON}`, `{CONFIG_YAML}`)",
              f"- git sha: `{tags.get(TAG_GIT, '?')}`",
              f"- weights: `{KINDS[kind].weights}`, sha256 `{tags.get(TAG_WEIGHTS_SHA, '?')}` (verified on pull)"]
    if kind == DETECTOR:
        lines.append("- upstream backbone: " + ("none (scratch baseline)" if upstream in ("", UPSTREAM_SCRATCH)
                                                else f"pretraining run `{upstream}`"))
    if tags.get(TAG_SEED):
        lines.append(f"- seed: {tags[TAG_SEED]}")
    lines += ["", "## How to load", "", "```python"]
    if kind == DETECTOR:
        lines += ["from trainers.detection import load_detector", "", f'model = load_detector("{dest}")  # eval mode, CPU',
                  "# images: list of float 3xHxW tensors in [0, 1]; returns boxes (xyxy), labels (1..C), scores",
                  "# detector.json maps labels to COCO category ids (label_to_cat_id) and names (class_names)"]
    else:
        lines += ["from trainers.swav import load_backbone", "", f'trunk = load_backbone("{dest}")  # ResNet, fc = Identity',
                  "# or fine-tune a detector on it:", f"#   ablate finetune CONFIG.yaml --set backbone={dest}"]
    lines += ["```", "", "Served or loaded through MLflow (input: a DataFrame column `image` of base64 PNG/JPEG text):",
              "", "```python", "import mlflow, pandas as pd", "from experiments.results.registry import encode_image", "",
              f'model = mlflow.pyfunc.load_model("models:/{name}/{version.version}")',
              'model.predict(pd.DataFrame({"image": [encode_image("photo.jpg")]}))', "```", "",
              "Written by `ablate pull`: `ablate pull --overwrite` replaces this folder only while it holds "
              "nothing but the pulled files.", ""]
    return "\n".join(lines)


# Folders a pull replaces: exactly the files it writes, nothing else.
PULL_FILES = frozenset({MODEL_CARD, CONFIG_JSON, CONFIG_YAML, *(k.weights for k in KINDS.values()),
                        *(k.config for k in KINDS.values())})
CARD_TITLE_RE = re.compile(r"^# [A-Za-z0-9][A-Za-z0-9_.\-]* v\d+\b")  # model_card's first line
CARD_MARK = "(verified on pull)"  # in model_card's lineage section, in every card a pull has written
LISTED_ENTRIES = 5  # how many of a refused folder's entries an error names


def _entry_label(path: Path) -> str:
    return path.name + ("/" if path.is_dir() and not path.is_symlink() else "")


def _describe_entries(labels: Sequence[str]) -> str:
    """``a.txt, mlruns/, src/ and 9 more (12 entries)``: a few names and the count."""
    shown = ", ".join(labels[:LISTED_ENTRIES])
    more = f" and {len(labels) - LISTED_ENTRIES} more" if len(labels) > LISTED_ENTRIES else ""
    return f"{shown}{more} ({len(labels)} entr{'y' if len(labels) == 1 else 'ies'})"


def _not_an_earlier_pull(folder: Path) -> str | None:
    """What keeps the non-empty ``folder`` from counting as an earlier pull; None when it is one.

    An earlier pull holds nothing but plain files named like those :func:`pull` writes, among
    them a ``MODEL_CARD.md`` that :func:`model_card` wrote (its title line and its "verified on
    pull" note). A folder, a symlink or any other name is foreign.
    """
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    foreign = [_entry_label(p) for p in entries if p.name not in PULL_FILES or p.is_symlink() or not p.is_file()]
    if foreign:
        return f"it holds {_describe_entries(foreign)} that `ablate pull` does not write"
    card = folder / MODEL_CARD
    if not card.is_file():
        return f"it holds {_describe_entries([p.name for p in entries])} but no {MODEL_CARD} of an earlier pull"
    with card.open("r", encoding="utf-8", errors="replace") as fh:
        text = fh.read(64 * 1024)  # a card is a few KiB; a huge file is not ours anyway
    if not CARD_TITLE_RE.match(text) or CARD_MARK not in text:
        return f"its {MODEL_CARD} was not written by `ablate pull`"
    return None


def _store_folders(tracking_uri: str) -> list[tuple[Path, str]]:
    """The local folders of the tracking store, each with what it is: the sqlite file's folder and
    its artifact root, or a file store; none for a server."""
    out: list[tuple[Path, str]] = []
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])
        out.append((db.parent, f"the MLflow store {db}"))
        root = artifact_root_for(tracking_uri)
        local = _local_root(root) if root else None
        if local is not None:
            out.append((local, f"the artifact root {local} (every checkpoint and registered model)"))
    elif tracking_uri.startswith("file:") or ("://" not in tracking_uri and tracking_uri.strip()):
        local = _local_root(tracking_uri)
        if local is not None:
            out.append((local, f"the MLflow file store {local}"))
    return out


def _protected_reason(dest: Path, tracking_uri: str) -> str | None:
    """Why ``dest`` must never be replaced by a pull (None when it may): the current folder, the
    home folder, the filesystem root, an ancestor of the working directory or of the local store."""
    real = Path(os.path.realpath(dest))
    if real == Path(real.anchor):
        return "is the filesystem root"
    try:
        cwd = Path(os.path.realpath(Path.cwd()))
    except OSError:  # the working directory was deleted: nothing to protect there
        cwd = None
    if cwd is not None and real == cwd:
        return "is the current folder"
    if real == Path(os.path.realpath(Path.home())):
        return "is your home folder"
    if cwd is not None and real in cwd.parents:
        return f"contains the working directory {cwd}"
    for folder, what in _store_folders(tracking_uri):
        store = Path(os.path.realpath(folder))
        if real == store or real in store.parents:
            return f"contains {what}"
    return None


def _check_dest(dest: Path, overwrite: bool, tracking_uri: str) -> None:
    """Refuse a destination a pull must not write or replace; see :func:`pull` for the rules.

    Raises:
        RegistryError: naming the folder, what is in the way and the fix; nothing is deleted.
    """
    fix = "pull into a folder of its own, e.g. --dest pulled_model"
    if dest.is_symlink():
        raise RegistryError(f"destination {dest} is a symlink (to {os.readlink(dest)}); pass the folder itself, "
                            f"or {fix}")
    if dest.exists() and not dest.is_dir():
        raise RegistryError(f"destination {dest} exists and is not a folder; choose another --dest")
    reason = _protected_reason(dest, tracking_uri)
    if reason is not None:
        raise RegistryError(f"destination {dest} {reason}: a pull never replaces it (nothing was deleted); {fix}")
    if not dest.is_dir():
        return
    try:
        empty = not any(dest.iterdir())
        problem = None if empty else _not_an_earlier_pull(dest)
    except OSError as exc:
        raise RegistryError(f"destination {dest} cannot be read ({exc.strerror or exc}); choose another --dest") from exc
    if empty:
        return
    if problem is not None:
        why = ("--overwrite only replaces an earlier pull (MODEL_CARD.md and the model files, nothing else), so "
               "nothing was deleted" if overwrite else "nothing was written")
        raise RegistryError(f"destination {dest} is not empty and not an earlier pull: {problem}; {why}; {fix} "
                            "(a new or empty folder)")
    if not overwrite:
        raise RegistryError(f"destination {dest} is not empty: it holds an earlier pull; pass --overwrite to "
                            "replace it, or choose another --dest")


def _prepare_dest(dest: Path, overwrite: bool, tracking_uri: str = "") -> Path:
    """Check that ``dest`` can be written (:func:`_check_dest`); returns a fresh staging folder beside it."""
    _check_dest(dest, overwrite, tracking_uri)
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=parent))
    except OSError as exc:
        raise RegistryError(f"destination {dest} is not writable ({exc.strerror or exc}); choose another --dest") from exc


def _remove_earlier_pull(folder: Path) -> None:
    """Delete the files an earlier pull wrote, then the folder; anything else found there is left alone."""
    for entry in folder.iterdir():
        if entry.name in PULL_FILES and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(OSError):
                entry.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()  # fails, and keeps the folder, if something else appeared in it


def _move_into_place(staging: Path, dest: Path) -> None:
    """Replace ``dest`` by ``staging`` with renames in the same folder (no half-written state visible).

    A non-empty ``dest`` is checked again right before (it may have changed during the download):
    only an earlier pull is replaced, and only its own files are deleted.
    """
    old = None
    if dest.exists():
        if dest.is_symlink() or not dest.is_dir():
            raise RegistryError(f"destination {dest} changed during the pull (now a file or symlink); nothing replaced")
        problem = _not_an_earlier_pull(dest) if any(dest.iterdir()) else None
        if problem is not None:
            raise RegistryError(f"destination {dest} changed during the pull: {problem}; nothing replaced, "
                                "choose another --dest")
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.time_ns()}")
        dest.rename(old)
    try:
        staging.rename(dest)
    except OSError:
        if old is not None:
            old.rename(dest)
        raise
    if old is not None:
        _remove_earlier_pull(old)


def pull(spec: str, dest: str | Path, tracking_uri: str, overwrite: bool = False) -> Path:
    """Download a registered model version into ``dest``, verified and ready to load.

    ``dest`` receives the weights (``detector.safetensors`` or ``backbone.safetensors``), their
    JSON (``detector.json`` / ``backbone.json``), the resolved config (``config.json``,
    ``config.yaml``) — the same files as ``mlflow artifacts download -u models:/SPEC`` puts
    under ``artifacts/<kind>/`` — and ``MODEL_CARD.md``.

    ``dest`` must be new or empty, or — with ``overwrite`` — hold an earlier pull and nothing
    else (plain files with the names above, the model card among them). Never replaced, even
    empty or with ``overwrite``: the current folder, the home folder, the filesystem root, an
    ancestor of the working directory, and the local tracking store's folders (the sqlite
    file's folder, its artifact root, a file store) and their ancestors.

    Args:
        spec: ``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION`` (a bare name means ``@champion``).
        dest: target folder (see above).
        tracking_uri: the MLflow store.
        overwrite: replace an earlier pull in ``dest``.

    Returns:
        ``dest`` as a Path.

    Raises:
        RegistryError: bad spec, unknown model / alias / version, unreachable store, destination
            protected, not writable, or holding anything but an earlier pull (that one too
            without ``overwrite``), checksum mismatch, unsafe artifact paths.
    """
    name, alias, version_id = parse_spec(spec)
    dest = Path(dest).expanduser().absolute()
    client = open_registry(tracking_uri)
    with store_errors(tracking_uri, f"looking up {spec}", RegistryError):
        version = _resolve_version(client, name, alias, version_id)
    staging = _prepare_dest(dest, overwrite, tracking_uri)
    try:
        with store_errors(tracking_uri, f"downloading {name} v{version.version}", RegistryError):
            kind = _download_version(client, tracking_uri, name, version, staging)
        _verify(staging, KINDS[kind], name, version)
        aliases = sorted(version.aliases or [])
        (staging / MODEL_CARD).write_text(model_card(name, version, aliases, kind, dest, tracking_uri))
        _move_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def register(subparsers: Any, name: str, summary: str, common: Any) -> None:
    """``ablate pull NAME@ALIAS --dest DIR`` (experiments/cli.py wires it)."""
    p = subparsers.add_parser(name, help=summary, parents=[common])
    p.add_argument("name", help="NAME@ALIAS or NAME/VERSION, e.g. smoke-detector@champion")
    p.add_argument("--dest", type=Path, required=True,
                   help="folder for the model: new or empty (with --overwrite: an earlier pull)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --dest only if it holds an earlier pull and nothing else (MODEL_CARD.md plus "
                        "config.json, config.yaml and the detector/backbone .safetensors and .json files); a folder "
                        "with any other content, the current, home or root folder, and a folder containing the "
                        "working directory or the local store are never replaced")
    p.set_defaults(run=lambda args: print(f"pulled {args.name} into "
                                          f"{pull(args.name, args.dest, uri_to_read(args.tracking_uri), args.overwrite)}")
                   or 0)


def register_detect(subparsers: Any, name: str, summary: str, common: Any) -> None:
    """``ablate detect MODEL IMAGE...`` (experiments/cli.py wires it): no store, the pulled folder only."""
    p = subparsers.add_parser(name, help=summary)
    p.add_argument("model", type=Path, help="folder from `ablate pull STUDY-detector@champion --dest DIR`")
    p.add_argument("images", type=Path, nargs="+", help="PNG/JPEG files")
    p.add_argument("--threshold", type=float, default=0.5, help="lowest score to show (default 0.5)")
    p.add_argument("--out", type=Path, default=None, help="PNG to write with the images and their boxes")
    p.set_defaults(run=run_detect)


def run_detect(args: Any) -> int:
    """Load a pulled detector (safetensors only), print each image's boxes, draw them with ``--out``."""
    from trainers.data import decode_rgb
    from trainers.detection import detect, draw_found, load_detector, read_detector_config

    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold {args.threshold}: expected a score between 0 and 1")
    model = load_detector(args.model)
    record = read_detector_config(args.model)
    images, found = [], []
    for path in args.images:
        try:
            image = decode_rgb(path)
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"{path}: not a readable PNG/JPEG image ({exc})") from None
        boxes = detect(model, image, record["class_names"], record["label_to_cat_id"], score_threshold=args.threshold)
        images.append(image)
        found.append(boxes)
        print(f"{path}: {len(boxes)} object{'s' if len(boxes) != 1 else ''} scoring >= {args.threshold:g}")
        for b in boxes:
            print(f"  {b['category_name']:10} {b['score']:.2f}  "
                  f"[{b['x_min']:.0f}, {b['y_min']:.0f}, {b['x_max']:.0f}, {b['y_max']:.0f}]")
    if args.out is not None:
        draw_found(images, found, [p.name for p in args.images], record["class_names"], args.out,
                   score_threshold=args.threshold, title=f"detector {args.model}")
        print(f"drawn: {args.out}")
    return 0
