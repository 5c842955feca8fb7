"""The COCO detection data set for fine-tuning and evaluation: the instances JSON validated and
cleaned on load, targets for torchvision's detection models, the horizontal flip and the collate.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from trainers.common.validation import is_int, is_number
from trainers.data.errors import SAMPLE_HINT, DatasetError
from trainers.data.images import decode_rgb

logger = logging.getLogger(__name__)

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
