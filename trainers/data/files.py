"""Finding image files: no torch, so that planning a launch or reading a study never loads it."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def find_images(root: str | Path) -> list[Path]:
    """All .jpg/.jpeg/.png files under ``root`` (recursively, case-insensitive), sorted.

    Hidden files and folders (names starting with '.') are skipped: they are editor,
    OS or sync leftovers (``.DS_Store``, ``._img.jpg``), never data.
    """
    root = Path(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    # Sort on the relative POSIX form so the order does not depend on the OS or the mount point.
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
