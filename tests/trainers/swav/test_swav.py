"""trainers/swav/__init__.py: the package's public names, each loaded from its module on first use, so that reading a
config loads no torch."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import trainers.swav as swav


def test_every_public_name_is_the_object_its_module_defines() -> None:
    assert sorted(swav.__all__) == sorted(swav._EXPORTS)
    for name, module in swav._EXPORTS.items():
        assert getattr(swav, name) is getattr(importlib.import_module(module), name), name
    assert set(swav.__all__) <= set(dir(swav))
    # Mixed precision is both trainers': the package hands out the common helpers, not copies of them.
    assert swav._EXPORTS["backward_and_step"] == swav._EXPORTS["grad_scaler"] == "trainers.common.precision"


def test_an_unknown_name_is_an_attribute_error_naming_the_package() -> None:
    with pytest.raises(AttributeError, match="'trainers.swav' has no attribute 'SwavConfig'"):
        swav.SwavConfig  # noqa: B018


def test_the_config_loads_without_torch() -> None:
    code = ("import sys\nfrom trainers.swav import DEFAULT_CROPS, CropGroup, SwAVConfig\n"
            "assert SwAVConfig(data='x').crops == DEFAULT_CROPS\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
