"""A cheap, stable fingerprint of a data set on disk (part of every run's config hash)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from trainers.data.errors import DatasetError


def data_fingerprint(*paths: str | Path) -> str:
    """A cheap, stable 16-hex digest of data set files and folders.

    Folders contribute their files' relative names and sizes (fast even for many images);
    JSON files (COCO annotations) contribute their full content, since an edit to a label
    rarely changes the file size. Modification times and absolute locations are left out,
    so byte-identical copies anywhere fingerprint the same.

    Raises:
        DatasetError: when a path does not exist.
    """
    digest = hashlib.sha256()

    def add_file(file: Path, name: str) -> None:
        digest.update(f"F\0{name}\0{file.stat().st_size}\0".encode())
        if file.suffix.lower() == ".json":
            digest.update(hashlib.sha256(file.read_bytes()).digest())

    for position, raw in enumerate(paths):
        path = Path(raw)
        digest.update(f"P\0{position}\0".encode())
        if path.is_dir():
            files = []
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                files.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
            # a folder's labels.json (the supervised method's classes) is not its images: a supervised run adds its
            # labels file to its identity itself (experiments/spaces/expand.py), a SwAV run never reads it
            files = [f for f in files if f != path / "labels.json"]
            for file in sorted(files, key=lambda p: p.relative_to(path).as_posix()):
                add_file(file, file.relative_to(path).as_posix())
        elif path.is_file():
            add_file(path, path.name)
        else:
            raise DatasetError(f"cannot fingerprint {path}: no such file or folder")
    return digest.hexdigest()[:16]
