"""Helpers of the data tests: COCO's area ranges, a folder's file hashes and a JSON reader."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

AREA_RANGES = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, float("inf"))}


def tree_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def area_range(area: float) -> str:
    return next(name for name, (lo, hi) in AREA_RANGES.items() if lo <= area < hi)


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
