"""Tests for trainers.data.files: which files are images and in what order, and how an image's further
renderings are told from the images."""

from __future__ import annotations

from pathlib import Path

from trainers.data.files import IMAGE_EXTENSIONS, find_images, group_renderings


def test_find_images_is_recursive_sorted_case_insensitive_and_skips_hidden(tmp_path: Path) -> None:
    for name in ("z.jpeg", "A.JPEG", "b/c.Png", "b/a.jpg", "b/deep/x.png",  # images
                 "notes.txt", "b/anim.gif", "photo.jpg.bak",  # not images
                 ".DS_Store", "._a.jpg", ".cache/hidden.jpg", "b/.sync/y.png"):  # hidden files and folders
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = find_images(str(tmp_path))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["A.JPEG", "b/a.jpg", "b/c.Png", "b/deep/x.png",
                                                                   "z.jpeg"]
    assert all(isinstance(p, Path) and p.suffix.lower() in IMAGE_EXTENSIONS for p in found)
    assert find_images(tmp_path / "missing") == []


def test_renderings_travel_with_their_image_in_numeric_order(tmp_path: Path) -> None:
    names = ["a.jpg", "a.view10.jpg", "a.view2.png", "a.view1.jpg", "b.view1.jpg", "c.jpg", "c.view0.jpg",
             "sub/a.view1.jpg"]
    images, renderings = group_renderings([tmp_path / n for n in names])
    # an orphan rendering (no b.jpg, no sub/a.jpg) and view0 (numbers start at 1) are images of their own
    assert images == [tmp_path / n for n in ("a.jpg", "b.view1.jpg", "c.jpg", "c.view0.jpg", "sub/a.view1.jpg")]
    assert renderings == {tmp_path / "a.jpg": [tmp_path / n for n in ("a.view1.jpg", "a.view2.png", "a.view10.jpg")]}
    assert group_renderings([]) == ([], {})
