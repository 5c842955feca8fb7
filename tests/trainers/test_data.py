"""Tests for trainers.data: the sample generator, the unlabeled folder and the COCO data set."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from trainers.data import (
    TOO_SMALL,
    UNREADABLE,
    CocoDetection,
    DatasetError,
    SamplePaths,
    SkippedImage,
    UnlabeledImages,
    collate_images,
    data_fingerprint,
    describe_skipped,
    detection_collate,
    generate_sample,
    sample_paths,
    warn_skipped,
)

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


# ---------------------------------------------------------------------------
# Sample generator: the digits kind
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> SamplePaths:
    return generate_sample(tmp_path_factory.mktemp("digits"), seed=0, size="small", kind="digits")


@pytest.mark.parametrize("split", ["train", "val"])
def test_digits_split_is_a_coco_set_with_ten_digits_in_all_area_ranges(digits_data: SamplePaths, split: str) -> None:
    annotations = getattr(digits_data, f"{split}_annotations")
    data = load_json(annotations)
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(d + 1, str(d)) for d in range(10)]
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, 11))
    assert {area_range(a["area"]) for a in data["annotations"]} == set(AREA_RANGES)
    per_image = {img["id"]: 0 for img in data["images"]}
    for ann in data["annotations"]:
        per_image[ann["image_id"]] += 1
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 256 and y + h <= 256 and ann["area"] == w * h
    assert min(per_image.values()) >= 2  # several objects per labeled scene
    dataset = CocoDetection(getattr(digits_data, f"{split}_images"), annotations)  # validates the file
    image, target = dataset[0]
    assert image.shape == (3, 256, 256) and len(target["boxes"]) == per_image[data["images"][0]["id"]]
    assert int(target["labels"].max()) <= 10


def test_digits_unlabeled_outnumber_labeled_and_val_digits_are_unseen(digits_data: SamplePaths) -> None:
    from trainers.data.digits import digit_pools

    manifest = load_json(digits_data.root / "sample.json")
    assert manifest["kind"] == "digits"
    counts = manifest["counts"]
    assert len(UnlabeledImages(digits_data.unlabeled)) == counts["unlabeled"] > counts["train"] + counts["val"]
    pools = {split: set(pool.tolist()) for split, pool in digit_pools(0).items()}
    assert not pools["train"] & pools["val"] and not pools["unlabeled"] & (pools["train"] | pools["val"])
    assert sum(map(len, pools.values())) == 1797
    for split in ("train", "val"):
        used = {a["digit_index"] for a in load_json(getattr(digits_data, f"{split}_annotations"))["annotations"]}
        assert used <= pools[split], f"{split} uses digits outside its pool"


def test_digits_monitor_sets_and_object_centric_unlabeled_images(digits_data: SamplePaths, tmp_path: Path) -> None:
    from trainers.data import digits

    pools = {split: set(pool.tolist()) for split, pool in digits.digit_pools(0).items()}
    counts = load_json(digits_data.root / "sample.json")["counts"]
    monitor = digits_data.monitor()
    assert monitor is not None and sample_paths(tmp_path).monitor() is None  # only a set that has them
    # The monitor's objects: one digit per image, the bank from the train pool, the queries from the val pool.
    for images, annotations, pool, count in ((monitor[0], monitor[1], "train", counts["monitor_bank"]),
                                             (monitor[2], monitor[3], "val", counts["monitor_queries"])):
        data = load_json(annotations)
        assert len(data["images"]) == len(data["annotations"]) == count >= 100
        assert {a["digit_index"] for a in data["annotations"]} <= pools[pool]
        assert {a["category_id"] for a in data["annotations"]} == set(range(1, 11))
        CocoDetection(images, annotations)  # a valid COCO set
    # Unlabeled: 64 px images, each centred on a digit of the unlabeled pool that fills 45-70 % of the side.
    for index in (0, 7, 100):
        pixels, objects = digits.object_image(0, "unlabeled", index, digits.digit_pools(0)["unlabeled"])
        assert pixels.shape == (64, 64, 3)
        written = np.asarray(Image.open(digits_data.unlabeled / digits.unlabeled_name(index)).convert("RGB"))
        assert written.shape == pixels.shape
        (source, (x, y, w, h)), *neighbours = objects
        assert source in pools["unlabeled"] and 0.45 * 64 - 1 <= h <= 0.70 * 64 + 1 and 0 <= x and x + w <= 64
        assert len(neighbours) <= 2 and all(s in pools["unlabeled"] for s, _ in neighbours)
    # Fresh backgrounds: no two images share one (their corner patches differ).
    corners = {np.asarray(Image.open(f))[:4, :4].tobytes() for f in sorted(digits_data.unlabeled.rglob("*.png"))}
    assert len(corners) == len(list(digits_data.unlabeled.rglob("*.png")))


def test_digits_unlabeled_writer_is_the_same_with_parallel_workers(tmp_path: Path, monkeypatch) -> None:
    from trainers.data import digits, samples

    pool = digits.digit_pools(0)["unlabeled"]
    digits.write_unlabeled(tmp_path / "serial", 0, 24, pool, samples._save, workers=1, renderings=2)
    monkeypatch.setattr(digits, "PARALLEL_FROM", 8)
    digits.write_unlabeled(tmp_path / "parallel", 0, 24, pool, samples._save, workers=2, renderings=2)
    # 24 images, a second rendering of each, and labels.json
    assert tree_hashes(tmp_path / "serial") == tree_hashes(tmp_path / "parallel") and len(tree_hashes(tmp_path / "serial")) == 49
    with pytest.raises(ValueError, match="size='large' is invalid"):
        generate_sample(tmp_path / "shapes", size="large")  # large is a digits size only


def test_digits_are_deterministic_idempotent_and_fingerprinted(digits_data: SamplePaths, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in digits_data.root.rglob("*") if p.is_file()}
    assert generate_sample(digits_data.root, seed=0, size="small", kind="digits") == digits_data
    assert {p: p.stat().st_mtime_ns for p in digits_data.root.rglob("*") if p.is_file()} == before
    again = generate_sample(tmp_path / "again", seed=0, size="small", kind="digits")
    assert tree_hashes(again.root) == tree_hashes(digits_data.root)
    fingerprint = data_fingerprint(digits_data.unlabeled, digits_data.train_annotations, digits_data.val_annotations)
    assert fingerprint == data_fingerprint(again.unlabeled, again.train_annotations, again.val_annotations)
    # Same folder, other kind: the set is replaced, and the shapes set is the one `kind` left out gives.
    generate_sample(tmp_path / "again", seed=0, size="small", kind="shapes")
    assert tree_hashes(again.root) == tree_hashes(generate_sample(tmp_path / "plain", seed=0, size="small").root)
    assert "kind" not in load_json(again.root / "sample.json")  # shapes manifests are as before digits


def test_sample_rejects_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^kind='digit' is invalid.*did you mean 'digits'"):
        generate_sample(tmp_path / "x", kind="digit")
    assert not (tmp_path / "x").exists()


def test_cli_writes_the_digits_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments import cli

    assert cli.main(["data", "sample", "--kind", "digits", "--out", str(tmp_path / "d")]) == 0
    assert "sample data (digits, small, seed 0)" in capsys.readouterr().out
    assert load_json(tmp_path / "d" / "sample.json")["kind"] == "digits"
    assert len(load_json(tmp_path / "d" / "annotations" / "val.json")["categories"]) == 10


# ---------------------------------------------------------------------------
# UnlabeledImages
# ---------------------------------------------------------------------------


def test_unlabeled_search_is_recursive_sorted_and_case_insensitive(tmp_path: Path) -> None:
    rgb = np.full((12, 10, 3), 200, dtype=np.uint8)
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(rgb).save(tmp_path / "z.JPEG", format="JPEG")
    Image.fromarray(rgb).save(tmp_path / "b" / "deep" / "a.PNG", format="PNG")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "b" / "gray.png")  # grayscale
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "a_rgba.png")  # RGBA
    Image.fromarray(rgb).save(tmp_path / ".hidden" / "skip.jpg", format="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")

    dataset = UnlabeledImages(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p in dataset.paths]
    assert names == ["a_rgba.png", "b/deep/a.PNG", "b/gray.png", "z.JPEG"]
    for i in range(len(dataset)):
        image = dataset[i]
        assert image is not None and image.dtype == torch.uint8 and image.shape == (3, 12, 10)
    assert torch.equal(dataset[1], torch.from_numpy(rgb).permute(2, 0, 1))  # lossless PNG round trip


def test_unlabeled_corrupt_file_is_none_and_counted(
    sample_data: SamplePaths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "imgs"
    shutil.copytree(sample_data.unlabeled / "part_00", folder)
    good = sorted(folder.glob("*.jpg"))[0]
    (folder / "broken.jpg").write_bytes(b"definitely not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:300])

    dataset = UnlabeledImages(folder)
    batch = [dataset[i] for i in range(len(dataset))]
    assert sum(item is None for item in batch) == 3
    images, skipped = collate_images(batch)
    assert len(skipped) == 3 and all(item.reason == UNREADABLE for item in skipped)
    assert len(images) == len(dataset) - 3
    assert all(image.shape == (3, 256, 256) and image.dtype == torch.uint8 for image in images)

    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        warn_skipped(0, folder)
        assert not caplog.records
        warn_skipped(len(skipped), folder)
    assert len(caplog.records) == 1
    assert "3" in caplog.text and str(folder) in caplog.text


def test_unlabeled_images_under_min_size_are_skipped_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 1x1 PNG (or any image with a side under the smallest crop) is skipped like an unreadable file."""
    for name, (height, width) in {"ok.png": (16, 24), "dot.png": (1, 1), "strip.png": (4, 40)}.items():
        Image.fromarray(np.full((height, width, 3), 90, dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")

    assert UnlabeledImages(tmp_path)[1] is not None  # min_size=1 (the default) keeps every readable image
    dataset = UnlabeledImages(tmp_path, min_size=16, mark_skipped=True)
    names = [p.name for p in dataset.paths]
    assert names == ["broken.jpg", "dot.png", "ok.png", "strip.png"]
    images, skipped = collate_images([dataset[i] for i in range(len(dataset))])
    assert [tuple(im.shape) for im in images] == [(3, 16, 24)]
    assert [(item.path.name, item.reason) for item in skipped] == [
        ("broken.jpg", UNREADABLE), ("dot.png", TOO_SMALL), ("strip.png", TOO_SMALL)]
    assert skipped[1].detail == "1x1 px" and skipped[2].detail == "40x4 px"
    assert UnlabeledImages(tmp_path, min_size=16)[1] is None  # without mark_skipped: None, as for unreadable files

    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        warn_skipped(1, tmp_path, too_small=2, examples=skipped, min_size=16)
    (record,) = caplog.records
    message = record.getMessage()
    assert message.startswith(f"skipped 1 unreadable image (corrupt or not an image) and 2 images smaller than "
                              f"the smallest crop (16 px) in {tmp_path}: ")
    assert "broken.jpg (unreadable), dot.png (1x1 px), strip.png (40x4 px)" in message
    assert "lower the crop sizes" in message
    with pytest.raises(ValueError, match="min_size=0 is invalid"):
        UnlabeledImages(tmp_path, min_size=0)


def test_describe_skipped_names_a_few_and_counts_all(tmp_path: Path) -> None:
    skipped = [SkippedImage(tmp_path / "sub" / f"{i}.jpg", UNREADABLE) for i in range(8)]
    text = describe_skipped(skipped, tmp_path, total=30)
    assert text == "sub/0.jpg (unreadable), sub/1.jpg (unreadable), sub/2.jpg (unreadable), " \
                   "sub/3.jpg (unreadable), sub/4.jpg (unreadable), ... (30 in all)"
    assert describe_skipped([SkippedImage(None, UNREADABLE)] * 2, tmp_path) == "2 unnamed"


def test_unlabeled_through_a_dataloader(sample_data: SamplePaths) -> None:
    dataset = UnlabeledImages(sample_data.unlabeled)
    loader = torch.utils.data.DataLoader(dataset, batch_size=40, collate_fn=collate_images)
    total = 0
    for images, skipped in loader:
        assert skipped == ()
        total += len(images)
    assert total == len(dataset)


@pytest.mark.parametrize("case", ["missing", "empty", "only_other_files", "a_file"])
def test_unlabeled_missing_or_empty_folder_names_path_and_fix(tmp_path: Path, case: str) -> None:
    target = tmp_path / "data"
    if case == "empty":
        target.mkdir()
    elif case == "only_other_files":
        (target / "sub").mkdir(parents=True)
        (target / "sub" / "readme.txt").write_text("x")
    elif case == "a_file":
        target.write_text("x")
    with pytest.raises(DatasetError) as info:
        UnlabeledImages(target)
    assert str(target) in str(info.value)
    if case != "a_file":
        assert "ablate data sample --out" in str(info.value)


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


# ---------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------


def test_fingerprint_stable_across_copies_and_sensitive_to_content(sample_data: SamplePaths, tmp_path: Path) -> None:
    fingerprint = data_fingerprint(sample_data.unlabeled, sample_data.train_images, sample_data.train_annotations)
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    # copyfile (not copy2) gives new mtimes: they must not matter.
    copy_root = tmp_path / "copy"
    shutil.copytree(sample_data.root, copy_root, copy_function=shutil.copyfile)
    copied = sample_paths(copy_root)
    assert data_fingerprint(copied.unlabeled, copied.train_images, copied.train_annotations) == fingerprint

    # Same-size edit of a label (category 1 -> 3) changes it.
    text = copied.train_annotations.read_text()
    edited = text.replace('"category_id": 1,', '"category_id": 3,', 1)
    assert edited != text and len(edited) == len(text)
    copied.train_annotations.write_text(edited)
    assert data_fingerprint(copied.unlabeled, copied.train_images, copied.train_annotations) != fingerprint
    copied.train_annotations.write_text(text)
    assert data_fingerprint(copied.unlabeled, copied.train_images, copied.train_annotations) == fingerprint

    # A renamed or an extra image changes it; so does the order of the arguments.
    first = next((copied.unlabeled / "part_00").glob("*.jpg"))
    first.rename(first.with_name("renamed.jpg"))
    assert data_fingerprint(copied.unlabeled, copied.train_images, copied.train_annotations) != fingerprint
    first.with_name("renamed.jpg").rename(first)
    shutil.copyfile(first, copied.train_images / "extra.jpg")
    assert data_fingerprint(copied.unlabeled, copied.train_images, copied.train_annotations) != fingerprint
    (copied.train_images / "extra.jpg").unlink()
    assert data_fingerprint(copied.unlabeled, copied.train_images, copied.train_annotations) == fingerprint
    assert data_fingerprint(copied.train_images, copied.unlabeled, copied.train_annotations) != fingerprint

    with pytest.raises(DatasetError, match="nowhere"):
        data_fingerprint(tmp_path / "nowhere")
