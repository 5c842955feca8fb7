"""Tests for trainers.data.digits: the digits sample (labeled scenes, disjoint digit pools, the monitor's sets,
object-centric unlabeled images), its determinism and its parallel writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.trainers.data.helpers import AREA_RANGES, area_range, load_json, tree_hashes
from trainers.data import CocoDetection, SamplePaths, UnlabeledImages, data_fingerprint, generate_sample, sample_paths

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


def test_cli_writes_the_digits_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments import cli

    assert cli.main(["data", "sample", "--kind", "digits", "--out", str(tmp_path / "d")]) == 0
    assert "sample data (digits, small, seed 0)" in capsys.readouterr().out
    assert load_json(tmp_path / "d" / "sample.json")["kind"] == "digits"
    assert len(load_json(tmp_path / "d" / "annotations" / "val.json")["categories"]) == 10
