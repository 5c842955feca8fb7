"""Tests for trainers.data.labels: reading a JSON or CSV labels file, numbering an image folder's classes, and the
errors that name the file and the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainers.data import DatasetError
from trainers.data.labels import FORMAT_HINT, LABELS_FILE, image_labels, read_label_file, write_labels


def test_json_and_csv_files_give_the_same_labels(tmp_path: Path) -> None:
    written = write_labels(tmp_path, {"p/b.jpg": "cat", "p/a.jpg": "7"})
    assert written == tmp_path / LABELS_FILE
    assert list(json.loads(written.read_text())) == ["p/a.jpg", "p/b.jpg"]  # sorted by image name
    assert read_label_file(written) == {"p/a.jpg": "7", "p/b.jpg": "cat"}
    (tmp_path / "ints.json").write_text(json.dumps({"p\\a.jpg": 7, "p/b.jpg": "cat"}))
    assert read_label_file(tmp_path / "ints.json") == {"p/a.jpg": "7", "p/b.jpg": "cat"}  # "/" and strings
    (tmp_path / "labels.CSV").write_text(" Image , CLASS \np\\a.jpg, 7\n\n , \np/b.jpg,cat\n")
    assert read_label_file(tmp_path / "labels.CSV") == {"p/a.jpg": "7", "p/b.jpg": "cat"}


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("l.json", '{"a.jpg": ', "l.json: not valid JSON (Expecting value at line 1)"),
        ("l.json", '["a.jpg", "1"]', "l.json: holds a list, not an object"),
        ("l.json", '{"a.jpg": true}', "l.json: 'a.jpg': class True is invalid; a string or an integer"),
        ("l.json", '{"a.jpg": 1.5}', "l.json: 'a.jpg': class 1.5 is invalid"),
        ("l.csv", "file,label\na.jpg,1\n", "l.csv: the first row must be the header image,class"),
        ("l.csv", "image,class\na.jpg,1\nb.jpg\n", "l.csv: row 3 ('b.jpg') is invalid; each row is image,class"),
        ("l.csv", "image,class\na.jpg,1,2\n", "l.csv: row 2 ('a.jpg,1,2') is invalid"),
        ("l.txt", "a.jpg 1\n", "l.txt: unknown format '.txt'"),
    ],
)
def test_a_malformed_labels_file_names_the_file_and_the_entry(tmp_path: Path, name: str, text: str,
                                                              expected: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError) as info:
        read_label_file(tmp_path / name)
    assert expected in str(info.value)
    with pytest.raises(DatasetError, match="labels file .*missing.json does not exist"):
        read_label_file(tmp_path / "missing.json")


def test_classes_are_numbered_digits_first_in_numeric_order(tmp_path: Path) -> None:
    paths = [tmp_path / "x" / f"{i}.jpg" for i in range(5)]
    file = write_labels(tmp_path, {"x/0.jpg": "10", "x/1.jpg": "2", "x/2.jpg": "cat", "x/3.jpg": "2",
                                   "x/4.jpg": "ant", "other.jpg": "99"})  # a row without its image is ignored
    numbers, classes = image_labels(file, tmp_path, paths)
    assert classes == ["2", "10", "ant", "cat"]  # not "10" < "2" as strings
    assert numbers == [1, 0, 3, 0, 2]


def test_an_unlabeled_image_or_a_single_class_is_refused(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.jpg" for i in range(6)]
    file = write_labels(tmp_path, {"0.jpg": "a", "1.jpg": "b"})
    with pytest.raises(DatasetError) as info:
        image_labels(file, tmp_path, paths)
    assert str(info.value).startswith(f"{file}: 4 of the 6 images in {tmp_path} have no class "
                                      f"(2.jpg, 3.jpg, 4.jpg and 1 more); add a row for each image")
    file = write_labels(tmp_path, {"0.jpg": "a", "1.jpg": "a"})
    with pytest.raises(DatasetError, match="hold 1 class\\(es\\); supervised pretraining needs at least 2"):
        image_labels(file, tmp_path, paths[:2])
    assert FORMAT_HINT.startswith("a JSON object")


@pytest.mark.parametrize("name,text,message", [
    ("labels.csv", "file,label\na.jpg,1\n", "the first row must be the header image,class"),
    ("labels.csv", "image,class\na.jpg\n", r"row 2 \('a.jpg'\) is invalid"),
    ("labels.json", "[1, 2]", "holds a list, not an object"),
    ("labels.json", '{"a.jpg": 1}', r"1 of the 2 images .* have no class \(b.jpg\)"),
    ("labels.json", '{"a.jpg": 1, "b.jpg": 1}', "hold 1 class"),
    ("labels.txt", "", "unknown format '.txt'"),
])
def test_a_bad_labels_file_is_named_with_its_entry(tmp_path: Path, name: str, text: str, message: str) -> None:
    file = tmp_path / name
    file.write_text(text)
    with pytest.raises(DatasetError, match=message) as caught:
        image_labels(file, tmp_path, [tmp_path / "a.jpg", tmp_path / "b.jpg"])
    assert str(file) in str(caught.value)


def test_labels_read_from_csv_and_json_number_the_classes_the_same_way(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("image,class\nx/a.jpg,10\nb.jpg,2\n")
    (tmp_path / "l.json").write_text(json.dumps({"x/a.jpg": 10, "b.jpg": "2"}))
    paths = [tmp_path / "x" / "a.jpg", tmp_path / "b.jpg"]
    assert image_labels(tmp_path / "l.csv", tmp_path, paths) == image_labels(tmp_path / "l.json", tmp_path, paths) \
        == ([1, 0], ["2", "10"])
