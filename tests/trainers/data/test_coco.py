"""Tests for trainers.data.coco: validation of a COCO instances file, dropped boxes, targets, the flip and the
collate."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from tests.trainers.data.helpers import load_json
from trainers.data import DatasetError, SamplePaths
from trainers.data.coco import CocoDetection, detection_collate

# ---------------------------------------------------------------------------
# CocoDetection: validation
# ---------------------------------------------------------------------------


def _drop_top(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.pop(key)


def _drop_key(section: str, index: int, key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d[section][index].pop(key)


def _set(section: str, index: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d[section][index].__setitem__(key, value)


def _outside(d: dict[str, Any]) -> None:
    d["annotations"][1]["bbox"] = [200, 10, 60, 20]  # reaches x = 260 in a 256-wide image


BROKEN = [
    pytest.param(_drop_top("categories"), "missing top-level key 'categories'", id="missing-top-key"),
    pytest.param(
        _drop_key("annotations", 2, "bbox"), "annotations[2] (id 3): missing key 'bbox'", id="missing-entry-key"
    ),
    pytest.param(
        _drop_key("images", 1, "file_name"), "images[1] (id 2): missing key 'file_name'", id="missing-image-key"
    ),
    pytest.param(
        _set("images", 2, "id", 1), "images[2] (id 1): duplicate image id 1 (first used by images[0])", id="dup-image"
    ),
    pytest.param(
        _set("annotations", 3, "id", 1), "annotations[3] (id 1): duplicate annotation id 1", id="dup-annotation"
    ),
    pytest.param(_set("categories", 1, "id", 1), "categories[1] (id 1): duplicate category id 1", id="dup-category"),
    pytest.param(
        _set("annotations", 4, "category_id", 9),
        "annotations[4] (id 5): category_id 9 is not in categories (valid: 1, 3, 7)",
        id="unknown-category",
    ),
    pytest.param(
        _set("annotations", 0, "image_id", 99), "annotations[0] (id 1): image_id 99 is not in images", id="unknown-img"
    ),
    pytest.param(_outside, "annotations[1] (id 2): bbox [200, 10, 60, 20] lies outside image", id="box-outside"),
    pytest.param(
        _set("annotations", 2, "bbox", [1, 2, 3]), "annotations[2] (id 3): bbox must be 4 finite numbers", id="bbox-3"
    ),
    pytest.param(
        _set("annotations", 2, "bbox", [1, 2, "3", 4]), "annotations[2] (id 3): bbox must be 4", id="bbox-str"
    ),
    pytest.param(
        _set("images", 0, "file_name", "nope.jpg"), "images[0] (id 1): image file 'nope.jpg' not found", id="no-file"
    ),
    pytest.param(
        _set("images", 0, "width", "256"), "images[0] (id 1): width must be a positive integer", id="bad-width"
    ),
    pytest.param(_set("annotations", 0, "id", "a1"), "annotations[0] (id 'a1'): id must be an integer", id="str-id"),
]


@pytest.mark.parametrize(("mutate", "expected"), BROKEN)
def test_coco_validation_names_file_and_entry(
    sample_data: SamplePaths, tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    data = load_json(sample_data.val_annotations)
    assert len(data["annotations"]) >= 5
    mutate(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as info:
        CocoDetection(sample_data.val_images, bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: ")
    assert expected in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"images": [', "not valid JSON (line 1"),
        ("[1, 2]", "expected a JSON object"),
        ('{"images": {}}', "'images' must be a list"),
    ],
)
def test_coco_rejects_invalid_json(sample_data: SamplePaths, tmp_path: Path, text: str, expected: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(DatasetError) as info:
        CocoDetection(sample_data.val_images, bad)
    assert str(info.value).startswith(f"{bad}: ") and expected in str(info.value)


def test_coco_missing_annotation_file_or_folder(sample_data: SamplePaths, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="ablate data sample"):
        CocoDetection(sample_data.val_images, tmp_path / "none.json")
    with pytest.raises(DatasetError, match=str(tmp_path / "no_images")):
        CocoDetection(tmp_path / "no_images", sample_data.val_annotations)


def test_coco_degenerate_boxes_dropped_with_one_counted_warning(
    sample_data: SamplePaths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = load_json(sample_data.val_annotations)
    n_valid = len(data["annotations"])
    # Zero width, half a pixel high, inside the 1 px tolerance but under 1 px once clipped, negative width.
    extra = [[10, 10, 0, 5], [10, 10, 5, 0.5], [255.5, 20, 0.9, 30], [30, 30, -4, 8]]
    for i, box in enumerate(extra):
        data["annotations"].append(
            {"id": 1000 + i, "image_id": 1, "category_id": 3, "bbox": box, "area": 1.0, "iscrowd": 0}
        )
    # Within the 1 px tolerance: kept, clipped to the image.
    data["annotations"].append(
        {"id": 5000, "image_id": 2, "category_id": 7, "bbox": [-0.6, 250, 20.6, 6.8], "area": 99.0, "iscrowd": 0}
    )
    path = tmp_path / "degenerate.json"
    path.write_text(json.dumps(data))

    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        dataset = CocoDetection(sample_data.val_images, path)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"dropped 4 degenerate boxes from {path}" in warnings[0].getMessage()
    # Each dropped box is named by its annotation id, under its reason.
    assert "zero or negative width or height: annotation ids 1000, 1003" in warnings[0].getMessage()
    assert "under 1 px wide or high after clipping to the image: annotation ids 1001, 1002" in warnings[0].getMessage()
    assert dataset.dropped_ids == {"zero or negative width or height": [1000, 1003],
                                   "under 1 px wide or high after clipping to the image": [1001, 1002]}
    assert len(dataset.coco.dataset["annotations"]) == n_valid + 1
    assert sum(len(dataset[i][1]["boxes"]) for i in range(len(dataset))) == n_valid + 1
    clipped = dataset.coco.anns[5000]["bbox"]
    assert clipped == pytest.approx([0.0, 250.0, 20.0, 6.0])
    assert dataset.coco.anns[5000]["area"] == 99.0  # the file's area is kept, not recomputed


@pytest.mark.parametrize(
    "bbox",
    [
        pytest.param([30, 30, -40, 8], id="negative-width-reaching-left-of-the-image"),
        pytest.param([30, 250, 8, -300], id="negative-height-spanning-the-image"),
        pytest.param([300, 30, 0, 8], id="zero-width-right-of-the-image"),
        pytest.param([20, 20, -5, -5], id="both-negative-inside"),
    ],
)
def test_coco_box_with_negative_or_zero_size_is_dropped_naming_its_id(
    sample_data: SamplePaths, tmp_path: Path, caplog: pytest.LogCaptureFixture, bbox: list[float]
) -> None:
    """Such a box is no box, wherever its corners lie: dropped with its id named, never trained on nor an error."""
    data = load_json(sample_data.val_annotations)
    n_valid = len(data["annotations"])
    data["annotations"].append({"id": 4242, "image_id": 1, "category_id": 3, "bbox": bbox, "iscrowd": 0})
    path = tmp_path / "negative.json"
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        dataset = CocoDetection(sample_data.val_images, path)
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage() == (f"dropped 1 degenerate box from {path} (zero or negative width or height: "
                                   f"annotation id 4242); fix or delete these annotations")
    assert 4242 not in dataset.coco.anns and len(dataset.coco.anns) == n_valid
    assert dataset.num_dropped == 1 and all(a["bbox"][2] >= 1 and a["bbox"][3] >= 1 for a in dataset.coco.anns.values())


# ---------------------------------------------------------------------------
# CocoDetection: targets
# ---------------------------------------------------------------------------


def test_coco_targets_have_contiguous_labels_for_non_contiguous_ids(sample_data: SamplePaths) -> None:
    dataset = CocoDetection(sample_data.train_images, sample_data.train_annotations)
    raw = load_json(sample_data.train_annotations)
    assert dataset.num_classes == 3
    assert dataset.label_to_cat_id == {1: 1, 2: 3, 3: 7}
    assert dataset.cat_id_to_label == {1: 1, 3: 2, 7: 3}
    assert dataset.class_names == ["disc", "square", "triangle"]
    assert dataset.image_ids == sorted(img["id"] for img in raw["images"])
    assert dataset.path == sample_data.train_annotations
    labels_seen: set[int] = set()
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.dtype == torch.uint8 and image.shape == (3, 256, 256)
        image_id = dataset.image_ids[index]
        assert target["image_id"] == image_id
        anns = [a for a in raw["annotations"] if a["image_id"] == image_id]
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (len(anns), 4)
        assert target["labels"].dtype == torch.int64 and target["area"].dtype == torch.float32
        assert target["iscrowd"].dtype == torch.int64
        expected_boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        assert torch.equal(target["boxes"], expected_boxes)
        assert [dataset.label_to_cat_id[int(label)] for label in target["labels"]] == [a["category_id"] for a in anns]
        assert target["area"].tolist() == pytest.approx([a["area"] for a in anns])
        labels_seen.update(int(label) for label in target["labels"])
    assert labels_seen == {1, 2, 3}


def test_coco_image_without_annotations_and_crowd(sample_data: SamplePaths, tmp_path: Path) -> None:
    data = load_json(sample_data.val_annotations)
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1]
    crowd = copy.deepcopy(next(a for a in data["annotations"] if a["image_id"] == 2))
    crowd.update(id=9999, iscrowd=1)
    data["annotations"].append(crowd)
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(data))
    dataset = CocoDetection(sample_data.val_images, path)
    _, target = dataset[dataset.image_ids.index(1)]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["area"].shape == (0,) and target["iscrowd"].shape == (0,)
    # Crowd regions are for COCOeval (ignore regions), not training targets.
    assert dataset.coco.anns[9999]["iscrowd"] == 1
    _, target2 = dataset[dataset.image_ids.index(2)]
    assert len(target2["boxes"]) == len([a for a in data["annotations"] if a["image_id"] == 2]) - 1


def test_coco_train_flip_moves_boxes_with_pixels(sample_data: SamplePaths) -> None:
    plain = CocoDetection(sample_data.train_images, sample_data.train_annotations)
    augmented = CocoDetection(sample_data.train_images, sample_data.train_annotations, train=True)
    width = 256
    base_image, base_target = plain[0]
    flipped_count = 0
    torch.manual_seed(123)
    draws = []
    for _ in range(16):
        image, target = augmented[0]
        if torch.equal(image, base_image):
            assert torch.equal(target["boxes"], base_target["boxes"])
            draws.append(False)
            continue
        flipped_count += 1
        draws.append(True)
        assert torch.equal(image, base_image.flip(-1))
        b = base_target["boxes"]
        expected = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
        assert torch.equal(target["boxes"], expected)
        assert torch.all(target["boxes"][:, 2] > target["boxes"][:, 0])
        # The pixels inside each flipped box are the object's pixels, mirrored.
        x0, y0, x1, y1 = (int(v) for v in target["boxes"][0])
        bx0, by0, bx1, by1 = (int(v) for v in b[0])
        assert torch.equal(image[:, y0:y1, x0:x1], base_image[:, by0:by1, bx0:bx1].flip(-1))
        assert torch.equal(target["labels"], base_target["labels"])
    assert 0 < flipped_count < 16
    # The stored targets are never modified in place by a flip.
    assert torch.equal(plain[0][1]["boxes"], base_target["boxes"])
    torch.manual_seed(123)
    assert [not torch.equal(augmented[0][0], base_image) for _ in range(16)] == draws


def test_coco_image_size_mismatch_is_reported(sample_data: SamplePaths, tmp_path: Path) -> None:
    data = load_json(sample_data.val_annotations)
    data["images"][0]["width"] = 300
    path = tmp_path / "wrong_size.json"
    path.write_text(json.dumps(data))
    dataset = CocoDetection(sample_data.val_images, path)
    with pytest.raises(DatasetError, match="is 256x256 but the annotation says 300x256"):
        dataset[0]


def test_detection_collate_keeps_lists(sample_data: SamplePaths) -> None:
    dataset = CocoDetection(sample_data.val_images, sample_data.val_annotations)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=detection_collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list)
    assert len(images) == len(targets) == 3
    assert [t["image_id"] for t in targets] == dataset.image_ids[:3]
