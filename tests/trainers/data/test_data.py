"""Tests for the trainers.data package: its public names load from their modules on first use, and a light
name never loads torch."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import trainers.data
from trainers.data import _EXPORTS


def test_every_public_name_is_the_object_of_the_module_that_holds_it() -> None:
    assert set(trainers.data.__all__) == set(_EXPORTS)
    for name, module in _EXPORTS.items():
        assert getattr(trainers.data, name) is getattr(importlib.import_module(module), name), name
    assert set(_EXPORTS) <= set(dir(trainers.data))


def test_an_unknown_name_is_an_attribute_error_naming_the_package() -> None:
    with pytest.raises(AttributeError, match=r"^module 'trainers.data' has no attribute 'CocoDetections'$"):
        trainers.data.CocoDetections  # noqa: B018 - the lookup is the test
    with pytest.raises(ImportError, match="CocoDetections"):
        from trainers.data import CocoDetections  # noqa: F401


def test_the_light_names_load_neither_torch_nor_the_heavy_modules() -> None:
    code = ("import sys\n"
            "from trainers.data import SAMPLE_HINT, DatasetError, IMAGE_EXTENSIONS, find_images\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('trainers.data')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["trainers.data", "trainers.data.errors", "trainers.data.files"])
