"""The `digits` sample set: real handwritten digits on varied real and generated backgrounds.

The shapes set is easy to detect from colour alone; this one is closer to the regime the SwAV
detection results are reported in — real image statistics, ten classes, and many more unlabeled
images than labeled ones — so pretraining has something to learn that fine-tuning on a few
labeled scenes cannot. Sources ship with scikit-learn (no download): ``load_digits`` (1,797 8x8
digits by 43 writers, UCI) and ``load_sample_images`` (two 427x640 photographs).

Three parts, each drawn from its own disjoint pool of the 1,797 digits (split once per seed), so
val objects are digits unseen in training, pretraining and the monitor's bank:

- **labeled scenes** (train, val): 256 px scenes with several digits each, COCO instances; the
  detector trains and is scored on them;
- **unlabeled object-centric images** (``unlabeled/``): 64 px images, each centred on one digit
  (45-70 % of the side) with up to two neighbours cut by the border. The paper pretrains on COCO
  images, which are dense with objects; a SwAV view of a 256 px scene with a few small digits
  almost never holds a legible digit (measured: 1.7 % of view pairs shared one), so the views
  shared backgrounds, not objects. Here two views of an image share its digit in most pairs
  (``view_overlap``, measured in ``bench/fidelity.py`` and a test);
- **the monitor's objects** (``monitor/``): single-digit 64 px images as COCO sets, a bank from
  the train pool (every digit once) and queries from the val pool (every digit twice, on other
  backgrounds), so the kNN monitor and the linear probe score hundreds of objects instead of the
  val scenes' few dozen boxes.

Backgrounds are never the shared content: each is drawn afresh, either a crop of one of the two
photographs at a random scale, rotation and mirror with its colours remapped (channel order,
inversion, gamma, contrast, grey), or a generated texture (a smooth random colour field with
stripes). Each annotation records its source digit as ``digit_index`` (an index into
``load_digits()``), which COCO readers ignore.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from trainers.data.scenes import AREA_RANGES, IMAGE_SIZE, MAX_OBJECTS, SceneObject, annotation, place

DIGITS_VERSION = 3  # 3: unlabeled/labels.json. Bump when this generator's output changes, so old digits folders are regenerated
OBJECT_SIDE = 64  # unlabeled and monitor images: one digit at 45-70 % of the side
MAIN_HEIGHT = (0.45, 0.70)  # the centred digit's height, as a fraction of OBJECT_SIDE
NEIGHBOUR_HEIGHT = (0.30, 0.55)  # neighbours cut by the border (the clutter of a dense scene)
MAX_NEIGHBOURS = 2
DIGITS_SIZES: dict[str, dict[str, int]] = {
    # monitor_bank / monitor_queries: images of the monitor's sets (one digit each)
    "small": {"train": 8, "val": 4, "unlabeled": 256, "monitor_bank": 120, "monitor_queries": 120},  # fast tests
    # The paper's ratio is 514k unlabeled to 30k labeled objects (~17:1); 4,000 unlabeled objects for the
    # 40 scenes' ~170 labeled ones keeps it (~24:1) at a size that generates in seconds on 2 cores.
    "medium": {"train": 40, "val": 20, "unlabeled": 4000, "monitor_bank": 719, "monitor_queries": 718},
    # GPU runs: 16,384 unlabeled objects (a 3-minute SwAV at batch 256 sees each ~20 times), more val scenes.
    "large": {"train": 40, "val": 60, "unlabeled": 16384, "monitor_bank": 719, "monitor_queries": 718},
}
DIGIT_CATEGORIES = tuple({"id": d + 1, "name": str(d)} for d in range(10))  # digit d -> COCO id d + 1
POOL_FRACTIONS = {"train": 0.4, "val": 0.2}  # of the 1,797 digits; the rest (0.4) is the unlabeled pool
MIN_ASPECT = 0.45  # width / height floor: a bare "1" is stretched to this so its box is not a sliver
INK_LEVEL = 4  # of 16: fainter scan pixels are not ink (they would make the box loose)
PNG_EVERY = 8  # as the shapes set: every 8th unlabeled image is a PNG
UNLABELED_PER_FOLDER = 256
PARALLEL_FROM = 2048  # images; below this a pool of workers costs more than it saves
# rng stream per part, as the shapes set (3 was the scene-level unlabeled set of version 1)
_STREAM = {"train": 1, "val": 2, "unlabeled": 4, "monitor_bank": 5, "monitor_queries": 6}


@functools.lru_cache(maxsize=1)
def _sources() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """(digit images 1797x8x8 in 0..16, their labels, the two photographs as HxWx3 uint8)."""
    from sklearn.datasets import load_digits, load_sample_images  # imported late: only this set needs it

    digits = load_digits()
    photos = tuple(np.asarray(p, dtype=np.uint8) for p in load_sample_images().images)
    return digits.images.astype(np.float32), digits.target.astype(np.int64), photos


def digit_pools(seed: int) -> dict[str, np.ndarray]:
    """Disjoint indices into ``load_digits()`` for the train, val and unlabeled parts (sorted).

    The monitor's bank uses the train pool and its queries the val pool.
    """
    _, labels, _ = _sources()
    order = np.random.default_rng([seed, 10]).permutation(len(labels))
    n_train = int(len(labels) * POOL_FRACTIONS["train"])
    n_val = int(len(labels) * POOL_FRACTIONS["val"])
    return {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "unlabeled": np.sort(order[n_train + n_val :]),
    }


# ---------------------------------------------------------------------------
# Backgrounds and ink
# ---------------------------------------------------------------------------


def _photo_background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A crop of one photograph at a random scale, rotation and mirror, its colours remapped."""
    _, _, photos = _sources()
    photo = photos[int(rng.integers(len(photos)))]
    low = max(24, side // 2)  # down to half the output side: zoomed-in photo texture
    crop_side = int(rng.integers(low, min(photo.shape[:2]) + 1))
    y = int(rng.integers(photo.shape[0] - crop_side + 1))
    x = int(rng.integers(photo.shape[1] - crop_side + 1))
    crop = Image.fromarray(photo[y : y + crop_side, x : x + crop_side]).resize((side, side), Image.BILINEAR)
    pixels = np.rot90(np.asarray(crop, dtype=np.float32), k=int(rng.integers(4)))
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    pixels = pixels[..., rng.permutation(3)]  # channel order: the two photos' palettes become twelve
    if rng.random() < 0.3:
        pixels = 255.0 - pixels
    if rng.random() < 0.2:
        pixels = np.repeat(pixels.mean(axis=2, keepdims=True), 3, axis=2)
    gamma = math.exp(rng.uniform(-0.5, 0.5))
    pixels = 255.0 * (pixels / 255.0) ** gamma
    mean = pixels.mean()
    return np.clip(mean + (pixels - mean) * rng.uniform(0.6, 1.3) + rng.uniform(-30, 30), 0, 255)


def _texture_background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A generated texture: a smooth random colour field, with stripes half of the time."""
    cells = int(rng.integers(2, 9))
    field = Image.fromarray(rng.uniform(20, 235, size=(cells, cells, 3)).astype(np.uint8))
    pixels = np.asarray(field.resize((side, side), Image.BICUBIC), dtype=np.float32)
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(4, side / 2)
        wave = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
        pixels = pixels + rng.uniform(10, 45) * wave[..., None] * rng.uniform(0.3, 1.0, size=3)
    grain = rng.normal(0.0, rng.uniform(2, 12), size=(side // 4, side // 4)).astype(np.float32)
    grain = np.asarray(Image.fromarray(grain, mode="F").resize((side, side), Image.BILINEAR))
    return np.clip(pixels + grain[..., None], 0, 255)


def background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A fresh ``side`` x ``side`` x 3 float background: a remapped photograph crop (70 %) or a texture."""
    return _photo_background(rng, side) if rng.random() < 0.7 else _texture_background(rng, side)


def _ink(image: np.ndarray) -> np.ndarray:
    """The digit cropped to its ink (rows and columns with a pixel >= INK_LEVEL), in 0..1."""
    ink = image >= INK_LEVEL
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] / 16.0


def _aspect(source: int) -> float:
    images, _, _ = _sources()
    ink = _ink(images[source])
    return max(MIN_ASPECT, ink.shape[1] / ink.shape[0])


def _alpha(ink: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear upscaling of the 8x8 ink to (h, w), then a smooth step from 0.25 to 0.6, so the
    faint pen-pressure pixels of the scan do not paint a haze over the whole box and the strokes
    get edges instead of an 8x8 blur."""
    up = np.asarray(Image.fromarray(ink.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    t = np.clip((up - 0.25) / 0.35, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blend(rng: np.random.Generator, canvas: np.ndarray, source: int, box: tuple[int, int, int, int]) -> None:
    """Blend a digit's ink into ``canvas`` over ``box = (x, y, w, h)`` (parts outside the canvas are cut),
    in a colour that contrasts with what is under it."""
    images, _, _ = _sources()
    x, y, w, h = box
    alpha = _alpha(_ink(images[source]), w, h)[..., None]
    top, left = max(0, y), max(0, x)
    bottom, right = min(canvas.shape[0], y + h), min(canvas.shape[1], x + w)
    if bottom <= top or right <= left:
        return
    alpha = alpha[top - y : bottom - y, left - x : right - x]
    region = canvas[top:bottom, left:right]
    # Dark ink on bright ground, bright ink on dark ground; the hue is random, so colour alone
    # does not say where a digit is.
    bright = region.mean() < 128
    colour = rng.uniform(175, 255, size=3) if bright else rng.uniform(0, 80, size=3)
    opacity = rng.uniform(0.8, 1.0)  # blended, not stamped: some of the background shows through
    canvas[top:bottom, left:right] = region * (1 - opacity * alpha) + colour * opacity * alpha


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    noise = rng.normal(0.0, 4.0, size=canvas.shape)  # sensor-like noise over everything
    return np.clip(np.rint(canvas + noise), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# Labeled scenes
# ---------------------------------------------------------------------------


def _object_size(rng: np.random.Generator, area_range: str, aspect: float) -> tuple[int, int]:
    """Box (w, h) with w / h = aspect and an area inside the range's targets (clear of the boundaries)."""
    lo, hi = AREA_RANGES[area_range]
    area = rng.uniform(lo, hi)
    w = max(2, round(math.sqrt(area * aspect)))
    h = min(IMAGE_SIZE, max(2, round(math.sqrt(area / aspect))))
    return w, h


def _plan(rng: np.random.Generator, pool: np.ndarray, forced: list[tuple[int, str]]) -> list[tuple[SceneObject, int]]:
    """Objects for one scene (the forced (digit, range) pairs plus random extras), placed without
    overlap; each with the index of the source digit it shows."""
    _, labels, _ = _sources()
    count = max(len(forced), int(rng.integers(2, MAX_OBJECTS + 1)))  # several objects per scene
    wanted = list(forced)
    has_large = any(r == "large" for _, r in forced)
    for _ in range(count - len(forced)):
        area_range = str(rng.choice(["small", "medium", "large"], p=[0.4, 0.4, 0.2]))
        if area_range == "large" and has_large:
            area_range = "medium"  # two large objects rarely fit next to each other
        has_large |= area_range == "large"
        wanted.append((int(rng.integers(10)), area_range))
    planned: list[tuple[SceneObject, int]] = []
    for digit, area_range in wanted:
        candidates = pool[labels[pool] == digit]
        source = int(candidates[int(rng.integers(len(candidates)))])
        obj = SceneObject(digit + 1, area_range)
        obj.w, obj.h = _object_size(rng, area_range, _aspect(source))
        planned.append((obj, source))
    n_forced = len(forced)
    required = sorted(planned[:n_forced], key=lambda p: -p[0].w * p[0].h)
    for _attempt in range(50):  # a big object in the middle can block the next: retry the layout
        placed: list[tuple[SceneObject, int]] = []
        for item in required:
            if not place(rng, item[0], [o for o, _ in placed]):
                break
            placed.append(item)
        else:
            break
    else:
        raise RuntimeError(f"digits generator could not fit the required objects {forced} in one image")
    for item in sorted(planned[n_forced:], key=lambda p: -p[0].w * p[0].h):
        if place(rng, item[0], [o for o, _ in placed]):  # extras that do not fit are left out
            placed.append(item)
    return placed


def _forced(n_images: int) -> list[list[tuple[int, str]]]:
    """Every digit at least once per split, with ranges cycling large, medium, small, so each split
    holds all ten categories and all three COCO area ranges; spread over the split's images."""
    per_image: list[list[tuple[int, str]]] = [[] for _ in range(n_images)]
    for digit in range(10):
        per_image[digit % n_images].append((digit, ("large", "medium", "small")[digit % 3]))
    return per_image


def scene(seed: int, split: str, index: int, pool: np.ndarray, forced: list[tuple[int, str]]) -> tuple[
        np.ndarray, list[tuple[SceneObject, int]]]:
    """One labeled scene's pixels and its placed objects (with source digit indices); deterministic per arguments."""
    rng = np.random.default_rng([seed, _STREAM[split], index])
    placed = _plan(rng, pool, forced)
    canvas = background(rng, IMAGE_SIZE)
    for obj, source in placed:
        _blend(rng, canvas, source, (obj.x, obj.y, obj.w, obj.h))
    return _finish(rng, canvas), placed


def _coco(description: str, images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "info": {"description": f"ablate digits sample data set ({description})", "version": str(DIGITS_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c, supercategory="digit") for c in DIGIT_CATEGORIES],
    }


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
    return pixels, _coco(split, images, annotations)


# ---------------------------------------------------------------------------
# Object-centric images: the unlabeled set and the monitor's sets
# ---------------------------------------------------------------------------


def _digit_box(rng: np.random.Generator, source: int, height: tuple[float, float], side: int) -> tuple[int, int]:
    h = int(round(rng.uniform(*height) * side))
    return max(2, min(side, int(round(h * _aspect(source))))), h


def object_image(seed: int, part: str, index: int, pool: np.ndarray, neighbours: bool = True) -> tuple[
        np.ndarray, list[tuple[int, tuple[int, int, int, int]]]]:
    """One ``OBJECT_SIDE`` px image centred on a digit of ``pool``; deterministic per arguments.

    Args:
        seed: the set's seed.
        part: "unlabeled", "monitor_bank" or "monitor_queries" (each its own random stream).
        index: the image's index in its part; the main digit is ``pool[index % len(pool)]``, so a
            part larger than its pool shows every digit equally often.
        pool: source digit indices.
        neighbours: add up to two neighbouring digits cut by the border (unlabeled images only).

    Returns:
        The pixels (side x side x 3 uint8) and ``[(source digit, (x, y, w, h)), ...]``, the main
        digit first; neighbours' boxes may reach outside the image.
    """
    rng = np.random.default_rng([seed, _STREAM[part], index])
    side = OBJECT_SIDE
    main = int(pool[index % len(pool)])
    w, h = _digit_box(rng, main, MAIN_HEIGHT, side)
    # Centred within a quarter of the free space: views of the image hold the digit, not the border.
    x = int(round((side - w) / 2 + rng.uniform(-0.25, 0.25) * (side - w)))
    y = int(round((side - h) / 2 + rng.uniform(-0.25, 0.25) * (side - h)))
    objects = [(main, (x, y, w, h))]
    if neighbours:
        for _ in range(int(rng.integers(MAX_NEIGHBOURS + 1))):
            source = int(pool[int(rng.integers(len(pool)))])
            nw, nh = _digit_box(rng, source, NEIGHBOUR_HEIGHT, side)
            for _try in range(10):  # beside the main digit (2 px gap), at least partly inside the image
                nx, ny = int(rng.integers(-nw // 2, side - nw // 2)), int(rng.integers(-nh // 2, side - nh // 2))
                if nx + nw + 2 <= x or x + w + 2 <= nx or ny + nh + 2 <= y or y + h + 2 <= ny:
                    objects.append((source, (nx, ny, nw, nh)))
                    break
    canvas = background(rng, side)
    for source, box in objects:
        _blend(rng, canvas, source, box)
    return _finish(rng, canvas), objects


def rendering(seed: int, part: str, index: int, pool: np.ndarray, number: int) -> np.ndarray:
    """Rendering ``number`` (>= 1) of ``object_image(seed, part, index, pool)``: the same digits at the same places,
    on another background, in other ink and noise (a random stream of its own), so that two renderings share only
    their digits. Rendering 0 is ``object_image`` itself."""
    _, objects = object_image(seed, part, index, pool)
    rng = np.random.default_rng([seed, _STREAM[part], index, number])
    canvas = background(rng, OBJECT_SIDE)
    for source, box in objects:
        _blend(rng, canvas, source, box)
    return _finish(rng, canvas)


def monitor_split(seed: int, part: str, count: int, pool: np.ndarray) -> tuple[list[np.ndarray], dict[str, Any]]:
    """One of the monitor's sets: ``count`` single-digit images and their COCO instances dict."""
    _, labels, _ = _sources()
    pixels, images, annotations = [], [], []
    for index in range(count):
        image, objects = object_image(seed, part, index, pool, neighbours=False)
        source, (x, y, w, h) = objects[0]
        pixels.append(image)
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "width": OBJECT_SIDE,
                       "height": OBJECT_SIDE})
        annotations.append({"id": image_id, "image_id": image_id, "category_id": int(labels[source]) + 1,
                            "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0, "digit_index": source})
    return pixels, _coco(part.replace("_", " "), images, annotations)


def unlabeled_name(index: int, number: int = 0) -> str:
    """The unlabeled image's path under ``unlabeled/`` (nested folders; every 8th a PNG); rendering ``number`` >= 1
    is ``<name>.view<number>.<suffix>`` beside it (trainers/data/files.py: RENDERING)."""
    suffix = ".png" if index % PNG_EVERY == PNG_EVERY - 1 else ".jpg"
    view = f".view{number}" if number else ""
    return f"part_{index // UNLABELED_PER_FOLDER:02d}/u{index:06d}{view}{suffix}"


def _write_unlabeled_range(folder: Path, seed: int, pool: np.ndarray, start: int, stop: int,
                           save: Callable[[np.ndarray, Path], None], renderings: int = 1) -> None:
    for index in range(start, stop):
        path = folder / unlabeled_name(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        save(object_image(seed, "unlabeled", index, pool)[0], path)
        for number in range(1, renderings):
            save(rendering(seed, "unlabeled", index, pool, number), folder / unlabeled_name(index, number))


def unlabeled_classes(count: int, pool: np.ndarray) -> dict[str, str]:
    """Each unlabeled image's digit class (``"0"`` .. ``"9"``) by its name: the labels of the supervised control."""
    _, labels, _ = _sources()
    return {unlabeled_name(index): str(int(labels[int(pool[index % len(pool)])])) for index in range(count)}


def write_unlabeled(folder: Path, seed: int, count: int, pool: np.ndarray,
                    save: Callable[[np.ndarray, Path], None], workers: int | None = None, renderings: int = 1) -> None:
    """Write the unlabeled images ``0 .. count - 1`` under ``folder``, in parallel worker processes for large sets,
    and their classes as ``folder/labels.json`` (trainers/data/labels.py).

    ``renderings`` > 1 writes each image that many times, on independent backgrounds (:func:`rendering`); a SwAV
    run then takes each view from its own rendering, so the views share the digit and nothing else (a property
    of this synthetic set, not of the trainer). The files do not depend on the number of workers (each image's
    randomness comes from its index).
    """
    from trainers.data.labels import write_labels

    _sources()  # loaded once here, inherited by the workers
    folder.mkdir(parents=True, exist_ok=True)
    write_labels(folder, unlabeled_classes(count, pool))
    workers = workers if workers is not None else min(16, os.cpu_count() or 1)
    if count < PARALLEL_FROM or workers <= 1:
        _write_unlabeled_range(folder, seed, pool, 0, count, save, renderings)
        return
    import multiprocessing

    chunk = math.ceil(count / (4 * workers))
    # fork: the workers inherit the loaded sources and need no import of their own (they use numpy and PIL only)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool_:
        jobs = [pool_.submit(_write_unlabeled_range, folder, seed, pool, start, min(count, start + chunk), save,
                             renderings) for start in range(0, count, chunk)]
        for job in jobs:
            job.result()


def legible(box: tuple[int, int, int, int], view: tuple[int, int, int, int], size: int, min_px: float = 6.0) -> bool:
    """Whether a view ``(top, left, height, width)``, resized to ``size`` px, holds the digit in ``box = (x, y, w, h)``
    legibly: at least half of the box inside the view, and the digit at least ``min_px`` tall after resizing."""
    x, y, w, h = box
    top, left, vh, vw = view
    inter_w = max(0, min(x + w, left + vw) - max(x, left))
    inter_h = max(0, min(y + h, top + vh) - max(y, top))
    return inter_w * inter_h >= 0.5 * w * h and h * size / vh >= min_px


__all__ = ["DIGITS_SIZES", "DIGITS_VERSION", "OBJECT_SIDE", "background", "digit_pools", "labeled_split", "legible",
           "monitor_split", "object_image", "rendering", "scene", "unlabeled_classes", "unlabeled_name",
           "write_unlabeled"]
