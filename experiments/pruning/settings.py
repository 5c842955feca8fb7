"""The ``pruning:`` section of a search space: its keys, defaults and checks.

Apart from :mod:`experiments.pruning.pruner` (the pruners themselves) so that reading a space needs no Optuna:
``bench device`` plans the launch's configs on a machine that has none.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from trainers.common.validation import closest, unknown_key_message

COLLAPSE_DEFAULTS: dict[str, Any] = {
    "warmup_epochs": 2,
    "patience": 4,
    "delta": 0.01,
    "std_floor": 0.1,
    "min_prototypes_used": 1,
    "knn_margin": None,
}
"""The :class:`~experiments.pruning.pruner.CollapsePruner` defaults, also those of the ``pruning:`` section (why each: the class docstring)."""


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid: an integer >= {minimum}")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} is invalid: a number")


def check_collapse_settings(warmup_epochs: Any, patience: Any, delta: Any, std_floor: Any, min_prototypes_used: Any,
                            knn_margin: Any) -> None:
    """Raise ValueError naming the first invalid :class:`~experiments.pruning.pruner.CollapsePruner` setting."""
    _check_int("warmup_epochs", warmup_epochs, 0)
    _check_int("patience", patience, 1)
    _check_number("delta", delta)
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta={delta!r} is invalid: the band width must satisfy 0 <= delta < 1")
    _check_number("std_floor", std_floor)
    if not (math.isfinite(std_floor) and std_floor >= 0.0):
        raise ValueError(f"std_floor={std_floor!r} is invalid: a finite number >= 0 (0 switches the signal off)")
    _check_int("min_prototypes_used", min_prototypes_used, 0)
    if knn_margin is not None:
        _check_number("knn_margin", knn_margin)
        if not 0.0 <= knn_margin < 1.0:
            raise ValueError(f"knn_margin={knn_margin!r} is invalid: a fraction of accuracy in [0, 1), "
                             "or null to switch the kNN signal off")


# ---------------------------------------------------------------------------
# Settings (the `pruning:` section of a search space)
# ---------------------------------------------------------------------------

PRUNING_DEFAULTS: dict[str, Any] = {
    "enabled": True,  # collapse pruning only ever stops runs that waste their budget
    **COLLAPSE_DEFAULTS,  # the CollapsePruner's own defaults (the reasons are in its docstring)
    "finetune": {
        # Off: pruning detectors by AP50 biases an ablation table toward early bloomers.
        "kind": "none",
        "percentile": 25.0,  # PercentilePruner keeps the top 25 % (Optuna's own example)
        "n_startup_trials": 5,  # Optuna's default: compare only against 5 finished trials
        "n_warmup_steps": 0,  # Optuna's default; det/AP50 exists only at eval epochs anyway
    },
}
"""The ``pruning:`` section's keys and defaults."""

_FINETUNE_KINDS = ("none", "median", "percentile")
COLLAPSE_KEYS = tuple(COLLAPSE_DEFAULTS)  # the CollapsePruner arguments among the section's keys


def validate_pruning_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check a ``pruning:`` section and fill in the defaults.

    Args:
        settings: The section as a plain mapping (None or empty means all defaults).

    Returns:
        A new dict with every key of :data:`PRUNING_DEFAULTS`.

    Raises:
        ValueError: On an unknown key (suggesting the closest) or an invalid value,
            naming ``pruning.<key>``.
    """
    settings = {} if settings is None else settings
    if not isinstance(settings, Mapping):
        raise ValueError(f"pruning: expected a mapping of key: value, got {type(settings).__name__}")
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRUNING_DEFAULTS.items()}
    for key, value in settings.items():
        if key not in PRUNING_DEFAULTS:
            raise ValueError(unknown_key_message(str(key), PRUNING_DEFAULTS, "pruning"))
        if key == "finetune":
            if not isinstance(value, Mapping):
                raise ValueError(f"pruning.finetune: expected a mapping of key: value, got {type(value).__name__}")
            for sub, sub_value in value.items():
                if sub not in PRUNING_DEFAULTS["finetune"]:
                    raise ValueError(unknown_key_message(str(sub), PRUNING_DEFAULTS["finetune"], "pruning.finetune"))
                out["finetune"][sub] = sub_value
        else:
            out[key] = value

    if not isinstance(out["enabled"], bool):
        raise ValueError(f"pruning.enabled={out['enabled']!r} is invalid: true or false")
    try:
        check_collapse_settings(*(out[k] for k in COLLAPSE_KEYS))
    except ValueError as exc:
        raise ValueError(f"pruning.{exc}") from None
    ft = out["finetune"]
    if ft["kind"] not in _FINETUNE_KINDS:
        hint = closest(str(ft["kind"]), _FINETUNE_KINDS)
        extra = f" (did you mean '{hint}'?)" if hint else ""
        choices = ", ".join(_FINETUNE_KINDS)
        raise ValueError(f"pruning.finetune.kind={ft['kind']!r} is invalid: choose one of {choices}{extra}")
    _check_number("pruning.finetune.percentile", ft["percentile"])
    if not 0.0 <= ft["percentile"] <= 100.0:
        raise ValueError(f"pruning.finetune.percentile={ft['percentile']!r} is invalid: a number in [0, 100]")
    for sub in ("n_startup_trials", "n_warmup_steps"):
        try:
            _check_int(sub, ft[sub], 0)
        except ValueError as exc:
            raise ValueError(f"pruning.finetune.{exc}") from None
    return out
