"""Tests for trainers.data.samples: the sample generator's layout, determinism, COCO content and argument checks."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.trainers.data.helpers import AREA_RANGES, area_range, load_json, tree_hashes
from trainers.data import DatasetError, UnlabeledImages
from trainers.data.samples import SamplePaths, generate_sample

# ---------------------------------------------------------------------------
# Sample generator
# ---------------------------------------------------------------------------


def test_sample_is_deterministic_per_seed(sample_data: SamplePaths, tmp_path: Path) -> None:
    again = generate_sample(tmp_path / "same", seed=0, size="small")
    other = generate_sample(tmp_path / "other", seed=1, size="small")
    reference = tree_hashes(sample_data.root)
    assert tree_hashes(again.root) == reference
    differing = tree_hashes(other.root)
    assert differing.keys() - {"sample.json"} == reference.keys() - {"sample.json"}
    # A different seed changes the pixels and the annotations, not just the manifest.
    assert differing["annotations/train.json"] != reference["annotations/train.json"]
    assert differing["train/000001.jpg"] != reference["train/000001.jpg"]


def test_sample_layout_and_paths(sample_data: SamplePaths) -> None:
    root = sample_data.root
    assert sample_data.unlabeled == root / "unlabeled"
    assert sample_data.train_images == root / "train"
    assert sample_data.val_images == root / "val"
    assert sample_data.train_annotations == root / "annotations" / "train.json"
    assert sample_data.val_annotations == root / "annotations" / "val.json"
    manifest = load_json(root / "sample.json")
    assert (manifest["seed"], manifest["size"]) == (0, "small")
    # Unlabeled images live in subfolders (so readers must search recursively), in both formats.
    assert not list(sample_data.unlabeled.glob("*.jpg"))
    assert len([p for p in sample_data.unlabeled.iterdir() if p.is_dir()]) > 1
    suffixes = {p.suffix for p in sample_data.unlabeled.rglob("*") if p.is_file()}
    assert suffixes == {".jpg", ".png"}


def test_sample_counts_and_unlabeled_ratio(sample_data: SamplePaths) -> None:
    counts = load_json(sample_data.root / "sample.json")["counts"]
    n_train = len(load_json(sample_data.train_annotations)["images"])
    n_val = len(load_json(sample_data.val_annotations)["images"])
    n_unlabeled = len(UnlabeledImages(sample_data.unlabeled))
    assert (n_train, n_val, n_unlabeled) == (counts["train"], counts["val"], counts["unlabeled"])
    assert len(list(sample_data.train_images.iterdir())) == n_train
    assert len(list(sample_data.val_images.iterdir())) == n_val
    assert n_unlabeled >= 10 * (n_train + n_val)
    assert 4 <= n_train <= 16 and 2 <= n_val <= 8


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_split_has_all_categories_in_all_area_ranges(sample_data: SamplePaths, split: str) -> None:
    data = load_json(getattr(sample_data, f"{split}_annotations"))
    cat_ids = sorted(c["id"] for c in data["categories"])
    assert len(cat_ids) >= 3
    assert cat_ids != list(range(1, len(cat_ids) + 1)), "category ids should be non-contiguous"
    seen = {(a["category_id"], area_range(a["area"])) for a in data["annotations"]}
    assert seen == {(c, r) for c in cat_ids for r in AREA_RANGES}
    per_image: dict[int, int] = {}
    for ann in data["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
        assert ann["iscrowd"] == 0
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 256 and y + h <= 256
        # The area is the outline's area, never larger than its box.
        assert 0 < ann["area"] <= w * h
    assert all(1 <= n <= 6 for n in per_image.values())
    # Objects never overlap, so each area field is the visible object's area.
    for image_id in per_image:
        boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == image_id]
        for i, (x, y, w, h) in enumerate(boxes):
            for ox, oy, ow, oh in boxes[i + 1 :]:
                assert x + w <= ox or ox + ow <= x or y + h <= oy or oy + oh <= y
    assert all((img["width"], img["height"]) == (256, 256) for img in data["images"])


def test_sample_coco_evaluates_with_pycocotools(sample_data: SamplePaths) -> None:
    """The file loads with pycocotools itself; ground truth scored as detections gives AP 1 in every range."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(sample_data.val_annotations))
        dets = [
            {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt.dataset["annotations"]
        ]
        evaluator = COCOeval(gt, gt.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50, _, ap_small, ap_medium, ap_large = evaluator.stats[:6]
    assert ap50 == pytest.approx(1.0) and ap == pytest.approx(1.0)
    # -1 would mean "no ground truth in this range".
    assert ap_small == pytest.approx(1.0) and ap_medium == pytest.approx(1.0) and ap_large == pytest.approx(1.0)


def test_sample_is_idempotent_and_regenerates_on_change(sample_data: SamplePaths, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in sample_data.root.rglob("*") if p.is_file()}
    assert generate_sample(sample_data.root, seed=0, size="small") == sample_data
    assert {p: p.stat().st_mtime_ns for p in sample_data.root.rglob("*") if p.is_file()} == before

    out = tmp_path / "out"
    generate_sample(out, seed=0, size="small")
    (out / "notes.txt").write_text("user file")
    generate_sample(out, seed=1, size="small")  # another seed replaces the set, nothing stale stays
    expected = tree_hashes(generate_sample(tmp_path / "fresh", seed=1, size="small").root)
    assert tree_hashes(out) == {**expected, "notes.txt": hashlib.sha256(b"user file").hexdigest()}

    # An incomplete set (a file went missing) is rebuilt.
    victim = next((out / "unlabeled").rglob("*.jpg"))
    victim.unlink()
    generate_sample(out, seed=1, size="small")
    assert victim.is_file()
    assert not list(out.glob(".sample-staging-*"))


def test_sample_refuses_to_overwrite_foreign_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    keep = tmp_path / "train" / "mine.jpg"
    keep.write_bytes(b"precious")
    with pytest.raises(DatasetError, match="train"):
        generate_sample(tmp_path, seed=0, size="small")
    assert keep.read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"size": "huge"}, "size"), ({"size": "Small"}, "size"), ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed")],
)
def test_sample_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError) as info:
        generate_sample(tmp_path / "x", **kwargs)
    message = str(info.value)
    assert message.startswith(f"{field}=")
    if field == "size":
        assert "small" in message and "medium" in message
    assert not (tmp_path / "x").exists()


def test_sample_rejects_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^kind='digit' is invalid.*did you mean 'digits'"):
        generate_sample(tmp_path / "x", kind="digit")
    assert not (tmp_path / "x").exists()
