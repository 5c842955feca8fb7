"""experiments.pruning.settings: the ``pruning:`` section of a search space, its defaults and its checks (each error
names ``pruning.<key>`` and, for a misspelt key or kind, the closest valid one). Reading it needs no Optuna."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys

import pytest

from experiments.pruning.settings import (
    COLLAPSE_DEFAULTS,
    COLLAPSE_KEYS,
    PRUNING_DEFAULTS,
    check_collapse_settings,
    validate_pruning_settings,
)


def test_validate_pruning_settings_fills_defaults_without_sharing_them():
    out = validate_pruning_settings({"patience": 6, "finetune": {"kind": "median"}})
    assert out["patience"] == 6 and out["warmup_epochs"] == PRUNING_DEFAULTS["warmup_epochs"]
    assert out["finetune"]["kind"] == "median" and out["finetune"]["n_startup_trials"] == 5
    assert PRUNING_DEFAULTS["finetune"]["kind"] == "none"  # the defaults were not mutated
    assert validate_pruning_settings(None) == PRUNING_DEFAULTS


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"patiense": 3}, "pruning: unknown key 'patiense' (did you mean 'patience'?)"),
        ({"finetune": {"knd": "median"}}, "pruning.finetune: unknown key 'knd' (did you mean 'kind'?)"),
        ({"finetune": {"kind": "medain"}}, "did you mean 'median'?"),
        ({"finetune": "median"}, "pruning.finetune: expected a mapping"),
        ({"finetune": {"percentile": 150}}, "pruning.finetune.percentile=150"),
        ({"finetune": {"n_startup_trials": -1}}, "pruning.finetune.n_startup_trials=-1"),
        ({"enabled": "yes"}, "pruning.enabled='yes'"),
        ({"patience": 0}, "pruning.patience=0"),
        ({"delta": 2}, "pruning.delta=2"),
        ([1, 2], "pruning: expected a mapping"),
    ],
)
def test_validate_pruning_settings_errors(settings, message):
    with pytest.raises(ValueError) as info:
        validate_pruning_settings(settings)
    assert message in str(info.value)


def test_the_collapse_defaults_pass_their_own_checks_in_the_pruners_order():
    assert list(inspect.signature(check_collapse_settings).parameters) == list(COLLAPSE_KEYS)
    check_collapse_settings(**COLLAPSE_DEFAULTS)
    check_collapse_settings(0, 1, 0.0, 0.0, 0, 0.0)  # the edges: no warmup, one epoch of patience, signals off
    assert {k: PRUNING_DEFAULTS[k] for k in COLLAPSE_KEYS} == COLLAPSE_DEFAULTS


@pytest.mark.parametrize(("args", "message"), [
    ({"warmup_epochs": 1.0}, "warmup_epochs=1.0 is invalid: an integer >= 0"),
    ({"patience": True}, "patience=True is invalid: an integer >= 1"),
    ({"delta": "0.01"}, "delta='0.01' is invalid: a number"),
    ({"delta": 1.0}, "delta=1.0 is invalid: the band width must satisfy 0 <= delta < 1"),
    ({"std_floor": math.inf}, "std_floor=inf is invalid: a finite number >= 0 (0 switches the signal off)"),
    ({"min_prototypes_used": -1}, "min_prototypes_used=-1 is invalid: an integer >= 0"),
    ({"knn_margin": 1.0}, "knn_margin=1.0 is invalid: a fraction of accuracy in [0, 1), or null to switch"),
])
def test_each_collapse_setting_names_itself_and_the_valid_values(args, message):
    with pytest.raises(ValueError) as info:
        check_collapse_settings(**{**COLLAPSE_DEFAULTS, **args})
    assert str(info.value).startswith(message)


def test_a_section_keeps_every_key_it_gives_and_checks_the_fine_tuning_pruner():
    given = {"enabled": False, "warmup_epochs": 0, "std_floor": 0, "knn_margin": 0.05,
             "finetune": {"kind": "percentile", "percentile": 40.0, "n_warmup_steps": 2}}
    out = validate_pruning_settings(given)
    assert out == {**PRUNING_DEFAULTS, **given, "finetune": {**PRUNING_DEFAULTS["finetune"], **given["finetune"]}}
    assert validate_pruning_settings({}) == PRUNING_DEFAULTS and out["finetune"] is not given["finetune"]
    with pytest.raises(ValueError, match=r"^pruning.finetune.percentile=True is invalid: a number$"):
        validate_pruning_settings({"finetune": {"percentile": True}})
    with pytest.raises(ValueError, match=r"^pruning.finetune.kind='optuna' is invalid: choose one of none, median, "
                                         r"percentile$"):
        validate_pruning_settings({"finetune": {"kind": "optuna"}})  # nothing close: no suggestion


def test_reading_the_settings_loads_no_optuna():
    code = ("import sys\nfrom experiments.pruning.settings import validate_pruning_settings\n"
            "validate_pruning_settings({'patience': 3})\nprint('optuna' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
