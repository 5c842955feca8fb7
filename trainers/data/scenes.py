"""What the two sample sets' labeled scenes share: the scene size, the COCO area-range targets, a placed
object, its placement and its COCO annotation.

The shapes set (trainers.data.samples) and the digits set (trainers.data.digits) both import from here;
neither imports the other for these pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

IMAGE_SIZE = 256  # >= 256 px so all three COCO area ranges (small < 32^2 < medium < 96^2 < large) fit
# Object-area targets per COCO range, kept well clear of the 32^2 and 96^2 boundaries so pixel
# rounding never moves an object into a neighbouring range.
AREA_RANGES = {"small": (120.0, 800.0), "medium": (1400.0, 7000.0), "large": (9800.0, 14000.0)}
MAX_OBJECTS = 6


@dataclass
class SceneObject:
    """One object of a labeled scene: its category, planned COCO area range and box once placed."""

    category: int  # COCO category id
    area_range: str
    x: int = 0
    y: int = 0
    w: int = 0
    h: int = 0
    inverted: bool = False  # shapes' triangles only: apex down


def place(rng: np.random.Generator, obj: SceneObject, placed: list[SceneObject]) -> bool:
    """Put ``obj`` at a uniformly random free position: no box overlap with ``placed`` (2 px gap),
    so every object is fully visible and its COCO area stays true. False when nothing is free."""
    free = np.ones((IMAGE_SIZE - obj.h + 1, IMAGE_SIZE - obj.w + 1), dtype=bool)
    for o in placed:
        # Top-left corners that would bring obj within 2 px of o.
        free[max(0, o.y - obj.h - 1) : o.y + o.h + 2, max(0, o.x - obj.w - 1) : o.x + o.w + 2] = False
    ys, xs = np.nonzero(free)
    if len(ys) == 0:
        return False
    pick = int(rng.integers(len(ys)))
    obj.x, obj.y = int(xs[pick]), int(ys[pick])
    return True


def annotation(obj: SceneObject, ann_id: int, image_id: int, area: float, what: str, **extra: Any) -> dict[str, Any]:
    """One COCO annotation of a generated object (``extra`` keys follow the standard ones).

    Raises RuntimeError when ``area`` is outside the object's planned COCO range: a generator
    invariant the tests and the demo rely on (every split covers small, medium and large).
    """
    low, high = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, math.inf)}[obj.area_range]
    if not low <= area < high:
        raise RuntimeError(f"{what} object area {area} is outside its {obj.area_range} range")
    return {"id": ann_id, "image_id": image_id, "category_id": obj.category, "bbox": [obj.x, obj.y, obj.w, obj.h],
            "area": area, "iscrowd": 0, **extra}


__all__ = ["AREA_RANGES", "IMAGE_SIZE", "MAX_OBJECTS", "SceneObject", "annotation", "place"]
