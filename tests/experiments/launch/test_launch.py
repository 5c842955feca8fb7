"""experiments.launch (the package): its public names, each loaded from its module on first use, so that a dry run
or a Ray worker importing one light name loads neither the launcher nor Ray."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import experiments.launch as launch_pkg


def test_every_public_name_is_its_modules_object():
    assert sorted(launch_pkg.__all__) == sorted(launch_pkg._EXPORTS)
    for name, module in launch_pkg._EXPORTS.items():
        assert getattr(launch_pkg, name) is getattr(importlib.import_module(module), name), name
    assert set(launch_pkg.__all__) <= set(dir(launch_pkg))
    from experiments.launch import Launcher, launch

    assert Launcher.__module__ == "experiments.launch.launcher" and launch.__module__ == "experiments.launch.launcher"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'experiments.launch' has no attribute 'Launchr'"):
        launch_pkg.Launchr  # noqa: B018
    with pytest.raises(ImportError):
        from experiments.launch import run_everything  # noqa: F401


def test_the_options_load_without_the_launcher_or_ray():
    code = ("import sys\n"
            "from experiments.launch import LaunchOptions, TrialOutcome\n"
            "assert LaunchOptions().max_failures == 2\n"
            "heavy = [m for m in ('experiments.launch.launcher', 'experiments.launch.ray_stage', 'ray', 'mlflow')\n"
            "         if m in sys.modules]\n"
            "print(','.join(heavy) or 'none')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "none"
