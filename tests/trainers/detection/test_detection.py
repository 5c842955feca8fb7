"""trainers/detection/__init__.py: the package's public names, each loaded from its module on first use, so that
reading a config or an exported detector's record loads no torch."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import trainers.detection as detection


def test_every_public_name_is_the_object_its_module_defines() -> None:
    assert sorted(detection.__all__) == sorted(detection._EXPORTS)
    for name, module in detection._EXPORTS.items():
        assert getattr(detection, name) is getattr(importlib.import_module(module), name), name
    assert set(detection.__all__) <= set(dir(detection))


def test_an_unknown_name_is_an_attribute_error_naming_the_package() -> None:
    with pytest.raises(AttributeError, match="'trainers.detection' has no attribute 'DetectorConfig'"):
        detection.DetectorConfig  # noqa: B018


def test_the_config_and_the_record_load_without_torch() -> None:
    code = ("import sys\nfrom trainers.detection import DetectionConfig, read_detector_config\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
