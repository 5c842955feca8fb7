"""The deterministic sample data set behind ``ablate data sample``: its layout on disk and its generator.

Shapes (disc, square, triangle) on cluttered backgrounds, labeled in COCO format with every
category in every COCO area range, plus unlabeled images in nested folders for pretraining.
``kind="digits"`` writes the same layout from real digits and photographs (trainers.data.digits).
What both sets' scenes share (size, area ranges, placement, annotations) is trainers.data.scenes.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from trainers.common.validation import require_choice, require_int
from trainers.data.errors import DatasetError
from trainers.data.files import find_images
from trainers.data.scenes import AREA_RANGES, IMAGE_SIZE, MAX_OBJECTS, SceneObject, annotation, place

SAMPLE_VERSION = 1  # bump when the generator's output changes, so old sample folders are regenerated
JPEG_QUALITY = 90
PNG_EVERY = 8  # every 8th unlabeled image is a PNG, so both decoders are exercised
UNLABELED_PER_FOLDER = 32  # unlabeled images go into part_NN/ subfolders to exercise the recursive search

# Non-contiguous ids on purpose: code that assumes ids 1..C breaks on this sample, not on user data.
SAMPLE_CATEGORIES = ({"id": 1, "name": "disc"}, {"id": 3, "name": "square"}, {"id": 7, "name": "triangle"})
SAMPLE_SIZES: dict[str, dict[str, int]] = {
    "small": {"train": 8, "val": 4, "unlabeled": 128},  # fast tests
    "medium": {"train": 32, "val": 12, "unlabeled": 480},  # the demo
}
TRIANGLE_ASPECT = 0.87  # height / base, about equilateral
SAMPLE_KINDS = ("shapes", "digits")  # shapes: this module; digits: trainers.data.digits


def sample_sizes(kind: str) -> list[str]:
    """The sizes ``generate_sample`` accepts for ``kind`` (digits adds ``large``, for GPU runs)."""
    if kind == "digits":
        from trainers.data.digits import DIGITS_SIZES

        return list(DIGITS_SIZES)
    return list(SAMPLE_SIZES)


@dataclass(frozen=True)
class SamplePaths:
    """Where ``generate_sample`` put each part of the sample data set."""

    root: Path
    unlabeled: Path
    train_images: Path
    train_annotations: Path
    val_images: Path
    val_annotations: Path
    # The kNN monitor's own labeled objects (the digits set writes them; optional under `data: {root: DIR}`)
    monitor_bank_images: Path
    monitor_bank_annotations: Path
    monitor_query_images: Path
    monitor_query_annotations: Path

    def monitor(self) -> tuple[Path, Path, Path, Path] | None:
        """The monitor's (bank images, bank JSON, query images, query JSON) when all four exist, else None
        (the monitor then scores the train and val boxes)."""
        paths = (self.monitor_bank_images, self.monitor_bank_annotations, self.monitor_query_images,
                 self.monitor_query_annotations)
        return paths if all(p.exists() for p in paths) else None


def sample_paths(root: Path) -> SamplePaths:
    """The layout of a sample data set under ``root``; ``data: {root: DIR}`` in a search space expects it too."""
    return SamplePaths(
        root=root,
        unlabeled=root / "unlabeled",
        train_images=root / "train",
        train_annotations=root / "annotations" / "train.json",
        val_images=root / "val",
        val_annotations=root / "annotations" / "val.json",
        monitor_bank_images=root / "monitor" / "bank",
        monitor_bank_annotations=root / "annotations" / "monitor_bank.json",
        monitor_query_images=root / "monitor" / "queries",
        monitor_query_annotations=root / "annotations" / "monitor_queries.json",
    )


def _object_size(rng: np.random.Generator, category: int, area_range: str) -> tuple[int, int]:
    lo, hi = AREA_RANGES[area_range]
    area = rng.uniform(lo, hi)
    if category == 1:  # disc; the 32-gon segmentation is 0.994 of the circle's area
        d = round(2.0 * math.sqrt(area / math.pi))
        return d, d
    if category == 3:  # square
        s = round(math.sqrt(area))
        return s, s
    base = round(math.sqrt(2.0 * area / TRIANGLE_ASPECT))  # triangle: area = base * height / 2
    return base, round(base * TRIANGLE_ASPECT)


def _polygon(obj: SceneObject) -> list[float]:
    """The object's outline in image coordinates (COCO polygon: x1, y1, x2, y2, ...)."""
    x, y, w, h = float(obj.x), float(obj.y), float(obj.w), float(obj.h)
    if obj.category == 1:
        cx, cy, r = x + w / 2, y + h / 2, w / 2
        angles = np.arange(32) * (2 * math.pi / 32)
        pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    elif obj.category == 3:
        pts = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    elif obj.inverted:
        pts = np.array([[x, y], [x + w, y], [x + w / 2, y + h]])
    else:
        pts = np.array([[x, y + h], [x + w / 2, y], [x + w, y + h]])
    return [round(float(v), 2) for v in pts.reshape(-1)]


def _polygon_area(flat: Sequence[float]) -> float:
    xs, ys = np.asarray(flat[0::2]), np.asarray(flat[1::2])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))


def _plan_objects(rng: np.random.Generator, forced: list[tuple[int, str]]) -> list[SceneObject]:
    """Objects for one image: the forced (category, range) pairs plus random extras, placed."""
    count = max(len(forced), int(rng.integers(1, MAX_OBJECTS + 1)))
    objects = [SceneObject(cat, area_range) for cat, area_range in forced]
    has_large = any(o.area_range == "large" for o in objects)
    for _ in range(count - len(forced)):
        area_range = str(rng.choice(["small", "medium", "large"], p=[0.4, 0.4, 0.2]))
        if area_range == "large" and has_large:
            area_range = "medium"  # two large objects rarely fit in 256 px next to each other
        has_large |= area_range == "large"
        objects.append(SceneObject(int(rng.choice([c["id"] for c in SAMPLE_CATEGORIES])), area_range))
    for obj in objects:
        obj.w, obj.h = _object_size(rng, obj.category, obj.area_range)
        obj.inverted = obj.category == 7 and bool(rng.random() < 0.5)
    # Forced objects first, largest first, so the guaranteed ones find room; a big object placed
    # in the middle can still leave no room for the next, so the forced layout is retried.
    n_forced = len(forced)
    required = sorted(objects[:n_forced], key=lambda o: -o.w * o.h)
    for _attempt in range(50):
        placed: list[SceneObject] = []
        for obj in required:
            if not place(rng, obj, placed):
                break
            placed.append(obj)
        else:
            break
    else:
        raise RuntimeError(f"sample generator could not fit the required objects {forced} in one image")
    for obj in sorted(objects[n_forced:], key=lambda o: -o.w * o.h):
        if place(rng, obj, placed):  # extras that do not fit are left out
            placed.append(obj)
    return placed


def _background(rng: np.random.Generator) -> Image.Image:
    """A cluttered, muted, textured background with distractor blobs and strokes."""
    coarse = rng.uniform(70, 180, size=(5, 5, 3))
    # Pull colours toward grey so the background never has the objects' saturation.
    coarse = 0.6 * coarse + 0.4 * coarse.mean(axis=2, keepdims=True)
    base = Image.fromarray(coarse.astype(np.uint8)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    base = np.asarray(base, dtype=np.float32)
    grain = rng.normal(0.0, 22.0, size=(32, 32)).astype(np.float32)
    grain = np.asarray(Image.fromarray(grain, mode="F").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
    canvas = Image.fromarray(np.clip(base + grain[..., None], 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(4, 10))):
        # Distractors: elongated ellipses (never a disc: aspect >= 1.8) and strokes in any colour,
        # so colour alone does not find the objects.
        colour = tuple(int(v) for v in rng.integers(20, 236, size=3))
        cx, cy = rng.uniform(0, IMAGE_SIZE, size=2)
        if rng.random() < 0.6:
            major = rng.uniform(8, 40)
            minor = major / rng.uniform(1.8, 3.5)
            rx, ry = (major, minor) if rng.random() < 0.5 else (minor, major)
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
        else:
            dx, dy = rng.uniform(-60, 60, size=2)
            draw.line((cx, cy, cx + dx, cy + dy), fill=colour, width=int(rng.integers(2, 6)))
    return canvas


def _render_object(rng: np.random.Generator, canvas: Image.Image, obj: SceneObject) -> None:
    """Draw one object: red shaded disc, green striped square or blue dotted triangle."""
    w, h = obj.w, obj.h
    mask = Image.new("L", (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    jitter = rng.uniform(-25, 25, size=3)
    if obj.category == 1:
        mdraw.ellipse((0, 0, w - 1, h - 1), fill=255)
        colour = np.array([212.0, 48.0, 48.0]) + jitter * np.array([1.0, 0.8, 0.8])
        # Off-centre highlight: a smooth radial shading is this class's texture.
        hx, hy = w * rng.uniform(0.3, 0.45), h * rng.uniform(0.3, 0.45)
        shade = 1.15 - 0.5 * np.sqrt((xx - hx) ** 2 + (yy - hy) ** 2) / max(w, 1)
        patch = colour[None, None, :] * shade[..., None]
    elif obj.category == 3:
        mdraw.rectangle((0, 0, w - 1, h - 1), fill=255)
        colour = np.array([55.0, 175.0, 55.0]) + jitter * np.array([0.8, 1.0, 0.8])
        period = max(4.0, w / rng.uniform(4.0, 7.0))
        axis = int(rng.integers(0, 3))
        coord = yy if axis == 0 else xx if axis == 1 else (xx + yy) / math.sqrt(2.0)
        stripes = (np.floor(coord / (period / 2)) % 2)[..., None]
        patch = colour[None, None, :] * (1.0 - 0.55 * stripes)
    else:
        top, bottom = (0, h - 1) if not obj.inverted else (h - 1, 0)
        mdraw.polygon([(0, bottom), ((w - 1) / 2, top), (w - 1, bottom)], fill=255)
        colour = np.array([50.0, 75.0, 210.0]) + jitter * np.array([0.8, 0.8, 1.0])
        period = max(4.0, w / rng.uniform(5.0, 8.0))
        radius = period * 0.3
        dots = ((((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2) < radius**2)[..., None]
        patch = np.where(dots, np.array([200.0, 215.0, 255.0]), colour[None, None, :])
    patch_img = Image.fromarray(np.clip(patch, 0, 255).astype(np.uint8))
    canvas.paste(patch_img, (obj.x, obj.y), mask)


def _render_image(rng: np.random.Generator, objects: list[SceneObject]) -> np.ndarray:
    canvas = _background(rng)
    for obj in objects:
        _render_object(rng, canvas, obj)
    pixels = np.asarray(canvas, dtype=np.int16)
    # Sensor-like noise over everything, objects included.
    noise = rng.integers(-9, 10, size=pixels.shape, dtype=np.int16)
    return np.clip(pixels + noise, 0, 255).astype(np.uint8)


def _save(pixels: np.ndarray, path: Path) -> None:
    image = Image.fromarray(pixels)
    if path.suffix == ".png":
        image.save(path, format="PNG", compress_level=1)
    else:
        # Fixed encoder settings so the bytes are identical run to run.
        image.save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)


def _forced_pairs(n_images: int) -> list[list[tuple[int, str]]]:
    """Spread every (category, area range) pair over a split's images, large objects first,
    so each split is guaranteed all categories in all three COCO area ranges."""
    per_image: list[list[tuple[int, str]]] = [[] for _ in range(n_images)]
    pairs = [(c["id"], r) for r in ("large", "medium", "small") for c in SAMPLE_CATEGORIES]
    for index, pair in enumerate(pairs):
        per_image[index % n_images].append(pair)
    return per_image


def _write_split(root: Path, split: str, seed: int, count: int) -> dict[str, Any]:
    images_dir = root / split
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for index, forced in enumerate(_forced_pairs(count)):
        rng = np.random.default_rng([seed, 1 if split == "train" else 2, index])
        objects = _plan_objects(rng, forced)
        name = f"{index + 1:06d}.jpg"
        _save(_render_image(rng, objects), images_dir / name)
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        for obj in objects:
            polygon = _polygon(obj)
            area = round(_polygon_area(polygon), 2)
            annotations.append(annotation(obj, len(annotations) + 1, image_id, area, "sample", segmentation=[polygon]))
    return {
        "info": {"description": f"ablate sample data set ({split})", "version": str(SAMPLE_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c, supercategory="shape") for c in SAMPLE_CATEGORIES],
    }


def _write_unlabeled(root: Path, seed: int, count: int) -> None:
    for index in range(count):
        rng = np.random.default_rng([seed, 3, index])
        folder = root / "unlabeled" / f"part_{index // UNLABELED_PER_FOLDER:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".png" if index % PNG_EVERY == PNG_EVERY - 1 else ".jpg"
        _save(_render_image(rng, _plan_objects(rng, [])), folder / f"u{index:06d}{suffix}")


def _manifest(seed: int, size: str, kind: str = "shapes", renderings: int = 1) -> dict[str, Any]:
    if kind == "shapes":  # no `kind` key: shapes manifests stay as they were before digits existed
        return {
            "format": "ablate-sample",
            "version": SAMPLE_VERSION,
            "seed": seed,
            "size": size,
            "image_size": IMAGE_SIZE,
            "counts": dict(SAMPLE_SIZES[size]),
        }
    from trainers.data import digits

    return {
        "format": "ablate-sample",
        "kind": kind,
        "version": digits.DIGITS_VERSION,
        "seed": seed,
        "size": size,
        "image_size": IMAGE_SIZE,
        "object_side": digits.OBJECT_SIDE,
        "counts": dict(digits.DIGITS_SIZES[size]),
        "sources": "sklearn.datasets.load_digits (digit_index in annotations), load_sample_images",
        "digit_pools": {split: len(pool) for split, pool in digits.digit_pools(seed).items()},
        **({"renderings": renderings} if renderings > 1 else {}),
    }


def _write_digits(staging: Path, seed: int, counts: dict[str, int], renderings: int = 1) -> None:
    """The digits set's files under ``staging``: labeled scenes (JPEG), the unlabeled object-centric images
    (JPEG, every 8th PNG; in parallel for large sets) and the monitor's object sets (PNG)."""
    from trainers.data import digits

    pools = digits.digit_pools(seed)
    parts = [("train", "train", pools["train"], digits.labeled_split),
             ("val", "val", pools["val"], digits.labeled_split),
             ("monitor_bank", "monitor/bank", pools["train"], digits.monitor_split),
             ("monitor_queries", "monitor/queries", pools["val"], digits.monitor_split)]
    for part, folder, pool, make in parts:
        pixels, coco = make(seed, part, counts[part], pool)
        (staging / folder).mkdir(parents=True)
        for image, entry in zip(pixels, coco["images"]):
            _save(image, staging / folder / entry["file_name"])
        (staging / "annotations" / f"{part}.json").write_text(json.dumps(coco, indent=1) + "\n")
    digits.write_unlabeled(staging / "unlabeled", seed, counts["unlabeled"], pools["unlabeled"], _save,
                           renderings=renderings)


def _is_complete(paths: SamplePaths, manifest: dict[str, Any]) -> bool:
    file = paths.root / "sample.json"
    try:
        if json.loads(file.read_text()) != manifest:
            return False
    except (OSError, ValueError):
        return False
    counts = manifest["counts"]
    monitor = paths.monitor()
    return (
        paths.train_annotations.is_file()
        and paths.val_annotations.is_file()
        # each unlabeled image with its further renderings (``<stem>.view<k>``) beside it
        and len(find_images(paths.unlabeled)) == counts["unlabeled"] * manifest.get("renderings", 1)
        and len(find_images(paths.train_images)) == counts["train"]
        and len(find_images(paths.val_images)) == counts["val"]
        and ("monitor_bank" not in counts or monitor is not None
             and len(find_images(monitor[0])) == counts["monitor_bank"]
             and len(find_images(monitor[2])) == counts["monitor_queries"])
    )


def _written_by_generator(root: Path) -> bool:
    try:
        return json.loads((root / "sample.json").read_text()).get("format") == "ablate-sample"
    except (OSError, ValueError, AttributeError):
        return False


def generate_sample(out: str | Path, seed: int = 0, size: str = "small", kind: str = "shapes",
                    renderings: int = 1) -> SamplePaths:
    """Write a small, deterministic sample data set in the formats the trainers read.

    Layout under ``out``: ``unlabeled/part_NN/*.jpg|png`` (the digits set adds ``unlabeled/labels.json``, each
    image's class, for supervised pretraining), ``train/``, ``val/``, ``annotations/train.json``,
    ``annotations/val.json`` (COCO instances, categories disc=1, square=3, triangle=7) and ``sample.json`` (seed, size, counts, version).
    Each labeled split holds every category in every COCO area range. Same seed, size and kind
    give byte-identical files; if ``out`` already holds that complete set, nothing is rewritten.

    ``kind="digits"`` writes labeled scenes of real handwritten digits (categories "0".."9", ids
    1..10) on varied backgrounds, object-centric 64 px unlabeled images, and the kNN monitor's own
    object sets (``monitor/bank``, ``monitor/queries`` with ``annotations/monitor_*.json``), drawn
    from disjoint digit pools (see :mod:`trainers.data.digits`); its ``sample.json`` also records ``kind``.

    Args:
        out: target folder (created if missing; other files in it are left alone).
        seed: generator seed (a non-negative integer).
        size: "small" (8 train, 4 val, 128 unlabeled; for tests) or "medium" (32/12/480; for the demo);
            digits: small 8/4/256, medium 40/20/4,000, large 40/60/16,384 (GPU runs), see ``DIGITS_SIZES``.
        kind: "shapes" (the default) or "digits".
        renderings: digits only: each unlabeled image written this many times on independent backgrounds
            (``<name>.view<k>.<ext>`` beside it; SwAV takes each view from its own rendering, so the views share the
            digit and nothing else). 1 = one file per image.

    Raises:
        ValueError: bad ``seed``, ``size`` or ``kind``.
        DatasetError: ``out`` holds folders of the same names that a previous run did not write.
    """
    require_choice("kind", kind, list(SAMPLE_KINDS))
    require_choice("size", size, sample_sizes(kind))
    require_int("seed", seed, 0, "a non-negative integer")
    require_int("renderings", renderings, 1, "an integer >= 1")
    if renderings > 1 and kind != "digits":
        raise ValueError(f"renderings={renderings} is invalid for kind={kind!r}: only the digits set has renderings")
    root = Path(out)
    paths = sample_paths(root)
    manifest = _manifest(seed, size, kind, renderings)
    if _is_complete(paths, manifest):
        return paths

    ours = ("unlabeled", "train", "val", "annotations", "monitor")
    if not _written_by_generator(root):
        for name in ours:
            target = root / name
            if target.exists() and (not target.is_dir() or any(target.iterdir())):
                raise DatasetError(
                    f"{target} already exists and was not written by `ablate data sample`; "
                    f"choose an empty --out folder or move it away"
                )
    root.mkdir(parents=True, exist_ok=True)
    # Build in a staging folder and move into place, so an interrupted run never leaves a
    # half-written set that looks complete.
    staging = Path(tempfile.mkdtemp(prefix=".sample-staging-", dir=root))
    try:
        counts = manifest["counts"]
        (staging / "annotations").mkdir()
        if kind == "digits":
            _write_digits(staging, seed, counts, renderings)
        else:
            for split in ("train", "val"):
                coco = _write_split(staging, split, seed, counts[split])
                (staging / "annotations" / f"{split}.json").write_text(json.dumps(coco, indent=1) + "\n")
            _write_unlabeled(staging, seed, counts["unlabeled"])
        (root / "sample.json").unlink(missing_ok=True)  # the old set stops being "complete" first
        for name in ours:
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if (staging / name).exists():  # monitor/: the digits set only
                (staging / name).rename(target)
        (root / "sample.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths
