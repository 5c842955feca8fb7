"""trainers/detection/record.py: an exported detector's ``detector.json``, read and checked without torch: the files
it needs, its format (the older v1 read under today's head names) and its required fields."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from trainers.checkpoints import CheckpointError
from trainers.detection.config import MODEL_FIELDS
from trainers.detection.record import (
    DETECTOR_CONFIG, DETECTOR_FORMAT, DETECTOR_WEIGHTS, json_number, read_detector_config,
)


def write_record(folder: Path, **changes: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format": DETECTOR_FORMAT, "model": {k: None for k in MODEL_FIELDS} | {"head": "res5"},
              "num_classes": 3, "class_names": ["__background__", "circle", "square"],
              "label_to_cat_id": {"1": 7, "2": 9}, "config": {"head": "res5"}}
    record.update(changes)
    (folder / DETECTOR_CONFIG).write_text(json.dumps(record))
    (folder / DETECTOR_WEIGHTS).write_bytes(b"")
    return folder


def test_a_current_record_reads_with_integer_label_keys(tmp_path: Path) -> None:
    record = read_detector_config(write_record(tmp_path / "det"))
    assert record["label_to_cat_id"] == {1: 7, 2: 9}
    assert record["model"]["head"] == record["config"]["head"] == "res5"  # v2's res5 is the C4 detector


def test_a_v1_record_reads_its_res5_head_as_res5_fpn(tmp_path: Path) -> None:
    record = read_detector_config(write_record(tmp_path / "old", format="ablate-faster-rcnn-fpn/v1"))
    assert record["model"]["head"] == record["config"]["head"] == "res5_fpn"


def test_refusals_name_the_file_and_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"not an exported detector \\(expected {DETECTOR_WEIGHTS}"):
        read_detector_config(tmp_path)
    with pytest.raises(CheckpointError, match=r"detector\.json: format 'someone-else/v9' is not"):
        read_detector_config(write_record(tmp_path / "foreign", format="someone-else/v9"))
    folder = write_record(tmp_path / "partial", model={"head": "mlp"})
    record = json.loads((folder / DETECTOR_CONFIG).read_text())
    del record["num_classes"]
    (folder / DETECTOR_CONFIG).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="missing num_classes, model.") as err:
        read_detector_config(folder)
    assert all(f"model.{k}" in str(err.value) for k in MODEL_FIELDS if k != "head")


def test_json_numbers_turn_nan_and_infinity_into_null() -> None:
    assert [json_number(v) for v in (0.5, 3, math.nan, math.inf)] == [0.5, 3, None, None]
