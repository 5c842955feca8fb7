"""Tests for trainers.data.scenes: placing a sample scene's objects apart and inside the image, and their COCO
annotation."""

from __future__ import annotations

import numpy as np
import pytest

from trainers.data.scenes import IMAGE_SIZE, SceneObject, annotation, place


def _apart(a: SceneObject, b: SceneObject, gap: int) -> bool:
    return (a.x + a.w + gap <= b.x or b.x + b.w + gap <= a.x
            or a.y + a.h + gap <= b.y or b.y + b.h + gap <= a.y)


def test_placed_objects_stay_inside_and_two_pixels_apart() -> None:
    def scene(seed: int) -> list[tuple[int, int]]:
        rng = np.random.default_rng(seed)
        placed: list[SceneObject] = []
        for side in (90, 60, 40, 40, 30, 20, 12, 12):
            obj = SceneObject(1, "medium", w=side, h=side // 2 + 5)
            if place(rng, obj, placed):
                placed.append(obj)
        assert len(placed) >= 6
        for i, obj in enumerate(placed):
            assert 0 <= obj.x and obj.x + obj.w <= IMAGE_SIZE and 0 <= obj.y and obj.y + obj.h <= IMAGE_SIZE
            assert all(_apart(obj, other, 2) for other in placed[i + 1:])
        return [(o.x, o.y) for o in placed]

    assert scene(3) == scene(3)  # the rng alone decides
    assert scene(3) != scene(4)


def test_nothing_free_is_false_and_leaves_the_object_where_it_was() -> None:
    rng = np.random.default_rng(0)
    big = SceneObject(3, "large", w=IMAGE_SIZE - 10, h=IMAGE_SIZE - 10)
    assert place(rng, big, [])
    other = SceneObject(3, "small", x=7, y=9, w=20, h=20)
    assert not place(rng, other, [big])
    assert (other.x, other.y) == (7, 9)
    assert not place(rng, SceneObject(1, "large", w=IMAGE_SIZE + 1, h=10), [])  # wider than the image


def test_annotation_is_a_coco_entry_in_its_planned_area_range() -> None:
    obj = SceneObject(7, "medium", x=10, y=20, w=40, h=35)
    entry = annotation(obj, 5, 2, 1200.5, "sample", segmentation=[[0.0, 1.0]])
    assert entry == {"id": 5, "image_id": 2, "category_id": 7, "bbox": [10, 20, 40, 35], "area": 1200.5,
                     "iscrowd": 0, "segmentation": [[0.0, 1.0]]}
    assert list(entry)[-1] == "segmentation"  # extra keys follow the standard ones
    for area in (1024.0, -1.0):  # 32^2 is medium, not small
        with pytest.raises(RuntimeError, match=f"^digits object area {area} is outside its small range$"):
            annotation(SceneObject(1, "small"), 1, 1, area, "digits")
    with pytest.raises(RuntimeError, match="outside its medium range"):
        annotation(obj, 1, 1, 96.0**2, "sample")
