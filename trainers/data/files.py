"""Finding image files: no torch, so that planning a launch or reading a study never loads it."""

from __future__ import annotations

import os
import re
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


# ``u000123.view1.jpg`` is rendering 1 of ``u000123.jpg``: the same object, drawn again (another background, another
# light). A SwAV run takes view v of an image from its rendering v mod n (trainers/swav/augment.py).
RENDERING = re.compile(r"^(?P<stem>.+)\.view(?P<number>[1-9][0-9]*)$")


def group_renderings(paths: list[Path]) -> tuple[list[Path], dict[Path, list[Path]]]:
    """Split image files into the images and their further renderings (``<stem>.view<k>.<ext>`` beside
    ``<stem>.<ext>``, ordered by k). A ``.view<k>`` file without its image is an image of its own."""
    bases = {p.with_suffix("").as_posix(): p for p in paths if not RENDERING.match(p.stem)}
    extra: dict[Path, list[tuple[int, Path]]] = {}
    images = []
    for path in paths:
        match = RENDERING.match(path.stem)
        base = bases.get((path.parent / match["stem"]).as_posix()) if match else None
        if base is None:
            images.append(path)
        else:
            extra.setdefault(base, []).append((int(match["number"]), path))
    return images, {base: [p for _, p in sorted(found)] for base, found in extra.items()}
