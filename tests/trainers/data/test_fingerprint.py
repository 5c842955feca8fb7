"""Tests for trainers.data.fingerprint: a data set's digest is stable across copies and follows its content."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainers.data import DatasetError, SamplePaths, sample_paths
from trainers.data.fingerprint import data_fingerprint

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


def test_fingerprint_leaves_out_hidden_files_and_the_folders_labels_file(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    (folder / "part").mkdir(parents=True)
    (folder / "part" / "a.jpg").write_bytes(b"pixels")
    fingerprint = data_fingerprint(folder)
    (folder / ".DS_Store").write_bytes(b"finder")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "b.jpg").write_bytes(b"thumbnail")
    (folder / "labels.json").write_text('{"part/a.jpg": "7"}')  # the supervised runs' classes, not the images
    assert data_fingerprint(folder) == fingerprint
    (folder / "part" / "labels.json").write_text("{}")  # only the folder's own labels file is left out
    assert data_fingerprint(folder) != fingerprint
