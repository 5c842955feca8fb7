"""Tests for trainers.data.images: the unlabeled folder, the images it skips, and how skipped files are reported."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainers.data import DatasetError, SamplePaths
from trainers.data.images import (
    TOO_SMALL,
    UNREADABLE,
    SkippedImage,
    UnlabeledImages,
    collate_images,
    describe_skipped,
    warn_skipped,
)

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
