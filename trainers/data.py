"""Data for both trainers: the unlabeled image folder, the COCO detection data set and the
deterministic sample-data generator behind ``ablate data sample``.

Formats (DESIGN.md): unlabeled = a folder of .jpg/.png images searched recursively;
labeled = COCO instances JSON + an image folder, one pair for train and one for val.

Everything a user points us at is validated when it is opened, and errors name the file,
the entry and a fix, so a bad data set fails before hours of pretraining rather than in them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from torch.utils.data import Dataset

from trainers.common import is_int, is_number, require_choice, require_int

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SAMPLE_HINT = "run `ablate data sample --out DIR` to write a small sample data set"


class DatasetError(ValueError):
    """A data set on disk is missing, empty or malformed; the message names the file and a fix."""


# ---------------------------------------------------------------------------
# Image decoding
# ---------------------------------------------------------------------------


def decode_rgb(path: str | Path) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor of shape 3xHxW.

    torchvision's native decoder is tried first (several times faster than PIL on JPEG);
    PIL is the fallback for what it cannot read (e.g. palette PNGs with odd modes, 16-bit PNGs).

    Raises:
        OSError or RuntimeError (from the decoders) when neither can read the file.
    """
    from torchvision.io import ImageReadMode, decode_image

    try:
        # torchvision 0.29 warns on every call that its decoders move to torchcodec (not a
        # dependency here); the decoders still work, and one warning per image would drown real ones.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
            image = decode_image(str(path), mode=ImageReadMode.RGB)
        if image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
            return image
    except (RuntimeError, ValueError, OSError):
        pass  # fall back to PIL below
    with Image.open(path) as pil:
        rgb = np.asarray(pil.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


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


# ---------------------------------------------------------------------------
# Unlabeled images (SwAV pretraining)
# ---------------------------------------------------------------------------


UNREADABLE = "unreadable"  # SkippedImage.reason: no decoder can read the file
TOO_SMALL = "too small"  # SkippedImage.reason: a side is shorter than the smallest crop
SKIPPED_SHOWN = 5  # files named in a warning or error; the rest are counted


@dataclass(frozen=True)
class SkippedImage:
    """A file of the unlabeled folder that is not trained on, and why.

    Attributes:
        path: the file, or None when the data set gave only ``None`` (it does not name its files).
        reason: :data:`UNREADABLE` or :data:`TOO_SMALL`.
        detail: the decoder's message, or the image size (``"1x1 px"``).
    """

    path: Path | None
    reason: str
    detail: str = ""


class UnlabeledImages(Dataset):
    """A folder of images, searched recursively, each decoded once to a uint8 RGB tensor.

    Unreadable files, and images with a side shorter than ``min_size`` (a multi-crop view
    would be upsampled from a few pixels: noise, not data), do not stop a multi-hour
    pretraining run: ``__getitem__`` returns ``None`` for them (or a :class:`SkippedImage`
    naming the file and the reason, with ``mark_skipped=True``), ``collate_images`` drops and
    lists them and the trainer logs one warning per epoch with ``warn_skipped``.

    Args:
        root: the image folder.
        min_size: the shortest side, in pixels, of an image that is trained on (the trainer
            passes its smallest crop size).
        mark_skipped: return a :class:`SkippedImage` instead of ``None`` for a skipped file.

    Raises:
        DatasetError: when ``root`` does not exist, is not a folder or holds no images.
        ValueError: when ``min_size`` is not an integer >= 1.
    """

    def __init__(self, root: str | Path, min_size: int = 1, mark_skipped: bool = False) -> None:
        require_int("min_size", min_size, 1, "an integer >= 1 (pixels)")
        self.root = Path(root)
        self.min_size = min_size
        self.mark_skipped = mark_skipped
        if not self.root.exists():
            raise DatasetError(
                f"unlabeled image folder {self.root} does not exist; point the config at a folder of "
                f".jpg/.png images, or {SAMPLE_HINT}"
            )
        if not self.root.is_dir():
            raise DatasetError(f"unlabeled image folder {self.root} is a file, not a folder; point it at the folder")
        self.paths: list[Path] = find_images(self.root)
        if not self.paths:
            raise DatasetError(
                f"unlabeled image folder {self.root} holds no .jpg/.jpeg/.png images (searched recursively); "
                f"add images, or {SAMPLE_HINT}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> torch.Tensor | SkippedImage:
        """The image as uint8 3xHxW RGB, or why it is skipped (unreadable, or under ``min_size``)."""
        path = self.paths[index]
        try:
            image = decode_rgb(path)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file", never crash a worker
            # Per-file detail at debug level only; the trainer logs one summary warning per epoch.
            logger.debug("cannot decode %s: %s", path, exc)
            return SkippedImage(path, UNREADABLE, str(exc))
        height, width = image.shape[1:]
        if min(height, width) < self.min_size:
            logger.debug("%s is %dx%d px, under min_size=%d", path, width, height, self.min_size)
            return SkippedImage(path, TOO_SMALL, f"{width}x{height} px")
        return image

    def __getitem__(self, index: int) -> torch.Tensor | SkippedImage | None:
        """The image as uint8 3xHxW RGB; for a skipped file None, or a SkippedImage with ``mark_skipped``."""
        item = self.load(index)
        if isinstance(item, SkippedImage) and not self.mark_skipped:
            return None
        return item


def collate_images(
    batch: Sequence[torch.Tensor | SkippedImage | None],
) -> tuple[list[torch.Tensor], tuple[SkippedImage, ...]]:
    """Collate for ``UnlabeledImages``: drop the skipped entries (None or SkippedImage).

    Returns:
        The images (a list, since multi-crop resizes them later and sizes may differ) and the
        skipped entries; a ``None`` becomes an unnamed unreadable :class:`SkippedImage`.
    """
    images = [item for item in batch if isinstance(item, torch.Tensor)]
    skipped = tuple(
        item if isinstance(item, SkippedImage) else SkippedImage(None, UNREADABLE)
        for item in batch
        if not isinstance(item, torch.Tensor)
    )
    return images, skipped


def describe_skipped(skipped: Sequence[SkippedImage], root: str | Path, total: int | None = None) -> str:
    """``'a.jpg (unreadable), b.png (1x1 px), ... (12 in all)'``: a few named files and the count.

    Paths are shown relative to ``root``; unnamed entries are only counted.
    """
    total = len(skipped) if total is None else total
    named = [item for item in skipped if item.path is not None]
    shown = []
    for item in named[:SKIPPED_SHOWN]:
        try:
            name = item.path.relative_to(root).as_posix()  # type: ignore[union-attr]
        except ValueError:
            name = str(item.path)
        shown.append(f"{name} ({item.detail})" if item.reason == TOO_SMALL else f"{name} ({UNREADABLE})")
    text = ", ".join(shown)
    if total > len(shown):
        text += f", ... ({total} in all)" if shown else f"{total} unnamed"
    return text


def warn_skipped(
    count: int,
    root: str | Path,
    too_small: int = 0,
    examples: Sequence[SkippedImage] = (),
    min_size: int | None = None,
) -> None:
    """Log one warning naming the folder, how many files were skipped and a few of them.

    Does nothing when nothing was skipped, so a trainer can call it unconditionally at epoch end.

    Args:
        count: unreadable files.
        root: the image folder.
        too_small: images with a side under ``min_size``.
        examples: some of the skipped files (named in the warning).
        min_size: the smallest crop size, for the message.
    """
    if count <= 0 and too_small <= 0:
        return
    parts = []
    fixes = []
    if count > 0:
        parts.append(f"{count} unreadable image{'' if count == 1 else 's'} (corrupt or not an image)")
        fixes.append("remove or re-encode the unreadable ones")
    if too_small > 0:
        under = f" ({min_size} px)" if min_size is not None else ""
        parts.append(f"{too_small} image{'' if too_small == 1 else 's'} smaller than the smallest crop{under}")
        fixes.append("remove the small ones or lower the crop sizes")
    named = describe_skipped(examples, root, count + too_small) if examples else ""
    logger.warning(
        "skipped %s in %s%s; %s",
        " and ".join(parts),
        root,
        f": {named}" if named else "",
        ", ".join(fixes),
    )


# ---------------------------------------------------------------------------
# COCO detection data set (fine-tuning and evaluation)
# ---------------------------------------------------------------------------

_REQUIRED_TOP = ("images", "annotations", "categories")
_REQUIRED_KEYS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}
_SINGULAR = {"images": "image", "annotations": "annotation", "categories": "category"}
BOX_TOLERANCE = 1.0  # pixels a box may stick out of its image (rounding in exporters) before it is an error
EMPTY_BOX = "zero or negative width or height"  # reasons a box is dropped, as the warning states them
THIN_BOX = "under 1 px wide or high after clipping to the image"


def _entry(section: str, index: int, entry: Any) -> str:
    """'annotations[12] (id 57)' — how errors point at an entry."""
    if isinstance(entry, dict) and "id" in entry:
        return f"{section}[{index}] (id {entry['id']!r})"
    return f"{section}[{index}]"


def _format_ids(ids: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def _load_coco_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(
            f"annotation file {path} does not exist; point the config at a COCO instances JSON, or {SAMPLE_HINT}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 text file ({exc}); expected a COCO instances JSON") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from exc
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: expected a JSON object with keys images, annotations, categories; got {type(data).__name__}"
        )
    for key in _REQUIRED_TOP:
        if key not in data:
            raise DatasetError(
                f"{path}: missing top-level key '{key}' (a COCO instances file has images, annotations, categories)"
            )
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    for section, keys in _REQUIRED_KEYS.items():
        for index, entry in enumerate(data[section]):
            if not isinstance(entry, dict):
                raise DatasetError(f"{path}: {section}[{index}] must be an object, got {type(entry).__name__}")
            for key in keys:
                if key not in entry:
                    raise DatasetError(
                        f"{path}: {_entry(section, index, entry)}: missing key '{key}' (required: {', '.join(keys)})"
                    )
            if not is_int(entry["id"]):
                raise DatasetError(
                    f"{path}: {_entry(section, index, entry)}: id must be an integer, got {entry['id']!r}"
                )
    return data


def _validate_and_clean(
    path: Path, images_dir: Path, data: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Check a parsed COCO dict; return a cleaned copy and the ids of the boxes dropped, by reason.

    Cleaning: boxes inside the tolerance are clipped to the image; degenerate boxes are dropped
    (a zero or negative width or height wherever the box lies, or under 1 px once clipped); a
    missing ``area`` becomes the box area and a missing ``iscrowd`` becomes 0.
    """
    seen: dict[str, dict[int, int]] = {section: {} for section in _REQUIRED_TOP}
    for section in _REQUIRED_TOP:
        for index, entry in enumerate(data[section]):
            first = seen[section].setdefault(entry["id"], index)
            if first != index:
                raise DatasetError(
                    f"{path}: {_entry(section, index, entry)}: duplicate {_SINGULAR[section]} id {entry['id']} "
                    f"(first used by {section}[{first}])"
                )

    categories = []
    for index, cat in enumerate(data["categories"]):
        if not isinstance(cat["name"], str) or not cat["name"]:
            raise DatasetError(
                f"{path}: {_entry('categories', index, cat)}: name must be a non-empty string, got {cat['name']!r}"
            )
        categories.append({"id": cat["id"], "name": cat["name"], "supercategory": cat.get("supercategory", "none")})

    images: dict[int, dict[str, Any]] = {}
    for index, img in enumerate(data["images"]):
        where = _entry("images", index, img)
        for key in ("width", "height"):
            if not is_int(img[key]) or img[key] <= 0:
                raise DatasetError(f"{path}: {where}: {key} must be a positive integer, got {img[key]!r}")
        name = img["file_name"]
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{path}: {where}: file_name must be a non-empty string, got {name!r}")
        if not (images_dir / name).is_file():
            raise DatasetError(
                f"{path}: {where}: image file {name!r} not found in {images_dir}; check the images folder "
                f"that goes with this annotation file"
            )
        images[img["id"]] = dict(img)

    cat_ids = sorted(seen["categories"])
    annotations = []
    dropped: dict[str, list[int]] = {EMPTY_BOX: [], THIN_BOX: []}
    for index, ann in enumerate(data["annotations"]):
        where = _entry("annotations", index, ann)
        if not is_int(ann["image_id"]) or ann["image_id"] not in images:
            raise DatasetError(f"{path}: {where}: image_id {ann['image_id']!r} is not in images")
        if not is_int(ann["category_id"]) or ann["category_id"] not in seen["categories"]:
            raise DatasetError(
                f"{path}: {where}: category_id {ann['category_id']!r} is not in categories "
                f"(valid: {_format_ids(cat_ids)})"
            )
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
            raise DatasetError(f"{path}: {where}: bbox must be 4 finite numbers [x, y, width, height], got {bbox!r}")
        img = images[ann["image_id"]]
        x, y, w, h = (float(v) for v in bbox)
        width, height = img["width"], img["height"]
        if "area" in ann and not is_number(ann["area"]):
            raise DatasetError(f"{path}: {where}: area must be a finite number, got {ann['area']!r}")
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
            raise DatasetError(f"{path}: {where}: iscrowd must be 0 or 1, got {iscrowd!r}")
        if w <= 0 or h <= 0:
            # No box at all, wherever it lies (an exporter's sign or corner-format slip): dropped
            # and named in the warning, neither trained on nor judged on its extent.
            dropped[EMPTY_BOX].append(ann["id"])
            continue
        # Only a box that lies outside by more than the tolerance is an error.
        x0, y0, x1, y1 = x, y, x + w, y + h
        if x0 < -BOX_TOLERANCE or y0 < -BOX_TOLERANCE or x1 > width + BOX_TOLERANCE or y1 > height + BOX_TOLERANCE:
            raise DatasetError(
                f"{path}: {where}: bbox {bbox} lies outside image {img['id']} ({width}x{height}) by more than "
                f"{BOX_TOLERANCE:g} px; bbox is [x, y, width, height] in pixels"
            )
        cx0, cy0 = max(x, 0.0), max(y, 0.0)
        cx1, cy1 = min(x + w, float(width)), min(y + h, float(height))
        if cx1 - cx0 < 1.0 or cy1 - cy0 < 1.0:
            dropped[THIN_BOX].append(ann["id"])
            continue
        clean = dict(ann)
        clean["bbox"] = [cx0, cy0, cx1 - cx0, cy1 - cy0]
        clean["area"] = float(ann["area"]) if "area" in ann else (cx1 - cx0) * (cy1 - cy0)
        clean["iscrowd"] = int(iscrowd)
        annotations.append(clean)

    cleaned = {
        "info": data.get("info", {}),
        "licenses": data.get("licenses", []),
        "images": list(images.values()),
        "annotations": annotations,
        "categories": categories,
    }
    return cleaned, dropped


class CocoDetection(Dataset):
    """A COCO instances data set for torchvision's detection models.

    The annotation file is validated on load (see ``DatasetError`` messages); boxes within
    ``BOX_TOLERANCE`` of the image are clipped, degenerate ones (a zero or negative width or
    height, or under 1 px wide or high after clipping) are dropped with one warning that counts
    them and names their annotation ids. Crowd annotations (``iscrowd=1``) stay in
    ``coco`` for evaluation, where COCOeval treats them as ignore regions, but are left out of
    the training targets — the same choice as torchvision's detection references.

    Args:
        images_dir: folder that ``file_name`` entries are relative to.
        annotation_file: the COCO instances JSON.
        train: apply a random horizontal flip (p=0.5, drawn from torch's RNG: reproducible with
            ``workers=0`` only). The detection trainer loads with ``train=False`` and flips with
            :mod:`trainers.detection.augment`, whose draws depend on the seed and epoch alone.

    Attributes:
        coco: pycocotools ``COCO`` built from the cleaned annotations (for ``COCOeval``).
        label_to_cat_id / cat_id_to_label: contiguous labels 1..C <-> COCO category ids.
        class_names: category names, index = label - 1.
        num_classes: C, not counting background.
        num_dropped / dropped_ids: how many degenerate boxes were dropped; their annotation ids by reason.
        image_ids: COCO image ids in dataset order (sorted).
        path: the annotation file.
    """

    def __init__(self, images_dir: str | Path, annotation_file: str | Path, train: bool = False) -> None:
        from pycocotools.coco import COCO

        self.images_dir = Path(images_dir)
        self.path = Path(annotation_file)
        self.train = train
        if not self.images_dir.is_dir():
            raise DatasetError(
                f"image folder {self.images_dir} (for {self.path}) does not exist or is not a folder; {SAMPLE_HINT}"
            )
        cleaned, dropped = _validate_and_clean(self.path, self.images_dir, _load_coco_json(self.path))
        degenerate = sum(len(ids) for ids in dropped.values())
        if degenerate:
            reasons = "; ".join(
                f"{reason}: annotation id{'' if len(ids) == 1 else 's'} {_format_ids(ids)}"
                for reason, ids in dropped.items()
                if ids
            )
            logger.warning(
                "dropped %d degenerate box%s from %s (%s); fix or delete these annotations",
                degenerate,
                "" if degenerate == 1 else "es",
                self.path,
                reasons,
            )
        self.num_dropped = degenerate
        self.dropped_ids: dict[str, list[int]] = dropped  # annotation ids of the dropped boxes, by reason

        self.coco = COCO()
        self.coco.dataset = cleaned
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
            self.coco.createIndex()

        cat_ids = sorted(c["id"] for c in cleaned["categories"])
        self.label_to_cat_id: dict[int, int] = {label: cat for label, cat in enumerate(cat_ids, start=1)}
        self.cat_id_to_label: dict[int, int] = {cat: label for label, cat in self.label_to_cat_id.items()}
        names = {c["id"]: c["name"] for c in cleaned["categories"]}
        self.class_names: list[str] = [names[cat] for cat in cat_ids]
        self.num_classes = len(cat_ids)
        self.image_ids: list[int] = sorted(self.coco.imgs)

        # Targets are small: build them once instead of per __getitem__.
        self._targets: list[dict[str, Any]] = []
        for image_id in self.image_ids:
            anns = [a for a in self.coco.imgToAnns.get(image_id, []) if a["iscrowd"] == 0]
            boxes = torch.tensor(
                [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
                dtype=torch.float32,
            ).reshape(-1, 4)
            self._targets.append(
                {
                    "boxes": boxes,
                    "labels": torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
                    "image_id": int(image_id),
                    "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32),
                    "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
                }
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """The image (uint8 3xHxW RGB) and its target (boxes xyxy in pixels, contiguous labels)."""
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        file = self.images_dir / info["file_name"]
        try:
            image = decode_rgb(file)
        except Exception as exc:  # noqa: BLE001 - a labeled image that cannot be read is a data error
            raise DatasetError(f"{self.path}: image {image_id} ({file}) cannot be decoded: {exc}") from exc
        if tuple(image.shape[1:]) != (info["height"], info["width"]):
            raise DatasetError(
                f"{self.path}: image {image_id} ({file}) is {image.shape[2]}x{image.shape[1]} but the annotation "
                f"says {info['width']}x{info['height']}; the boxes would be misplaced"
            )
        stored = self._targets[index]
        target = {key: (value.clone() if isinstance(value, torch.Tensor) else value) for key, value in stored.items()}
        if self.train and torch.rand(()) < 0.5:
            image, target["boxes"] = hflip(image, target["boxes"])
        return image, target


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip a CxHxW image and its xyxy boxes left-right."""
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return image.flip(-1), flipped


def detection_collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Collate for ``CocoDetection``: images differ in size and box counts, so keep lists."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


# ---------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------


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
            for file in sorted(files, key=lambda p: p.relative_to(path).as_posix()):
                add_file(file, file.relative_to(path).as_posix())
        elif path.is_file():
            add_file(path, path.name)
        else:
            raise DatasetError(f"cannot fingerprint {path}: no such file or folder")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------
# Sample-data generator
# ---------------------------------------------------------------------------

SAMPLE_VERSION = 1  # bump when the generator's output changes, so old sample folders are regenerated
IMAGE_SIZE = 256  # >= 256 px so all three COCO area ranges (small < 32^2 < medium < 96^2 < large) fit
JPEG_QUALITY = 90
PNG_EVERY = 8  # every 8th unlabeled image is a PNG, so both decoders are exercised
UNLABELED_PER_FOLDER = 32  # unlabeled images go into part_NN/ subfolders to exercise the recursive search

# Non-contiguous ids on purpose: code that assumes ids 1..C breaks on this sample, not on user data.
SAMPLE_CATEGORIES = ({"id": 1, "name": "disc"}, {"id": 3, "name": "square"}, {"id": 7, "name": "triangle"})
SAMPLE_SIZES: dict[str, dict[str, int]] = {
    "small": {"train": 8, "val": 4, "unlabeled": 128},  # fast tests
    "medium": {"train": 32, "val": 12, "unlabeled": 480},  # the demo
}
# Object-area targets per COCO range, kept well clear of the 32^2 and 96^2 boundaries so pixel
# rounding never moves an object into a neighbouring range.
AREA_RANGES = {"small": (120.0, 800.0), "medium": (1400.0, 7000.0), "large": (9800.0, 14000.0)}
TRIANGLE_ASPECT = 0.87  # height / base, about equilateral
MAX_OBJECTS = 6


@dataclass(frozen=True)
class SamplePaths:
    """Where ``generate_sample`` put each part of the sample data set."""

    root: Path
    unlabeled: Path
    train_images: Path
    train_annotations: Path
    val_images: Path
    val_annotations: Path


def _sample_paths(root: Path) -> SamplePaths:
    return SamplePaths(
        root=root,
        unlabeled=root / "unlabeled",
        train_images=root / "train",
        train_annotations=root / "annotations" / "train.json",
        val_images=root / "val",
        val_annotations=root / "annotations" / "val.json",
    )


@dataclass
class _Object:
    category: int  # COCO category id
    area_range: str
    x: int = 0
    y: int = 0
    w: int = 0
    h: int = 0
    inverted: bool = False  # triangles only: apex down


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


def _polygon(obj: _Object) -> list[float]:
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


def _place(rng: np.random.Generator, obj: _Object, placed: list[_Object]) -> bool:
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


def _plan_objects(rng: np.random.Generator, forced: list[tuple[int, str]]) -> list[_Object]:
    """Objects for one image: the forced (category, range) pairs plus random extras, placed."""
    count = max(len(forced), int(rng.integers(1, MAX_OBJECTS + 1)))
    objects = [_Object(cat, area_range) for cat, area_range in forced]
    has_large = any(o.area_range == "large" for o in objects)
    for _ in range(count - len(forced)):
        area_range = str(rng.choice(["small", "medium", "large"], p=[0.4, 0.4, 0.2]))
        if area_range == "large" and has_large:
            area_range = "medium"  # two large objects rarely fit in 256 px next to each other
        has_large |= area_range == "large"
        objects.append(_Object(int(rng.choice([c["id"] for c in SAMPLE_CATEGORIES])), area_range))
    for obj in objects:
        obj.w, obj.h = _object_size(rng, obj.category, obj.area_range)
        obj.inverted = obj.category == 7 and bool(rng.random() < 0.5)
    # Forced objects first, largest first, so the guaranteed ones find room; a big object placed
    # in the middle can still leave no room for the next, so the forced layout is retried.
    n_forced = len(forced)
    required = sorted(objects[:n_forced], key=lambda o: -o.w * o.h)
    for _attempt in range(50):
        placed: list[_Object] = []
        for obj in required:
            if not _place(rng, obj, placed):
                break
            placed.append(obj)
        else:
            break
    else:
        raise RuntimeError(f"sample generator could not fit the required objects {forced} in one image")
    for obj in sorted(objects[n_forced:], key=lambda o: -o.w * o.h):
        if _place(rng, obj, placed):  # extras that do not fit are left out
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


def _render_object(rng: np.random.Generator, canvas: Image.Image, obj: _Object) -> None:
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


def _render_image(rng: np.random.Generator, objects: list[_Object]) -> np.ndarray:
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
            low, high = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, math.inf)}[obj.area_range]
            if not low <= area < high:  # a generator invariant the tests and demo rely on
                raise RuntimeError(f"sample object area {area} is outside its {obj.area_range} range")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.category,
                    "bbox": [obj.x, obj.y, obj.w, obj.h],
                    "area": area,
                    "iscrowd": 0,
                    "segmentation": [polygon],
                }
            )
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


def _manifest(seed: int, size: str) -> dict[str, Any]:
    counts = SAMPLE_SIZES[size]
    return {
        "format": "ablate-sample",
        "version": SAMPLE_VERSION,
        "seed": seed,
        "size": size,
        "image_size": IMAGE_SIZE,
        "counts": dict(counts),
    }


def _is_complete(paths: SamplePaths, manifest: dict[str, Any]) -> bool:
    file = paths.root / "sample.json"
    try:
        if json.loads(file.read_text()) != manifest:
            return False
    except (OSError, ValueError):
        return False
    counts = manifest["counts"]
    return (
        paths.train_annotations.is_file()
        and paths.val_annotations.is_file()
        and len(find_images(paths.unlabeled)) == counts["unlabeled"]
        and len(find_images(paths.train_images)) == counts["train"]
        and len(find_images(paths.val_images)) == counts["val"]
    )


def _written_by_generator(root: Path) -> bool:
    try:
        return json.loads((root / "sample.json").read_text()).get("format") == "ablate-sample"
    except (OSError, ValueError, AttributeError):
        return False


def generate_sample(out: str | Path, seed: int = 0, size: str = "small") -> SamplePaths:
    """Write a small, deterministic sample data set in the formats the trainers read.

    Layout under ``out``: ``unlabeled/part_NN/*.jpg|png`` (no labels), ``train/``, ``val/``,
    ``annotations/train.json``, ``annotations/val.json`` (COCO instances, categories
    disc=1, square=3, triangle=7) and ``sample.json`` (seed, size, counts, version).
    Each labeled split holds every category in every COCO area range. Same seed and size
    give byte-identical files; if ``out`` already holds that complete set, nothing is rewritten.

    Args:
        out: target folder (created if missing; other files in it are left alone).
        seed: generator seed (a non-negative integer).
        size: "small" (8 train, 4 val, 128 unlabeled; for tests) or "medium" (32/12/480; for the demo).

    Raises:
        ValueError: bad ``seed`` or ``size``.
        DatasetError: ``out`` holds folders of the same names that a previous run did not write.
    """
    require_choice("size", size, list(SAMPLE_SIZES))
    require_int("seed", seed, 0, "a non-negative integer")
    root = Path(out)
    paths = _sample_paths(root)
    manifest = _manifest(seed, size)
    if _is_complete(paths, manifest):
        return paths

    ours = ("unlabeled", "train", "val", "annotations")
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
        counts = SAMPLE_SIZES[size]
        (staging / "annotations").mkdir()
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
            (staging / name).rename(target)
        (root / "sample.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def decode_base64_image(value: Any, row: int = 0) -> torch.Tensor:
    """A base64-encoded PNG/JPEG (the served models' input) as a uint8 3xHxW RGB tensor.

    Raises:
        ValueError: naming the row when the value is not base64 text of an image.
    """
    import base64
    import binascii

    if not isinstance(value, str):
        raise ValueError(f"image row {row}: expected base64 text of a PNG/JPEG file, got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (binascii.Error, UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image row {row}: not base64 of a PNG/JPEG file ({exc})") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
