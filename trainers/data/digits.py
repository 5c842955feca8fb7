"""The `digits` sample set: real handwritten digits pasted on crops of real photographs.

The shapes set is easy to detect from colour alone; this one is closer to the regime the SwAV
detection results are reported in — real image statistics, ten classes, and many more unlabeled
scenes than labeled ones — so pretraining has something to learn that fine-tuning on a few
labeled scenes cannot. Sources ship with scikit-learn (no download): ``load_digits`` (1,797 8x8
digits by 43 writers, UCI) and ``load_sample_images`` (two 427x640 photographs).

The 1,797 digits are split once per seed into disjoint train, val and unlabeled pools, so val
scenes show only digits unseen in training and pretraining. Each annotation records its source
digit as ``digit_index`` (an index into ``load_digits()``), which COCO readers ignore.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from PIL import Image

from trainers.data.samples import AREA_RANGES, IMAGE_SIZE, MAX_OBJECTS, _Object, _place, annotation

DIGITS_VERSION = 1  # bump when this generator's output changes, so old digits folders are regenerated
DIGITS_SIZES: dict[str, dict[str, int]] = {
    "small": {"train": 8, "val": 4, "unlabeled": 128},  # fast tests
    # The paper's ratio is 514k unlabeled to 30k labeled (~17:1); 1,000 : 60 keeps it at a size
    # that generates in seconds.
    "medium": {"train": 40, "val": 20, "unlabeled": 1000},
}
DIGIT_CATEGORIES = tuple({"id": d + 1, "name": str(d)} for d in range(10))  # digit d -> COCO id d + 1
POOL_FRACTIONS = {"train": 0.4, "val": 0.2}  # of the 1,797 digits; the rest (0.4) is the unlabeled pool
MIN_ASPECT = 0.45  # width / height floor: a bare "1" is stretched to this so its box is not a sliver
INK_LEVEL = 4  # of 16: fainter scan pixels are not ink (they would make the box loose)
PNG_EVERY = 8  # as the shapes set: every 8th unlabeled image is a PNG
UNLABELED_PER_FOLDER = 32
_SPLIT_STREAM = {"train": 1, "val": 2, "unlabeled": 3}  # rng stream per split, as the shapes set


@functools.lru_cache(maxsize=1)
def _sources() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """(digit images 1797x8x8 in 0..16, their labels, the two photographs as HxWx3 uint8)."""
    from sklearn.datasets import load_digits, load_sample_images  # imported late: only this set needs it

    digits = load_digits()
    photos = tuple(np.asarray(p, dtype=np.uint8) for p in load_sample_images().images)
    return digits.images.astype(np.float32), digits.target.astype(np.int64), photos


def digit_pools(seed: int) -> dict[str, np.ndarray]:
    """Disjoint indices into ``load_digits()`` for the train, val and unlabeled splits (sorted)."""
    _, labels, _ = _sources()
    order = np.random.default_rng([seed, 10]).permutation(len(labels))
    n_train = int(len(labels) * POOL_FRACTIONS["train"])
    n_val = int(len(labels) * POOL_FRACTIONS["val"])
    return {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "unlabeled": np.sort(order[n_train + n_val :]),
    }


def _object_size(rng: np.random.Generator, area_range: str, aspect: float) -> tuple[int, int]:
    """Box (w, h) with w / h = aspect and an area inside the range's targets (clear of the boundaries)."""
    lo, hi = AREA_RANGES[area_range]
    area = rng.uniform(lo, hi)
    w = max(2, round(math.sqrt(area * aspect)))
    h = min(IMAGE_SIZE, max(2, round(math.sqrt(area / aspect))))
    return w, h


def _ink(image: np.ndarray) -> np.ndarray:
    """The digit cropped to its ink (rows and columns with a pixel >= INK_LEVEL), in 0..1."""
    ink = image >= INK_LEVEL
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] / 16.0


def _alpha(ink: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear upscaling of the 8x8 ink to (h, w), then a smooth step from 0.25 to 0.6, so the
    faint pen-pressure pixels of the scan do not paint a haze over the whole box and the strokes
    get edges instead of an 8x8 blur."""
    up = np.asarray(Image.fromarray(ink.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    t = np.clip((up - 0.25) / 0.35, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _plan(rng: np.random.Generator, pool: np.ndarray, forced: list[tuple[int, str]]) -> list[tuple[_Object, int]]:
    """Objects for one scene (the forced (digit, range) pairs plus random extras), placed without
    overlap; each with the index of the source digit it shows."""
    images, labels, _ = _sources()
    count = max(len(forced), int(rng.integers(2, MAX_OBJECTS + 1)))  # several objects per scene
    wanted = list(forced)
    has_large = any(r == "large" for _, r in forced)
    for _ in range(count - len(forced)):
        area_range = str(rng.choice(["small", "medium", "large"], p=[0.4, 0.4, 0.2]))
        if area_range == "large" and has_large:
            area_range = "medium"  # two large objects rarely fit next to each other
        has_large |= area_range == "large"
        wanted.append((int(rng.integers(10)), area_range))
    planned: list[tuple[_Object, int]] = []
    for digit, area_range in wanted:
        candidates = pool[labels[pool] == digit]
        source = int(candidates[int(rng.integers(len(candidates)))])
        ink = _ink(images[source])
        aspect = max(MIN_ASPECT, ink.shape[1] / ink.shape[0])
        obj = _Object(digit + 1, area_range)
        obj.w, obj.h = _object_size(rng, area_range, aspect)
        planned.append((obj, source))
    n_forced = len(forced)
    required = sorted(planned[:n_forced], key=lambda p: -p[0].w * p[0].h)
    for _attempt in range(50):  # a big object in the middle can block the next: retry the layout
        placed: list[tuple[_Object, int]] = []
        for item in required:
            if not _place(rng, item[0], [o for o, _ in placed]):
                break
            placed.append(item)
        else:
            break
    else:
        raise RuntimeError(f"digits generator could not fit the required objects {forced} in one image")
    for item in sorted(planned[n_forced:], key=lambda p: -p[0].w * p[0].h):
        if _place(rng, item[0], [o for o, _ in placed]):  # extras that do not fit are left out
            placed.append(item)
    return placed


def _background(rng: np.random.Generator) -> np.ndarray:
    """A random square crop of one photograph (side 192..427 px), resized to the scene and maybe mirrored."""
    _, _, photos = _sources()
    photo = photos[int(rng.integers(len(photos)))]
    side = int(rng.integers(192, min(photo.shape[:2]) + 1))
    y = int(rng.integers(photo.shape[0] - side + 1))
    x = int(rng.integers(photo.shape[1] - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    pixels = np.asarray(crop, dtype=np.float32)
    return pixels[:, ::-1] if rng.random() < 0.5 else pixels


def _render(rng: np.random.Generator, placed: list[tuple[_Object, int]]) -> np.ndarray:
    """Blend each digit's upscaled ink into the photo crop, in a colour that contrasts with what is under it."""
    images, _, _ = _sources()
    canvas = _background(rng).copy()
    for obj, source in placed:
        alpha = _alpha(_ink(images[source]), obj.w, obj.h)[..., None]
        region = canvas[obj.y : obj.y + obj.h, obj.x : obj.x + obj.w]
        # Dark ink on bright ground, bright ink on dark ground; the hue is random, so colour alone
        # does not say where a digit is.
        bright = region.mean() < 128
        colour = rng.uniform(175, 255, size=3) if bright else rng.uniform(0, 80, size=3)
        opacity = rng.uniform(0.8, 1.0)  # blended, not stamped: some of the photo shows through
        canvas[obj.y : obj.y + obj.h, obj.x : obj.x + obj.w] = region * (1 - opacity * alpha) + colour * opacity * alpha
    noise = rng.normal(0.0, 4.0, size=canvas.shape)  # sensor-like noise over everything
    return np.clip(np.rint(canvas + noise), 0, 255).astype(np.uint8)


def _forced(n_images: int) -> list[list[tuple[int, str]]]:
    """Every digit at least once per split, with ranges cycling large, medium, small, so each split
    holds all ten categories and all three COCO area ranges; spread over the split's images."""
    per_image: list[list[tuple[int, str]]] = [[] for _ in range(n_images)]
    for digit in range(10):
        per_image[digit % n_images].append((digit, ("large", "medium", "small")[digit % 3]))
    return per_image


def scene(seed: int, split: str, index: int, pool: np.ndarray, forced: list[tuple[int, str]]) -> tuple[
        np.ndarray, list[tuple[_Object, int]]]:
    """One scene's pixels and its placed objects (with source digit indices); deterministic per arguments."""
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], index])
    placed = _plan(rng, pool, forced)
    return _render(rng, placed), placed


def labeled_split(seed: int, split: str, count: int, pool: np.ndarray) -> tuple[list[np.ndarray], dict[str, Any]]:
    """A labeled split's scenes and its COCO instances dict (file names 000001.jpg, ...)."""
    pixels, images, annotations = [], [], []
    for index, forced in enumerate(_forced(count)):
        scene_pixels, placed = scene(seed, split, index, pool, forced)
        pixels.append(scene_pixels)
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        for obj, source in placed:
            area = float(obj.w * obj.h)  # the box: the digit's ink fills its box, edge to edge
            # digit_index: the index into sklearn's load_digits(); splits use disjoint pools
            annotations.append(annotation(obj, len(annotations) + 1, image_id, area, "digits", digit_index=source))
    coco = {
        "info": {"description": f"ablate digits sample data set ({split})", "version": str(DIGITS_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c, supercategory="digit") for c in DIGIT_CATEGORIES],
    }
    return pixels, coco
